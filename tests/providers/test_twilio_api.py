"""Twilio adapter against the Twilio stand-in on a real socket: send (§4.5), its errors, media
download (§4.1), backfill (§4.3) and the account check."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from service.models import Channel
from service.providers.base import (
    InboundMessage,
    InvalidCredentials,
    MediaRef,
    OutgoingFile,
    ProviderAuthError,
    ProviderPermanent,
    ProviderTransient,
    RecipientUnreachable,
    StatusEvent,
)
from service.providers.twilio import MAX_BODY, RECEIVED_AT, TwilioProvider
from tests.providers.channels import channel_for
from tests.standins.twilio import TwilioStandin

pytestmark = pytest.mark.anyio

PUBLIC = "https://bridge.example.com"
FORM = "application/x-www-form-urlencoded"
CUSTOMER = "+31612345678"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg bytes " * 100


def make_channel(credentials: dict[str, Any]) -> Channel:
    return channel_for(
        "twilio",
        dict(credentials),
        account_id=str(credentials["from"]),
        channel_id=7,
        provider_channel_id="ch_tw_7",
        account_name="Twilio",
    )


@pytest.fixture
def tw() -> Iterator[TwilioStandin]:
    with TwilioStandin() as standin:
        yield standin


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10) as client:
        yield client


@pytest.fixture
def provider(tw: TwilioStandin, http: httpx2.AsyncClient) -> TwilioProvider:
    return TwilioProvider(tw.base_url, http, PUBLIC + "/")


@pytest.fixture
def channel(tw: TwilioStandin) -> Channel:
    return make_channel(tw.credentials)


def webhook(provider: TwilioProvider, channel: Channel, form: dict[str, str]) -> Any:
    [delivery] = provider.split(channel, TwilioStandin.form_body(form), FORM)
    return delivery


# --- send ---------------------------------------------------------------------------------------


async def test_send_text(tw: TwilioStandin, provider: TwilioProvider, channel: Channel) -> None:
    sid = await provider.send(channel, CUSTOMER, "Hello from Pipedrive", [])

    assert sid.startswith("SM")
    assert len(sid) == 34
    [sent] = tw.sent
    assert sent["sid"] == sid
    assert sent["to"] == CUSTOMER
    assert sent["from"] == tw.number
    assert sent["body"] == "Hello from Pipedrive"
    assert sent["status_callback"] == f"{PUBLIC}/webhooks/twilio/ch_tw_7"
    assert sent["media_urls"] == []
    [request] = tw.requests
    assert request.http_method == "POST"
    assert request.auth_user == tw.account_sid
    assert request.headers["content-type"].startswith(FORM)


async def test_send_file_goes_as_media_url(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    link = "https://bridge.example.com/media/abc.jpg?sig=xyz"
    files = [OutgoingFile("offer.jpg", "image/jpeg", JPEG, url=link)]

    sid = await provider.send(channel, CUSTOMER, "See attached", files)

    assert sid.startswith("MM")
    [sent] = tw.sent
    assert sent["media_urls"] == [link]
    assert sent["body"] == "See attached"
    assert sent["params"]["MediaUrl"] == [link]


async def test_send_files_only_has_no_body(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    files = [
        OutgoingFile(f"f{i}.pdf", "application/pdf", b"%PDF", url=f"https://b.example/{i}")
        for i in range(2)
    ]
    await provider.send(channel, CUSTOMER, "", files)
    [sent] = tw.sent
    assert sent["body"] is None
    assert sent["media_urls"] == ["https://b.example/0", "https://b.example/1"]


async def test_a_file_without_link_is_refused_before_any_request(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    files = [OutgoingFile("offer.pdf", "application/pdf", b"%PDF")]
    with pytest.raises(ProviderPermanent, match=r"offer\.pdf"):
        await provider.send(channel, CUSTOMER, "text", files)
    assert tw.requests == []


async def test_long_text_is_sent_as_several_messages(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    text = "a" * MAX_BODY + "b" * 10
    sid = await provider.send(channel, CUSTOMER, text, [])
    assert [s["body"] for s in tw.sent] == ["a" * MAX_BODY, "b" * 10]
    assert sid == tw.sent[0]["sid"]
    assert {s["status_callback"] for s in tw.sent} == {f"{PUBLIC}/webhooks/twilio/ch_tw_7"}


async def test_whatsapp_sends_one_file_per_message(
    tw: TwilioStandin, provider: TwilioProvider
) -> None:
    channel = make_channel({**tw.credentials, "from": f"whatsapp:{tw.number}"})
    files = [
        OutgoingFile(f"p{i}.jpg", "image/jpeg", JPEG, url=f"https://b.example/{i}")
        for i in range(2)
    ]
    sid = await provider.send(channel, f"whatsapp:{CUSTOMER}", "two photos", files)
    assert [(s["body"], s["media_urls"]) for s in tw.sent] == [
        ("two photos", ["https://b.example/0"]),
        (None, ["https://b.example/1"]),
    ]
    assert all(s["from"] == f"whatsapp:{tw.number}" for s in tw.sent)
    assert sid == tw.sent[0]["sid"]


async def test_429_is_transient_with_retry_after(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    tw.fail_next("Messages.json", 429, code=20429, message="Too Many Requests", retry_after=2)
    with pytest.raises(ProviderTransient) as caught:
        await provider.send(channel, CUSTOMER, "hi", [])
    assert caught.value.retry_after == 2.0
    assert "20429" in str(caught.value)
    assert tw.sent == []


async def test_code_20429_is_transient_whatever_the_status(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    tw.fail_next("Messages.json", 400, code=20429, message="Too many concurrent requests")
    with pytest.raises(ProviderTransient) as caught:
        await provider.send(channel, CUSTOMER, "hi", [])
    assert caught.value.retry_after is None
    # The next call goes through: the fault was used up.
    assert (await provider.send(channel, CUSTOMER, "hi", [])).startswith("SM")


async def test_unsubscribed_recipient_is_unreachable(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    tw.unsubscribe(CUSTOMER)
    with pytest.raises(RecipientUnreachable, match="unsubscribed recipient"):
        await provider.send(channel, CUSTOMER, "hi", [])


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21610, "Attempt to send to unsubscribed recipient"),
        (21211, "Invalid 'To' Phone Number"),
        (63016, "Failed to send freeform message because you are outside the allowed window."),
    ],
)
async def test_recipient_codes_are_unreachable(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel, code: int, message: str
) -> None:
    tw.fail_next("Messages.json", 400, code=code, message=message)
    with pytest.raises(RecipientUnreachable) as caught:
        await provider.send(channel, CUSTOMER, "hi", [])
    assert message in str(caught.value)
    assert str(code) in str(caught.value)


async def test_an_invalid_to_from_the_standin_is_unreachable(
    provider: TwilioProvider, channel: Channel
) -> None:
    with pytest.raises(RecipientUnreachable, match="21211"):
        await provider.send(channel, "not-a-number", "hi", [])


async def test_other_4xx_is_permanent_with_code_and_message(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    tw.fail_next("Messages.json", 400, code=21606, message="The From phone number is not valid")
    with pytest.raises(ProviderPermanent) as caught:
        await provider.send(channel, CUSTOMER, "hi", [])
    assert type(caught.value) is ProviderPermanent
    assert "21606" in str(caught.value)
    assert "The From phone number is not valid" in str(caught.value)


async def test_5xx_is_transient(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    tw.fail_next("Messages.json", 503)
    with pytest.raises(ProviderTransient):
        await provider.send(channel, CUSTOMER, "hi", [])


async def test_refused_credentials_are_an_auth_error_without_the_token(
    tw: TwilioStandin, provider: TwilioProvider
) -> None:
    channel = make_channel({**tw.credentials, "auth_token": "wrong-secret-token-value"})
    with pytest.raises(ProviderAuthError) as caught:
        await provider.send(channel, CUSTOMER, "hi", [])
    assert "20003" in str(caught.value)
    assert "wrong-secret-token-value" not in str(caught.value)


async def test_transport_failure_is_transient(http: httpx2.AsyncClient, channel: Channel) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = TwilioProvider(f"http://127.0.0.1:{port}", http, PUBLIC)
    with pytest.raises(ProviderTransient) as caught:
        await provider.send(channel, CUSTOMER, "hi", [])
    assert str(channel.credentials["auth_token"]) not in str(caught.value)


# --- webhooks from the stand-in -----------------------------------------------------------------


async def test_standin_webhooks_verify_and_status_callbacks_parse(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    url = f"{PUBLIC}/webhooks/twilio/ch_tw_7"
    form = tw.add_inbound(from_=CUSTOMER, body="Hi there")
    body = TwilioStandin.form_body(form)
    assert provider.verify(channel, tw.webhook_headers(url, form), body, url)
    assert not provider.verify(channel, tw.webhook_headers(url + "?x=1", form), body, url)

    sid = await provider.send(channel, CUSTOMER, "Hello", [])
    status = tw.status_form(sid, "undelivered", to=CUSTOMER, error_code=30003)
    delivery = webhook(provider, channel, status)
    assert delivery.conversation_id == webhook(provider, channel, form).conversation_id
    [event] = provider.parse(channel, delivery.payload)
    assert isinstance(event, StatusEvent)
    assert (event.provider_message_id, event.status) == (sid, "failed")
    assert event.error == "Twilio: message undelivered (error 30003)"
    assert tw.message(sid)["status"] == "undelivered"


# --- media --------------------------------------------------------------------------------------


async def test_fetch_media_round_trip(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    form = tw.add_inbound(from_=CUSTOMER, body="", media=[(JPEG, "image/jpeg")])
    [event] = provider.parse(channel, webhook(provider, channel, form).payload)
    assert isinstance(event, InboundMessage)
    [ref] = event.media
    assert ref.mime_type == "image/jpeg"
    assert ref.name.startswith("ME")
    assert ref.name.endswith(".jpg")

    assert await provider.fetch_media(channel, ref) == JPEG

    [request] = tw.requests
    assert request.auth_user == tw.account_sid


async def test_fetch_media_follows_up_to_three_redirects(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    form = tw.add_inbound(from_=CUSTOMER, body="", media=[(JPEG, "image/jpeg")])
    ref = MediaRef(form["MediaUrl0"], "image/jpeg", "x.jpg", None)
    tw.media_redirects = 3
    assert await provider.fetch_media(channel, ref) == JPEG
    assert [r.status for r in tw.requests] == [302, 302, 302, 200]

    tw.media_redirects = 4
    with pytest.raises(ProviderPermanent, match="redirects"):
        await provider.fetch_media(channel, ref)


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "www.google.com",  # the odd fixture's MediaUrl0
        "https://api.twilio.com.evil.example/x",
    ],
)
async def test_a_foreign_media_url_is_refused_without_a_request(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel, url: str
) -> None:
    with pytest.raises(ProviderPermanent):
        await provider.fetch_media(channel, MediaRef(url, "image/jpeg", "x.jpg", None))
    assert tw.requests == []


async def test_a_media_url_with_credentials_is_refused(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    url = tw.base_url.replace("http://", "http://user:pw@") + "/x"
    with pytest.raises(ProviderPermanent, match="credentials"):
        await provider.fetch_media(channel, MediaRef(url, "image/jpeg", "x.jpg", None))
    assert tw.requests == []


async def test_missing_media_is_permanent(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    form = tw.add_inbound(from_=CUSTOMER, body="", media=[(JPEG, "image/jpeg")])
    url = form["MediaUrl0"].rsplit("/", 1)[0] + "/ME" + "0" * 32
    with pytest.raises(ProviderPermanent) as caught:
        await provider.fetch_media(channel, MediaRef(url, "image/jpeg", "x.jpg", None))
    assert type(caught.value) is ProviderPermanent


async def test_media_over_20_mb_is_refused(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    form = tw.add_inbound(
        from_=CUSTOMER, body="", media=[(b"\0" * (20 * 1024 * 1024 + 1), "video/mp4")]
    )
    ref = MediaRef(form["MediaUrl0"], "video/mp4", "big.mp4", None)
    with pytest.raises(ProviderPermanent, match="20 MB"):
        await provider.fetch_media(channel, ref)


async def test_media_5xx_is_transient(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    form = tw.add_inbound(from_=CUSTOMER, body="", media=[(JPEG, "image/jpeg")])
    tw.fail_next("/Media/" + form["MediaUrl0"].rsplit("/", 1)[1], 500)
    with pytest.raises(ProviderTransient):
        await provider.fetch_media(channel, MediaRef(form["MediaUrl0"], "image/jpeg", "x", None))


# --- backfill -----------------------------------------------------------------------------------


async def test_backfill_returns_inbound_messages_since_as_their_webhook_twins(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    since = now - timedelta(hours=1)
    tw.add_inbound(from_=CUSTOMER, body="days ago", date_sent=now - timedelta(days=3))
    tw.add_inbound(from_=CUSTOMER, body="just before", date_sent=since - timedelta(minutes=1))
    recent = tw.add_inbound(from_=CUSTOMER, body="recent", date_sent=since + timedelta(minutes=1))
    with_media = tw.add_inbound(
        from_="+4915100000000",
        body="",
        media=[(JPEG, "image/jpeg"), (b"%PDF-1.7", "application/pdf")],
        date_sent=since + timedelta(minutes=2),
    )
    other_number = tw.add_inbound(
        from_=CUSTOMER, body="to another number", to="+15005550009", date_sent=now
    )
    await provider.send(channel, CUSTOMER, "an outbound reply", [])

    found = await provider.backfill(channel, since)

    twins = [webhook(provider, channel, form) for form in (recent, with_media)]
    assert [d.dedupe_key for d in found] == [t.dedupe_key for t in twins]
    assert [d.conversation_id for d in found] == [t.conversation_id for t in twins]
    assert webhook(provider, channel, other_number).dedupe_key not in {d.dedupe_key for d in found}
    for delivery, twin, date_sent in zip(
        found, twins, (since + timedelta(minutes=1), since + timedelta(minutes=2)), strict=True
    ):
        [event] = provider.parse(channel, delivery.payload)
        [twin_event] = provider.parse(channel, twin.payload)
        assert isinstance(event, InboundMessage)
        assert isinstance(twin_event, InboundMessage)
        assert event.created_at == date_sent
        assert event == replace(twin_event, created_at=event.created_at)
    # The media of the backfilled message are the very URLs of the webhook, and download.
    [_, media_event] = [provider.parse(channel, d.payload)[0] for d in found]
    assert isinstance(media_event, InboundMessage)
    assert [m.ref for m in media_event.media] == [with_media["MediaUrl0"], with_media["MediaUrl1"]]
    assert [m.mime_type for m in media_event.media] == ["image/jpeg", "application/pdf"]
    assert await provider.fetch_media(channel, media_event.media[1]) == b"%PDF-1.7"

    listing = [
        r for r in tw.requests if r.path.endswith("/Messages.json") and r.http_method == "GET"
    ]
    assert listing[0].query == {
        "To": [tw.number],
        "DateSent>": [since.date().isoformat()],
        "PageSize": ["100"],
    }


async def test_backfill_follows_pages(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    tw.page_size_cap = 2
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    forms = [
        tw.add_inbound(from_=CUSTOMER, body=f"m{i}", date_sent=start + timedelta(minutes=i))
        for i in range(5)
    ]
    found = await provider.backfill(channel, start - timedelta(minutes=1))
    assert [d.payload["Body"] for d in found] == [f"m{i}" for i in range(5)]
    assert [d.dedupe_key for d in found] == [f"tw:{f['MessageSid']}" for f in forms]
    assert all(RECEIVED_AT in d.payload for d in found)
    pages = [r for r in tw.requests if r.path.endswith("/Messages.json")]
    assert len(pages) == 3
    assert "PageToken" in pages[1].query


async def test_backfill_with_nothing_new(provider: TwilioProvider, channel: Channel) -> None:
    assert await provider.backfill(channel, datetime.now(UTC)) == []


# --- account ------------------------------------------------------------------------------------


async def test_describe_account(tw: TwilioStandin, provider: TwilioProvider) -> None:
    assert await provider.describe_account(tw.credentials) == (tw.number, tw.friendly_name)
    [request] = tw.requests
    assert request.path == f"/2010-04-01/Accounts/{tw.account_sid}.json"
    assert request.auth_user == tw.account_sid


async def test_describe_account_with_a_refused_token(
    tw: TwilioStandin, provider: TwilioProvider
) -> None:
    with pytest.raises(InvalidCredentials) as caught:
        await provider.describe_account({**tw.credentials, "auth_token": "nope-not-it"})
    assert "nope-not-it" not in str(caught.value)


async def test_describe_account_when_twilio_is_down(
    tw: TwilioStandin, provider: TwilioProvider
) -> None:
    tw.fail_next(".json", 500)
    with pytest.raises(ProviderTransient):
        await provider.describe_account(tw.credentials)


async def test_webhook_registration_is_manual(
    tw: TwilioStandin, provider: TwilioProvider, channel: Channel
) -> None:
    await provider.register_webhook(channel, f"{PUBLIC}/webhooks/twilio/ch_tw_7")
    await provider.remove_webhook(channel)
    assert await provider.list_templates(channel) == []
    assert tw.requests == []
