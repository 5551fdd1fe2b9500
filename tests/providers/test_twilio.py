"""Twilio adapter without the network: X-Twilio-Signature (§4.2, §6.1 vectors), splitting and
parsing form webhooks (the real bodies in shared/fixtures/twilio), the status mapping (§1.5)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import pytest

from service.models import Channel
from service.providers.base import (
    Delivery,
    InboundMessage,
    InvalidCredentials,
    InvalidWebhook,
    MediaRef,
    StatusEvent,
)
from service.providers.twilio import RECEIVED_AT, STATUS_MAP, TwilioProvider, signature
from tests.providers.channels import channel_for

FIXTURES = Path("/work/shared/fixtures/twilio")
FORM = "application/x-www-form-urlencoded"
ACCOUNT = "AC" + "1a03647d811fab342c0ad608e382fab2"

# --- §6.1, verbatim -----------------------------------------------------------------------------
TOKEN_6_1 = "12345"
U = "https://mycompany.com/myapp.php?foo=1&bar=2"
P = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
DUPLICATES = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
JSON_BODY = b'{"property": "value", "boolean": true}'
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def make_channel(credentials: dict[str, Any] | None = None) -> Channel:
    creds = credentials or {"account_sid": ACCOUNT, "auth_token": TOKEN_6_1, "from": "+14123456789"}
    return channel_for(
        "twilio",
        creds,
        account_id=str(creds["from"]),
        channel_id=1,
        provider_channel_id="ch_twilio_1",
        account_name="Twilio",
    )


def _no_network(request: httpx2.Request) -> httpx2.Response:
    raise AssertionError(f"unexpected request to {request.url}")


@pytest.fixture
def provider() -> TwilioProvider:
    """No request leaves this module: the client's transport fails any."""
    http = httpx2.AsyncClient(transport=httpx2.MockTransport(_no_network))
    return TwilioProvider("https://api.twilio.com", http, "https://bridge.example")


def verify(
    provider: TwilioProvider,
    url: str,
    params: dict[str, str] | list[tuple[str, str]],
    sig: str,
    *,
    body: bytes | None = None,
    header: str = "X-Twilio-Signature",
) -> bool:
    pairs = list(params.items()) if isinstance(params, dict) else params
    raw = urlencode(pairs).encode() if body is None else body
    return provider.verify(make_channel(), {header: sig, "Content-Type": FORM}, raw, url)


def split_one(provider: TwilioProvider, form: dict[str, str]) -> Delivery:
    deliveries = provider.split(make_channel(), urlencode(form).encode(), FORM)
    assert len(deliveries) == 1
    return deliveries[0]


# --- signatures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        (U, list(P.items()), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (U.replace(".com", ".com:443"), list(P.items()), "kvajT1Ptam85bY51eRf/AJRuM3w="),
        (
            U.replace("https", "http").replace(".com", ".com:80"),
            list(P.items()),
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
        ),
        (
            U.replace("https", "http").replace(".com", ".com:1234"),
            list(P.items()),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
        ),
        (U, DUPLICATES, "IK+Dwps556ElfBT0I3Rgjkr1wJU="),
        (U + "&bodySHA256=" + BODY_HASH, [], "a9nBmqA0ju/hNViExpshrM61xv4="),
    ],
)
def test_signature_matches_the_6_1_vectors(
    url: str, params: list[tuple[str, str]], expected: str
) -> None:
    assert signature(TOKEN_6_1, url, params) == expected


