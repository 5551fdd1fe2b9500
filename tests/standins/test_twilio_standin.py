"""Self-test of the Twilio stand-in: it must enforce the contract rules it claims to."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from tests.standins.twilio import TwilioStandin

CUSTOMER = "+31612345678"


@pytest.fixture
def tw() -> Iterator[TwilioStandin]:
    with TwilioStandin() as standin:
        yield standin


@pytest.fixture
def client(tw: TwilioStandin) -> Iterator[httpx2.Client]:
    with httpx2.Client(
        base_url=tw.base_url + tw.account_path, auth=(tw.account_sid, tw.auth_token)
    ) as c:
        yield c


def send(client: httpx2.Client, **form: Any) -> httpx2.Response:
    return client.post("/Messages.json", data=form)


def error(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def test_every_route_needs_basic_auth(tw: TwilioStandin) -> None:
    with httpx2.Client(base_url=tw.base_url) as anonymous:
        no_auth = anonymous.get(f"{tw.account_path}.json")
        wrong = anonymous.get(f"{tw.account_path}.json", auth=(tw.account_sid, "wrong"))
    assert no_auth.status_code == wrong.status_code == 401
    assert no_auth.json() == error(401, 20003, "Authenticate")
    assert [r.status for r in tw.requests] == [401, 401]


def test_another_account_is_not_found(tw: TwilioStandin) -> None:
    other = "AC" + "f" * 32
    with httpx2.Client(base_url=tw.base_url, auth=(tw.account_sid, tw.auth_token)) as c:
        response = c.get(f"/2010-04-01/Accounts/{other}/Messages.json")
    assert response.status_code == 404
    assert response.json()["code"] == 20404


def test_account(tw: TwilioStandin, client: httpx2.Client) -> None:
    body = client.get(f"{tw.base_url}{tw.account_path}.json").json()
    assert body["sid"] == tw.account_sid
    assert body["friendly_name"] == tw.friendly_name
    assert body["status"] == "active"


def test_send_records_and_answers_a_queued_message(
    tw: TwilioStandin, client: httpx2.Client
) -> None:
    response = send(
        client,
        To=CUSTOMER,
        From=tw.number,
        Body="hi",
        StatusCallback="https://b.example/cb",
        MediaUrl=["https://b.example/1.jpg", "https://b.example/2.jpg"],
    )
    assert response.status_code == 201
    message = response.json()
    assert message["sid"].startswith("MM")
    assert len(message["sid"]) == 34
    assert message["status"] == "queued"
    assert message["direction"] == "outbound-api"
    assert message["date_sent"] is None
    assert message["num_media"] == "2"
    [sent] = tw.sent
    assert sent["sid"] == message["sid"]
    assert sent["status_callback"] == "https://b.example/cb"
    assert sent["media_urls"] == ["https://b.example/1.jpg", "https://b.example/2.jpg"]
    text_only = send(client, To=CUSTOMER, From=tw.number, Body="x").json()
    assert text_only["sid"].startswith("SM")


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": "+15005550006", "Body": "x"}, 21604),
        ({"To": CUSTOMER, "Body": "x"}, 21603),
        ({"To": CUSTOMER, "From": "+15005550006"}, 21602),
        ({"To": "12345", "From": "+15005550006", "Body": "x"}, 21211),
        ({"To": CUSTOMER, "From": "+15550000000", "Body": "x"}, 21606),
        ({"To": CUSTOMER, "From": "whatsapp:+15005550006", "Body": "x"}, 21910),
        ({"To": CUSTOMER, "From": "+15005550006", "Body": "x" * 1601}, 21617),
        ({"To": CUSTOMER, "From": "+15005550006", "MediaUrl": ["ftp://x"]}, 21620),
        (
            {
                "To": CUSTOMER,
                "From": "+15005550006",
                "MediaUrl": [f"https://x/{i}" for i in range(11)],
            },
            21623,
        ),
    ],
)
def test_send_validation(
    tw: TwilioStandin, client: httpx2.Client, form: dict[str, Any], code: int
) -> None:
    response = send(client, **form)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["status"] == 400
    assert tw.sent == []


def test_unsubscribed_recipient(tw: TwilioStandin, client: httpx2.Client) -> None:
    tw.unsubscribe(CUSTOMER)
    response = send(client, To=CUSTOMER, From=tw.number, Body="x")
    assert response.json() == error(400, 21610, "Attempt to send to unsubscribed recipient")


def test_fail_next_matches_the_path_suffix_and_runs_out(
    tw: TwilioStandin, client: httpx2.Client
) -> None:
    tw.fail_next(
        "Messages.json", 429, code=20429, message="Too Many Requests", count=2, retry_after=3
    )
    account = client.get(f"{tw.base_url}{tw.account_path}.json")
    assert account.status_code == 200  # another path: untouched
    first = send(client, To=CUSTOMER, From=tw.number, Body="x")
    second = send(client, To=CUSTOMER, From=tw.number, Body="x")
    third = send(client, To=CUSTOMER, From=tw.number, Body="x")
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 201]
    assert first.json() == error(429, 20429, "Too Many Requests")
    assert first.headers["retry-after"] == "3"


def test_fail_next_comes_after_the_auth_check(tw: TwilioStandin) -> None:
    tw.fail_next("", 500)
    with httpx2.Client(base_url=tw.base_url) as anonymous:
        assert anonymous.get(f"{tw.account_path}.json").status_code == 401
    with httpx2.Client(base_url=tw.base_url, auth=(tw.account_sid, tw.auth_token)) as c:
        response = c.get(f"{tw.account_path}.json")
    assert response.status_code == 500
    assert response.json()["code"] == 20500


def test_listing_filters_and_pages(tw: TwilioStandin, client: httpx2.Client) -> None:
    now = datetime.now(UTC)
    old = tw.add_inbound(from_=CUSTOMER, body="old", date_sent=now - timedelta(days=5))
    new = [tw.add_inbound(from_=CUSTOMER, body=f"n{i}", date_sent=now) for i in range(3)]
    send(client, To=CUSTOMER, From=tw.number, Body="out")

    everything = client.get("/Messages.json").json()
    assert len(everything["messages"]) == 5
    to_us = client.get("/Messages.json", params={"To": tw.number}).json()["messages"]
    assert {m["sid"] for m in to_us} == {f["MessageSid"] for f in [old, *new]}
    assert all(m["direction"] == "inbound" for m in to_us)
    since = (now - timedelta(days=1)).date().isoformat()
    recent = client.get("/Messages.json", params={"To": tw.number, "DateSent>": since}).json()
    assert {m["sid"] for m in recent["messages"]} == {f["MessageSid"] for f in new}

    first = client.get("/Messages.json", params={"To": tw.number, "PageSize": "2"}).json()
    assert (first["page"], first["page_size"], first["start"], first["end"]) == (0, 2, 0, 1)
    assert first["previous_page_uri"] is None
    with httpx2.Client(base_url=tw.base_url, auth=(tw.account_sid, tw.auth_token)) as c:
        second = c.get(first["next_page_uri"]).json()
    assert (second["page"], second["start"], second["end"]) == (1, 2, 3)
    assert second["next_page_uri"] is None
    assert second["previous_page_uri"] is not None
    seen = [m["sid"] for page in (first, second) for m in page["messages"]]
    assert len(seen) == len(set(seen)) == 4


def test_inbound_media_routes(tw: TwilioStandin, client: httpx2.Client) -> None:
    form = tw.add_inbound(from_=CUSTOMER, body="", media=[(b"\x89PNG", "image/png")])
    assert form["NumMedia"] == "1"
    assert form["MessageSid"].startswith("MM")
    assert form["MediaUrl0"].startswith(tw.base_url + tw.account_path)
    media = client.get(form["MediaUrl0"])
    assert media.content == b"\x89PNG"
    assert media.headers["content-type"] == "image/png"
    listing = client.get(f"/Messages/{form['MessageSid']}/Media.json").json()
    [item] = listing["media_list"]
    assert item["content_type"] == "image/png"
    assert tw.base_url + item["uri"].removesuffix(".json") == form["MediaUrl0"]


def test_media_redirects_through_the_cdn(tw: TwilioStandin, client: httpx2.Client) -> None:
    form = tw.add_inbound(from_=CUSTOMER, body="", media=[(b"data", "image/jpeg")])
    tw.media_redirects = 2
    first = client.get(form["MediaUrl0"])
    assert first.status_code == 302
    assert "/cdn/1/" in first.headers["location"]
    with httpx2.Client() as anonymous:  # the CDN takes no credentials
        final = anonymous.get(first.headers["location"], follow_redirects=True)
    assert final.content == b"data"
    assert [r.status for r in tw.requests] == [302, 302, 200]


def test_whatsapp_inbound_form(tw: TwilioStandin) -> None:
    form = tw.add_inbound(from_=f"whatsapp:{CUSTOMER}", body="hi", profile_name="Jane")
    assert form["To"] == f"whatsapp:{tw.number}"
    assert form["ProfileName"] == "Jane"
    assert form["WaId"] == CUSTOMER.removeprefix("+")


def test_status_form_updates_the_stored_message(tw: TwilioStandin, client: httpx2.Client) -> None:
    sid = send(client, To=CUSTOMER, From=tw.number, Body="x").json()["sid"]
    form = tw.status_form(sid, "failed", to=CUSTOMER, error_code=30003, error_message="Unreachable")
    assert form["MessageStatus"] == form["SmsStatus"] == "failed"
    assert form["From"] == tw.number
    assert form["ErrorCode"] == "30003"
    fetched = client.get(f"/Messages/{sid}.json").json()
    assert fetched["status"] == "failed"
    assert fetched["error_code"] == 30003


def test_signature_matches_the_doc_vector() -> None:
    """§6.1 with AuthToken 12345 (no server needed)."""
    standin = TwilioStandin(auth_token="12345")
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
        "Caller": "+14158675309",
    }
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert standin.signature(url, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert standin.webhook_headers(url, params)["X-Twilio-Signature"] == (
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )
    assert TwilioStandin.form_body({"From": "+1 2"}) == b"From=%2B1+2"