def test_the_6_1_vector_verifies(provider: TwilioProvider) -> None:
    assert verify(provider, U, P, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_the_signature_over_the_default_port_verifies_for_the_url_without_it(
    provider: TwilioProvider,
) -> None:
    """§6.1: the :443 signature must be accepted for U too; same for http and :80."""
    assert verify(provider, U, P, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    http_url = U.replace("https", "http")
    assert verify(provider, http_url, P, "0ZXoZLH/DfblKGATFgpif+LLRf4=")
    # A URL carrying the port is accepted with the signature over the URL without it.
    assert verify(provider, U.replace(".com", ".com:443"), P, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_a_url_with_a_non_default_port_verifies_as_signed(provider: TwilioProvider) -> None:
    url = U.replace("https", "http").replace(".com", ".com:1234")
    assert verify(provider, url, P, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
    # twilio-python drops any port, not only the default one (its
    # test_validation_removes_port_on_https): the URL is ours (PUBLIC_BASE_URL), not the sender's.
    assert verify(provider, U.replace(".com", ".com:1234"), P, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    # ... but a signature over another port than the one in the URL is refused.
    assert not verify(provider, U.replace(".com", ".com:8443"), P, "kvajT1Ptam85bY51eRf/AJRuM3w=")


def test_repeated_keys_are_signed_with_all_values_sorted(provider: TwilioProvider) -> None:
    assert verify(provider, U, DUPLICATES, "IK+Dwps556ElfBT0I3Rgjkr1wJU=")
    assert not verify(provider, U, DUPLICATES[:3], "IK+Dwps556ElfBT0I3Rgjkr1wJU=")


def test_json_body_webhooks_verify_the_body_hash(provider: TwilioProvider) -> None:
    url = U + "&bodySHA256=" + BODY_HASH
    sig = "a9nBmqA0ju/hNViExpshrM61xv4="
    assert verify(provider, url, [], sig, body=JSON_BODY)
    assert not verify(provider, url, [], sig, body=JSON_BODY.replace(b"value", b"other"))


@pytest.mark.parametrize(
    ("url", "params"),
    [
        (U, {**P, "Digits": "1235"}),  # a changed value
        (U, {**P, "Body": ""}),  # an added (blank) parameter is signed too
        (U, {k: v for k, v in P.items() if k != "Caller"}),  # a dropped one
        (U.replace("foo=1", "foo=2"), P),  # another query
        (U.replace("myapp.php", "other.php"), P),  # another path
        (U.replace("mycompany", "evil"), P),  # another host
        (U.replace("https", "http"), P),  # another scheme
    ],
)
def test_a_changed_param_or_url_fails(
    provider: TwilioProvider, url: str, params: dict[str, str]
) -> None:
    assert not verify(provider, url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def test_missing_or_wrong_signature_or_token_fails(provider: TwilioProvider) -> None:
    body = urlencode(P).encode()
    assert not provider.verify(make_channel(), {"Content-Type": FORM}, body, U)
    assert not verify(provider, U, P, "")
    assert not verify(provider, U, P, "RSOYDt4T1cUTdK1PDd93/VVr8B8")
    wrong = make_channel({"account_sid": ACCOUNT, "auth_token": "54321", "from": "+1415"})
    assert not provider.verify(
        wrong, {"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="}, body, U
    )


def test_the_header_name_is_case_insensitive(provider: TwilioProvider) -> None:
    assert verify(provider, U, P, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", header="x-twilio-signature")
    assert verify(provider, U, P, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", header="X-TWILIO-SIGNATURE")


def test_a_body_that_is_not_utf8_fails_verification(provider: TwilioProvider) -> None:
    assert not verify(provider, U, P, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", body=b"Body=\xff")


# --- the real bodies ----------------------------------------------------------------------------


def _fixture_params() -> list[Any]:
    files = sorted(FIXTURES.glob("*.form.json")) if FIXTURES.is_dir() else []
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no fixtures in {FIXTURES}"))]
    return [pytest.param(path, id=path.name.removesuffix(".form.json")) for path in files]


def load(name: str) -> dict[str, str]:
    path = FIXTURES / f"{name}.form.json"
    if not path.is_file():
        pytest.skip(f"fixture {path} is absent")
    form: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    return form


@pytest.mark.parametrize("path", _fixture_params())
def test_every_fixture_splits_and_parses(provider: TwilioProvider, path: Path) -> None:
    form: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    channel = make_channel()
    url = "https://example.com/api/whatsapp/messages"
    body = urlencode(form).encode()
    headers = {"X-Twilio-Signature": signature(TOKEN_6_1, url, list(form.items()))}
    assert provider.verify(channel, headers, body, url)

    delivery = split_one(provider, form)
    events = provider.parse(channel, delivery.payload)

    sid = form["MessageSid"]
    assert len(events) == 1
    event = events[0]
    if "-status-" in path.name:
        status = form.get("MessageStatus") or form["SmsStatus"]
        assert isinstance(event, StatusEvent)
        assert event == StatusEvent(sid, STATUS_MAP[status], None)
        assert delivery.dedupe_key == f"tw:{sid}:{status}"
        assert delivery.conversation_id == f"tw:{form['From']}:{form.get('To', '')}"
    else:
        assert "-inbound-" in path.name
        assert isinstance(event, InboundMessage)
        assert delivery.dedupe_key == f"tw:{sid}"
        assert delivery.conversation_id == f"tw:{form['To']}:{form['From']}"
        assert event.conversation_id == delivery.conversation_id
        assert event.message_id == event.provider_message_id == sid
        assert event.address == form["From"]
        assert event.sender.external_id == f"tw:{form['From']}"
        assert event.sender.role == "end_user"
        assert event.text or event.media  # Body, a location line, a placeholder, or files
        assert len(event.media) == sum(f"MediaUrl{n}" in form for n in range(10))
        assert all(m.ref == form[f"MediaUrl{n}"] for n, m in enumerate(event.media))


def test_whatsapp_text(provider: TwilioProvider) -> None:
    form = load("bbc-whatsapp-inbound-text")
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert isinstance(event, InboundMessage)
    assert event.conversation_id == "tw:whatsapp:+14123456789:whatsapp:+31612345678"
    assert event.sender.external_id == "tw:whatsapp:+31612345678"
    assert event.sender.name == "+31612345678"  # no ProfileName in this 2020 capture
    assert event.text == "test"
    assert event.media == ()
    assert event.message_id == "SM892512e202b34d4109b10a3893fa9640"


def test_whatsapp_profile_name_names_the_sender(provider: TwilioProvider) -> None:
    form = {**load("bbc-whatsapp-inbound-text"), "ProfileName": "Jane Doe", "WaId": "31612345678"}
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert isinstance(event, InboundMessage)
    assert event.sender.name == "Jane Doe"


def test_whatsapp_image_with_empty_body(provider: TwilioProvider) -> None:
    form = load("bbc-whatsapp-inbound-image-empty-body")
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert isinstance(event, InboundMessage)
    assert event.text == ""
    assert event.media == (
        MediaRef(
            ref=form["MediaUrl0"],
            mime_type="image/jpeg",
            name="ME5f0afa2336bd0f73ca553fb5a2e3150bc.jpg",
            size=None,
        ),
    )


def test_whatsapp_location(provider: TwilioProvider) -> None:
    form = load("bbc-whatsapp-inbound-location")
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert isinstance(event, InboundMessage)
    assert event.text == (
        "[location] Microsoft, Evert van de Beekstraat 354, Schiphol, North Holland 1118 CZ "
        "https://maps.google.com/?q=52.303897857666016,4.750025749206543"
    )


def test_sms_with_geo_fields_and_empty_values(provider: TwilioProvider) -> None:
    form = load("botbuilder-sms-inbound-text")
    delivery = split_one(provider, form)
    assert delivery.payload["ToCity"] == ""  # blank values kept
    [event] = provider.parse(make_channel(), delivery.payload)
    assert isinstance(event, InboundMessage)
    assert event.conversation_id == "tw:+16693421974:+541138050810"
    assert event.text == "Hello"


def test_odd_values_do_not_crash(provider: TwilioProvider) -> None:
    """MediaContentType0 "json", scheme-less MediaUrl0, a letter in To, three different SIDs:
    MessageSid wins, the media is kept as a reference fetch_media will refuse, the MIME type is
    replaced by the generic one."""
    form = load("botbuilder-sms-inbound-media-odd-values")
    delivery = split_one(provider, form)
    assert delivery.dedupe_key == "tw:SMa56324aa4a31735561b7205472192d68"
    assert delivery.conversation_id == "tw:+1A693421974:+571138050810"
    [event] = provider.parse(make_channel(), delivery.payload)
    assert isinstance(event, InboundMessage)
    assert event.message_id == "SMa56324aa4a31735561b7205472192d68"
    assert event.text == "Hello"
    assert event.media == (
        MediaRef(
            "www.google.com",
            "application/octet-stream",
            "SMa56324aa4a31735561b7205472192d68_0.bin",
            None,
        ),
    )


def test_status_callbacks_share_the_conversation_key_of_the_inbound_side(
    provider: TwilioProvider,
) -> None:
    inbound = split_one(provider, load("bbc-whatsapp-inbound-text"))
    delivered = split_one(provider, load("bbc-whatsapp-status-delivered"))
    assert delivered.conversation_id == inbound.conversation_id
    assert delivered.dedupe_key == "tw:SMdf55df64a2ff4920bb0748193cfbb640:delivered"


def test_minimal_status_callback_without_to_is_still_relayed(provider: TwilioProvider) -> None:
    delivery = split_one(provider, load("twilio-docs-sms-status-sent"))
    assert delivery.conversation_id == "tw:+15017250604:"
    assert provider.parse(make_channel(), delivery.payload) == [
        StatusEvent("SM1342fe1b2c904d1ab04f0fc7a58abca9", "sent", None)
    ]


# --- statuses -----------------------------------------------------------------------------------

SID = "SM" + "0" * 32


def status_form(status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": SID,
        "SmsSid": SID,
        "MessageStatus": status,
        "SmsStatus": status,
        "From": "+14123456789",
        "To": "+31612345678",
        "AccountSid": ACCOUNT,
        **extra,
    }


@pytest.mark.parametrize(
    ("twilio_status", "expected"),
    [
        ("accepted", "sent"),
        ("scheduled", "sent"),
        ("queued", "sent"),
        ("sending", "sent"),
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("read", "read"),
        ("failed", "failed"),
        ("undelivered", "failed"),
        ("canceled", "failed"),
    ],
)
def test_status_mapping(provider: TwilioProvider, twilio_status: str, expected: str) -> None:
    delivery = split_one(provider, status_form(twilio_status))
    assert delivery.dedupe_key == f"tw:{SID}:{twilio_status}"
    assert delivery.conversation_id == "tw:+14123456789:+31612345678"
    [event] = provider.parse(make_channel(), delivery.payload)
    assert isinstance(event, StatusEvent)
    assert (event.provider_message_id, event.status) == (SID, expected)
    assert (event.error is not None) == (expected == "failed")


def test_failed_status_carries_twilio_error_code_and_message(provider: TwilioProvider) -> None:
    form = status_form("undelivered", ErrorCode="30003", ErrorMessage="Unreachable destination")
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert event == StatusEvent(
        SID, "failed", "Twilio: message undelivered (error 30003): Unreachable destination"
    )


def test_sms_status_alone_is_read_when_message_status_is_absent(provider: TwilioProvider) -> None:
    form = status_form("delivered")
    del form["MessageStatus"]
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert event == StatusEvent(SID, "delivered", None)


@pytest.mark.parametrize("status", ["receiving", "partially_delivered", "something-new"])
def test_other_statuses_are_acknowledged_and_not_relayed(
    provider: TwilioProvider, status: str
) -> None:
    delivery = split_one(provider, status_form(status))
    assert delivery.conversation_id is None
    assert delivery.dedupe_key == f"tw:{SID}:{status}"
    assert provider.parse(make_channel(), delivery.payload) == []


# --- inbound details ----------------------------------------------------------------------------


def test_created_at_is_the_receipt_time_stamped_by_split(provider: TwilioProvider) -> None:
    before = datetime.now(UTC)
    delivery = split_one(provider, {"MessageSid": SID, "From": "+1", "To": "+2", "Body": "x"})
    after = datetime.now(UTC)
    stamped = datetime.fromisoformat(delivery.payload[RECEIVED_AT])
    assert before <= stamped <= after
    [event] = provider.parse(make_channel(), delivery.payload)
    assert isinstance(event, InboundMessage)
    assert event.created_at == stamped
    # A payload without the stamp (a fixture, an old record) is dated when parsed.
    undated_form = {"MessageSid": SID, "From": "+1", "To": "+2", "Body": "x"}
    [undated] = provider.parse(make_channel(), undated_form)
    assert isinstance(undated, InboundMessage)
    assert abs(undated.created_at - datetime.now(UTC)) < timedelta(seconds=5)


def test_a_forged_receipt_time_is_overwritten(provider: TwilioProvider) -> None:
    form = {"MessageSid": SID, "From": "+1", "To": "+2", "Body": "x", RECEIVED_AT: "2001-01-01"}
    delivery = split_one(provider, form)
    assert not delivery.payload[RECEIVED_AT].startswith("2001")


def test_several_media_with_names_from_their_sids(provider: TwilioProvider) -> None:
    base = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/MM{'1' * 32}/Media"
    form = {
        "MessageSid": "MM" + "1" * 32,
        "From": "+15550001",
        "To": "+15550002",
        "Body": "two files",
        "NumMedia": "3",  # one more than given: skipped
        "MediaUrl0": f"{base}/ME{'a' * 32}",
        "MediaContentType0": "application/pdf",
        "MediaUrl1": f"{base}/ME{'b' * 32}",
        "MediaContentType1": "audio/ogg",
    }
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert isinstance(event, InboundMessage)
    assert [(m.mime_type, m.name) for m in event.media] == [
        ("application/pdf", f"ME{'a' * 32}.pdf"),
        ("audio/ogg", f"ME{'b' * 32}.oga"),
    ]


def test_an_empty_message_gets_a_placeholder(provider: TwilioProvider) -> None:
    form = {"MessageSid": SID, "From": "+1", "To": "+2", "Body": "", "MessageType": "sticker"}
    [event] = provider.parse(make_channel(), split_one(provider, form).payload)
    assert isinstance(event, InboundMessage)
    assert event.text == "[unsupported sticker message]"


def test_parse_accepts_a_dict_of_lists(provider: TwilioProvider) -> None:
    payload: dict[str, Any] = {"MessageSid": [SID], "From": ["+1"], "To": ["+2"], "Body": ["hi"]}
    [event] = provider.parse(make_channel(), payload)
    assert isinstance(event, InboundMessage)
    assert event.text == "hi"


# --- malformed bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"MessageSid": "SM1"}', "application/json"),
        (urlencode({"From": "+1", "To": "+2", "Body": "no sid"}).encode(), FORM),
        (b"", FORM),
        (b"MessageSid=SM1&Body=\xff", FORM),  # not UTF-8
        (urlencode({"MessageSid": "SM1", "Body": "no From/To"}).encode(), FORM),
        ("&".join(f"k{i}=v" for i in range(1001)).encode() + b"&MessageSid=SM1", FORM),
        (b"MessageSid=SM1&From=%2B1&To=%2B2&Body=x", ""),
    ],
    ids=["json", "no-sid", "empty", "not-utf8", "no-from-to", "too-many-fields", "no-type"],
)
def test_malformed_body_is_an_invalid_webhook(
    provider: TwilioProvider, body: bytes, content_type: str
) -> None:
    with pytest.raises(InvalidWebhook):
        provider.split(make_channel(), body, content_type)


def test_content_type_parameters_are_accepted(provider: TwilioProvider) -> None:
    body = b"MessageSid=SM1&From=%2B1&To=%2B2&Body=x"
    [delivery] = provider.split(
        make_channel(), body, "application/x-www-form-urlencoded; charset=utf-8"
    )
    assert delivery.dedupe_key == "tw:SM1"
    assert delivery.payload["From"] == "+1"


# --- credentials --------------------------------------------------------------------------------


def test_check_credentials_accepts_sms_and_whatsapp_senders(provider: TwilioProvider) -> None:
    creds = {"account_sid": ACCOUNT, "auth_token": "tok", "from": "+14155550100", "x": 1}
    assert provider.check_credentials(creds) == {
        "account_sid": ACCOUNT,
        "auth_token": "tok",
        "from": "+14155550100",
    }
    whatsapp = {**creds, "from": "whatsapp:+14155550100"}
    assert provider.check_credentials(whatsapp)["from"] == "whatsapp:+14155550100"


def test_check_credentials_names_every_problem(provider: TwilioProvider) -> None:
    with pytest.raises(InvalidCredentials) as caught:
        provider.check_credentials({"account_sid": "AC123", "from": "14155550100"})
    message = str(caught.value)
    assert "account_sid" in message
    assert "auth_token" in message
    assert "from" in message


def test_class_attributes(provider: TwilioProvider) -> None:
    assert provider.name == "twilio"
    assert provider.pipedrive_provider_type == "other"
    assert provider.template_support is False
    assert provider.reply_window is None
    assert provider.new_webhook_secret() is None
    assert provider.handshake(make_channel(), {"hub.challenge": "x"}) is None
