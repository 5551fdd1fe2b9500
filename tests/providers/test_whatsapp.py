"""The WhatsApp adapter's inbound side: signatures, the GET handshake, splitting and parsing.

The fixtures are real webhook bodies kept outside the repository (../shared/fixtures/whatsapp,
see SOURCES.md there); the tests that need them are skipped when the folder is absent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from service.providers.whatsapp import WhatsAppProvider
from tests.providers.channels import channel_for
from tests.standins.whatsapp import GraphStandin

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "whatsapp"
FIXTURE_FILES = sorted(FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"WhatsApp fixtures not found at {FIXTURES}"
)

# chat-providers.md §6.2 (pywa's test suite; the app secret is revoked).
VECTOR_SECRET = "1222e786b144d0e85b9f365372d93676"
VECTOR_BODY = (
    b'{"object":"whatsapp_business_account","entry":[{"id":"264937493375603","changes":[{"value":'
    b'{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550953877",'
    b'"phone_number_id":"277321005464405"},"contacts":[{"profile":{"name":"PyWa Tests"},'
    b'"wa_id":"972544401243"}],"messages":[{"from":"972544401243","id":"wamid.HBgMOTcyNTQ0NDAx'
    b'MjQzFQIAEhggM0RFQTNCMEEwRTY3QzUwODYzMDc4NjQ4QzM4ODAxM0YA","timestamp":"1730231903",'
    b'"text":{"body":"Hey there! I am using PyWa."},"type":"text"}]},"field":"messages"}]}]}'
)
VECTOR_SIGNATURE = "sha256=54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441"


def make_channel(phone_number_id: str = "106540352242922", **credentials: str) -> Channel:
    creds = {
        "phone_number_id": phone_number_id,
        "access_token": "EAAG-test",
        "app_secret": "test-app-secret",
        "verify_token": "verify-me",
        "waba_id": "102290129340398",
        **credentials,
    }
    return channel_for(
        "whatsapp",
        creds,
        account_id=phone_number_id,
        channel_id=1,
        provider_channel_id="wa-chan-1",
        account_name="Pdbridge Test Shop",
    )


@pytest.fixture
def provider() -> WhatsAppProvider:
    # Nothing here makes a request: the client is never used.
    return WhatsAppProvider("https://graph.facebook.com/v21.0", httpx2.AsyncClient())


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_channel(body: bytes) -> Channel:
    """A channel for the phone number the fixture was sent to."""
    document = json.loads(body)
    for entry in document["entry"]:
        for change in entry["changes"]:
            number = change["value"].get("metadata", {}).get("phone_number_id")
            if number:
                return make_channel(number)
    return make_channel()


def events(provider: WhatsAppProvider, channel: Channel, found: list[Delivery]) -> list[Any]:
    return [e for d in found if d.conversation_id for e in provider.parse(channel, d.payload)]


# ---------------------------------------------------------------------- signatures


def test_signature_vector_verifies(provider: WhatsAppProvider) -> None:
    """§6.2: the published body and header verify with the published app secret."""
    assert len(VECTOR_BODY) == 511
    channel = make_channel(app_secret=VECTOR_SECRET)

    assert provider.verify(channel, {"X-Hub-Signature-256": VECTOR_SIGNATURE}, VECTOR_BODY, "")
    assert provider.verify(channel, {"x-hub-signature-256": VECTOR_SIGNATURE}, VECTOR_BODY, "")


def test_signature_rejects_altered_bodies_and_bad_headers(provider: WhatsAppProvider) -> None:
    channel = make_channel(app_secret=VECTOR_SECRET)
    flipped = bytearray(VECTOR_BODY)
    flipped[200] ^= 0x01
    reserialized = json.dumps(json.loads(VECTOR_BODY)).encode()
    good = {"X-Hub-Signature-256": VECTOR_SIGNATURE}

    assert not provider.verify(channel, good, bytes(flipped), "")
    assert not provider.verify(channel, good, reserialized, "")
    assert not provider.verify(make_channel(app_secret="other"), good, VECTOR_BODY, "")
    for header in (
        {},
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": VECTOR_SIGNATURE.removeprefix("sha256=")},
        {"X-Hub-Signature-256": "sha1=" + VECTOR_SIGNATURE[7:]},
        {"X-Hub-Signature-256": VECTOR_SIGNATURE[:-2]},
        {"X-Hub-Signature-256": VECTOR_SIGNATURE[:-1] + "z"},
        {"X-Hub-Signature": VECTOR_SIGNATURE},
    ):
        assert not provider.verify(channel, header, VECTOR_BODY, ""), header


def test_standin_signs_like_meta(provider: WhatsAppProvider) -> None:
    graph = GraphStandin(app_secret=VECTOR_SECRET)
    assert graph.sign(VECTOR_BODY) == VECTOR_SIGNATURE


# ---------------------------------------------------------------------- handshake, credentials


def test_handshake_echoes_the_challenge_for_the_right_token(provider: WhatsAppProvider) -> None:
    channel = make_channel()
    params = {
        "hub.mode": "subscribe",
        "hub.verify_token": "verify-me",
        "hub.challenge": "1158201444",
    }

    assert provider.handshake(channel, params) == "1158201444"
    assert provider.handshake(channel, {**params, "hub.verify_token": "verify-you"}) is None
    assert provider.handshake(channel, {**params, "hub.verify_token": "verify-me "}) is None
    assert provider.handshake(channel, {**params, "hub.mode": "unsubscribe"}) is None
    assert provider.handshake(channel, {"hub.mode": "subscribe", "hub.challenge": "1"}) is None
    assert (
        provider.handshake(channel, {k: v for k, v in params.items() if k != "hub.challenge"})
        is None
    )
    assert provider.handshake(make_channel(verify_token=""), params) is None


def test_check_credentials_names_what_is_missing(provider: WhatsAppProvider) -> None:
    with pytest.raises(InvalidCredentials) as missing:
        provider.check_credentials({"phone_number_id": "1", "access_token": "x", "waba_id": 3})
    assert "app_secret" in str(missing.value)
    assert "verify_token" in str(missing.value)
    assert "waba_id" in str(missing.value)
    assert "access_token" not in str(missing.value)

    creds = make_channel().credentials
    assert provider.check_credentials({**creds, "extra": "dropped"}) == creds
    with pytest.raises(InvalidCredentials, match="numeric"):
        provider.check_credentials({**creds, "phone_number_id": "../me"})


def test_no_webhook_secret_and_no_backfill(provider: WhatsAppProvider) -> None:
    assert provider.new_webhook_secret() is None
    assert provider.name == "whatsapp"
    assert provider.pipedrive_provider_type == "whatsapp"
    assert provider.template_support is True
    assert provider.reply_window is not None
    assert provider.reply_window.total_seconds() == 24 * 3600


# ---------------------------------------------------------------------- fixtures

#: Customer messages: fixture → (customer key, text, media (ref, mime, name) or None).
MESSAGES: dict[str, tuple[str, str, tuple[str, str, str] | None]] = {
    "pywa-text.json": ("972987654321", "Body Text", None),
    "pywa-text-reply-context.json": ("972987654321", "replied text", None),
    "pywa-text-click-to-whatsapp-referral.json": (
        "972987654321",
        "BODY\n[via ad: AD_TITLE AD_OR_POST_FB_URL]",
        None,
    ),
    "pywa-image.json": ("972987654321", "", ("65463453", "image/jpeg", "image_65463453.jpg")),
    "pywa-video-forwarded.json": (
        "972987654321",
        "caption",
        ("765756756", "video/mp4", "video_765756756.mp4"),
    ),
    "pywa-document.json": (
        "972987654321",
        "caption",
        ("1234567890987654321", "application/pdf", "filename.pdf"),
    ),
    "pywa-audio.json": (
        "972987654321",
        "",
        ("1234567890987654321", "audio/ogg", "audio_1234567890987654321.ogg"),
    ),
    "pywa-voice-note.json": (
        "972987654321",
        "",
        ("1234567890987654321", "audio/ogg", "voice_1234567890987654321.ogg"),
    ),
    "pywa-sticker.json": (
        "972987654321",
        "",
        ("1234567890987654321", "image/webp", "sticker_1234567890987654321.webp"),
    ),
    "pywa-reaction.json": ("972987654321", "[reaction \U0001f62e]", None),
    "pywa-reaction-removed-no-emoji.json": ("972987654321", "[reaction removed]", None),
    "pywa-location-current.json": (
        "972987654321",
        "[location] https://maps.google.com/?q=12.25089,43.90539",
        None,
    ),
    "pywa-location-named.json": (
        "972987654321",
        "[location] Facebook HQ 1 Hacker Way, Menlo Park, CA 94025 "
        "https://maps.google.com/?q=37.4611978,-122.2164385",
        None,
    ),
    "pywa-contacts-three-cards.json": (
        "972987654321",
        "[contact] Chandler Bing +1 555-555-5555\n[contact] Monica +1 666-666-6666\n"
        "[contact] Rachel Green +1 777-777-7777",
        None,
    ),
    "pywa-order.json": (
        "972987654321",
        "[order]\n3 x HAMBURGER (30 ILS)\n2 x FRENCH_FRIES (35 ILS)\n2 x SODA (10 ILS)",
        None,
    ),
    "pywa-interactive-button-reply.json": ("972987654321", "title", None),
    "pywa-interactive-list-reply.json": ("972987654321", "title", None),
    "pywa-interactive-nfm-reply-flow-completion.json": (
        "972987654321",
        "[form response] Sent\ncomment_text: Comment Text\ndelivery_rating: 4\n"
        "purchase_rating: 2\nrecommend_radio: 0\ncs_rating: 0",
        None,
    ),
    "pywa-interactive-missing-body-value-errors.json": (
        "972987654321",
        "[unsupported message: interactive]",
        None,
    ),
    "pywa-template-quick-reply-button.json": ("972987654321", "title", None),
    "pywa-unsupported-with-type.json": ("972987654321", "[unsupported message: pool]", None),
    "javaapi-unsupported-user-deleted-message.json": (
        "1111111111111",
        "[unsupported message]",
        None,
    ),
    "meta-docs-text-username-user-bsuid-only-no-wa-id.json": (
        "US.13491208655302741918",
        "Does it come in another color?",
        None,
    ),
    "pywa-edit-image-caption.json": (
        "16505551234",
        "(edited) Updated image caption",
        ("1234567890", "image/jpeg", "image_1234567890.jpg"),
    ),
    "pywa-revoke-deleted-message.json": ("<WHATSAPP_USER_PHONE_NUMBER>", "(message deleted)", None),
}

#: Statuses of our messages: fixture → (status, a piece of the error text or None).
STATUSES: dict[str, tuple[str, str | None]] = {
    "pywa-status-sent.json": ("sent", None),
    "javaapi-status-delivered.json": ("delivered", None),
    "javaapi-status-failed-media-upload-131053.json": ("failed", "131053 Media upload error"),
    "javaapi-status-failed-reengagement-131047.json": ("failed", "outside the 24-hour window"),
    "pywa-status-failed-130472.json": ("failed", "130472 User's number is part of an experiment"),
}

#: Recorded and acknowledged, never relayed.
ACKNOWLEDGED = {
    "javaapi-non-message-field-template-status-rejected.json",  # field is not "messages"
    "pywa-system-user-changed-number.json",  # a system message, no contacts
    "pywa-status-read-group-recipient.json",  # a group: not a two-party conversation
}


@needs_fixtures
def test_every_fixture_is_classified() -> None:
    """A new fixture must be added to one of the tables above."""
    names = {p.name for p in FIXTURE_FILES}
    assert names == set(MESSAGES) | set(STATUSES) | ACKNOWLEDGED


@needs_fixtures
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_every_fixture_splits_and_parses(provider: WhatsAppProvider, path: Path) -> None:
    body = path.read_bytes()
    channel = fixture_channel(body)
    number = channel.credentials["phone_number_id"]

    found = provider.split(channel, body, "application/json")

    assert found
    for delivery in found:
        assert delivery.dedupe_key.startswith(f"wa:{number}:")
        json.dumps(delivery.payload)  # recordable as JSON
        parsed = provider.parse(channel, delivery.payload)
        if delivery.conversation_id is None:
            assert parsed == []
        else:
            assert delivery.conversation_id.startswith(f"wa:{number}:")
            assert len(parsed) == 1


@needs_fixtures
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_customer_messages(provider: WhatsAppProvider, name: str) -> None:
    key, text, media = MESSAGES[name]
    body = load(name)
    channel = fixture_channel(body)
    number = channel.credentials["phone_number_id"]
    raw = json.loads(body)["entry"][0]["changes"][0]["value"]["messages"][0]

    found = provider.split(channel, body, "application/json")
    [message] = events(provider, channel, found)

    assert [d.conversation_id for d in found] == [f"wa:{number}:{key}"]
    assert isinstance(message, InboundMessage)
    assert message.conversation_id == f"wa:{number}:{key}"
    assert message.address == key
    assert message.sender.external_id == f"wa:{key}"
    assert message.sender.role == "end_user"
    assert message.provider_message_id == raw["id"]
    assert message.text == text
    assert message.created_at == datetime.fromtimestamp(int(raw["timestamp"]), UTC)
    assert message.media == ((MediaRef(*media, None),) if media else ())
    if raw["type"] not in ("edit", "revoke"):
        assert message.message_id == raw["id"]
        assert found[0].dedupe_key == f"wa:{number}:{raw['id']}"


@needs_fixtures
def test_sender_named_from_contacts_and_linked_by_number(provider: WhatsAppProvider) -> None:
    body = load("pywa-text.json")
    [message] = events(
        provider, fixture_channel(body), provider.split(fixture_channel(body), body, "")
    )

    assert message.sender.name == "Test Name"
    assert message.link == "https://wa.me/972987654321"


@needs_fixtures
def test_bsuid_only_customer_is_keyed_on_the_user_id(provider: WhatsAppProvider) -> None:
    """Meta's username example has no wa_id and no `from`: the BSUID is the customer."""
    body = load("meta-docs-text-username-user-bsuid-only-no-wa-id.json")
    channel = fixture_channel(body)

    [delivery] = provider.split(channel, body, "application/json")
    [message] = provider.parse(channel, delivery.payload)

    assert delivery.conversation_id == "wa:106540352242922:US.13491208655302741918"
    assert isinstance(message, InboundMessage)
    assert message.sender.external_id == "wa:US.13491208655302741918"
    assert message.sender.name == "Sheena Nelson"
    assert message.address == "US.13491208655302741918"
    assert message.link == ""


@needs_fixtures
def test_wa_id_wins_over_the_user_id_when_both_are_present(provider: WhatsAppProvider) -> None:
    """The quick-reply fixture carries `from` and `from_user_id`: the phone number keys it."""
    body = load("pywa-template-quick-reply-button.json")
    [delivery] = provider.split(fixture_channel(body), body, "application/json")
    assert delivery.conversation_id == "wa:1122334455667:972987654321"


@needs_fixtures
def test_edit_and_revoke_get_ids_of_their_own(provider: WhatsAppProvider) -> None:
    edit = load("pywa-edit-image-caption.json")
    channel = fixture_channel(edit)
    [delivery] = provider.split(channel, edit, "")
    [message] = provider.parse(channel, delivery.payload)
    assert isinstance(message, InboundMessage)
    original = "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    assert message.message_id == f"{original}:e1749854575"
    assert delivery.dedupe_key.endswith(":e1749854575")
    # The contacts entry names another number than `from`: the name is not borrowed.
    assert message.sender.name == "+16505551234"

    revoke = load("pywa-revoke-deleted-message.json")
    channel = fixture_channel(revoke)
    [delivery] = provider.split(channel, revoke, "")
    [message] = provider.parse(channel, delivery.payload)
    assert isinstance(message, InboundMessage)
    assert message.message_id == "<ORIGINAL_WHATSAPP_MESSAGE_ID>:deleted"
    assert delivery.dedupe_key.endswith(":revoke")


@needs_fixtures
@pytest.mark.parametrize("name", sorted(STATUSES))
def test_statuses(provider: WhatsAppProvider, name: str) -> None:
    status, error = STATUSES[name]
    body = load(name)
    channel = fixture_channel(body)
    number = channel.credentials["phone_number_id"]
    raw = json.loads(body)["entry"][0]["changes"][0]["value"]["statuses"][0]

    found = provider.split(channel, body, "application/json")
    [event] = events(provider, channel, found)

    assert [d.conversation_id for d in found] == [f"wa:{number}:{raw['recipient_id']}"]
    assert [d.dedupe_key for d in found] == [f"wa:{number}:{raw['id']}:{status}"]
    assert isinstance(event, StatusEvent)
    assert event.provider_message_id == raw["id"]
    assert event.status == status
    if error is None:
        assert event.error is None
    else:
        assert event.error is not None
        assert error in event.error


@needs_fixtures
@pytest.mark.parametrize("name", sorted(ACKNOWLEDGED))
def test_acknowledged_only(provider: WhatsAppProvider, name: str) -> None:
    body = load(name)
    channel = fixture_channel(body)

    found = provider.split(channel, body, "application/json")

    assert found
    assert all(d.conversation_id is None for d in found)
    assert all(provider.parse(channel, d.payload) == [] for d in found)


@needs_fixtures
def test_template_status_update_is_acknowledged(provider: WhatsAppProvider) -> None:
    body = load("javaapi-non-message-field-template-status-rejected.json")
    [delivery] = provider.split(make_channel(), body, "application/json")
    assert delivery.conversation_id is None
    assert delivery.payload["kind"] == "ignored"
    assert "message_template_status_update" in delivery.payload["reason"]
    # Redelivered, it dedupes on the same key.
    assert provider.split(make_channel(), body, "")[0].dedupe_key == delivery.dedupe_key


@needs_fixtures
def test_failed_status_error_is_readable(provider: WhatsAppProvider) -> None:
    body = load("javaapi-status-failed-reengagement-131047.json")
    channel = fixture_channel(body)
    [event] = events(provider, channel, provider.split(channel, body, ""))
    assert isinstance(event, StatusEvent)
    assert event.error == (
        "outside the 24-hour window: 131047 Re-engagement message: Message failed to send "
        "because more than 24 hours have passed since the customer last replied to this number."
    )


# ---------------------------------------------------------------------- batches and bad bodies


def test_batch_of_two_messages_and_a_status_is_three_deliveries(
    provider: WhatsAppProvider,
) -> None:
    graph = GraphStandin()
    channel = make_channel(graph.phone_number_id)
    body = graph.encode(
        graph.batch(
            graph.text_webhook(
                wamid="wamid.A", wa_id="16505551234", text="Hi", timestamp=1750000000
            ),
            graph.text_webhook(wamid="wamid.B", wa_id="4915112345678", text="Hallo", name="Jörg"),
            graph.status_webhook(wamid="wamid.OUT", recipient_id="16505551234", status="read"),
        )
    )

    found = provider.split(channel, body, "application/json")

    number = graph.phone_number_id
    assert [d.dedupe_key for d in found] == [
        f"wa:{number}:wamid.A",
        f"wa:{number}:wamid.B",
        f"wa:{number}:wamid.OUT:read",
    ]
    assert [d.conversation_id for d in found] == [
        f"wa:{number}:16505551234",
        f"wa:{number}:4915112345678",
        f"wa:{number}:16505551234",
    ]
    first, second, third = (provider.parse(channel, d.payload)[0] for d in found)
    assert isinstance(first, InboundMessage)
    assert first.text == "Hi"
    assert first.created_at == datetime.fromtimestamp(1750000000, UTC)
    assert isinstance(second, InboundMessage)
    assert second.sender.name == "Jörg"
    assert third == StatusEvent("wamid.OUT", "read", None)


def test_messages_batched_in_one_value_keep_their_own_contacts(provider: WhatsAppProvider) -> None:
    graph = GraphStandin()
    channel = make_channel(graph.phone_number_id)
    payload = graph.batch(
        graph.text_webhook(wamid="wamid.A", wa_id="111", text="one", name="Ann"),
        graph.image_webhook(wamid="wamid.B", wa_id="222", media_id="99", caption="two", name="Bo"),
        graph.status_webhook(wamid="wamid.C", recipient_id="111", status="failed"),
        merge=True,
    )
    assert len(payload["entry"][0]["changes"]) == 1

    found = provider.split(channel, graph.encode(payload), "")
    parsed = [e for d in found for e in provider.parse(channel, d.payload)]

    assert len(found) == 3
    names = [e.sender.name for e in parsed if isinstance(e, InboundMessage)]
    assert names == ["Ann", "Bo"]
    status = parsed[2]
    assert isinstance(status, StatusEvent)
    assert status.status == "failed"
    assert status.error is not None
    assert "131026" in status.error


def test_other_phone_number_is_acknowledged_only(provider: WhatsAppProvider) -> None:
    """One Meta app has one callback URL: traffic for its other numbers is not ours to relay."""
    graph = GraphStandin(phone_number_id="999999999")
    body = graph.encode(graph.text_webhook(wamid="wamid.X", wa_id="1", text="hi"))

    [delivery] = provider.split(make_channel("106540352242922"), body, "")

    assert delivery.conversation_id is None


def test_errors_only_value_and_group_message_are_acknowledged(provider: WhatsAppProvider) -> None:
    graph = GraphStandin()
    channel = make_channel(graph.phone_number_id)
    errors_only = graph.batch(
        {
            "messaging_product": "whatsapp",
            "metadata": {"phone_number_id": graph.phone_number_id},
            "errors": [{"code": 131000, "title": "Something went wrong"}],
        }
    )
    group = graph.text_webhook(wamid="wamid.G", wa_id="1", text="hi all")
    group["entry"][0]["changes"][0]["value"]["messages"][0]["group_id"] = "120363025246125486"

    for payload in (errors_only, group):
        found = provider.split(channel, graph.encode(payload), "")
        assert [d.conversation_id for d in found] == [None]
        assert provider.parse(channel, found[0].payload) == []


def test_unknown_status_values_are_acknowledged(provider: WhatsAppProvider) -> None:
    graph = GraphStandin()
    channel = make_channel(graph.phone_number_id)
    body = graph.encode(graph.status_webhook(wamid="wamid.P", recipient_id="1", status="played"))
    [delivery] = provider.split(channel, body, "")
    assert delivery.conversation_id is None
    assert provider.parse(channel, delivery.payload) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"<html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"entry"', "JSON object"),
        (b'{"object": "whatsapp_business_account"}', "entry"),
        (b'{"object": "whatsapp_business_account", "entry": {}}', "entry"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(
    provider: WhatsAppProvider, body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidWebhook, match=reason):
        provider.split(make_channel(), body, "application/json")


def test_odd_pieces_inside_a_signed_body_are_acknowledged(provider: WhatsAppProvider) -> None:
    """A signed body Meta sent is never answered with a 400 for one odd piece inside it (Meta
    would retry it for days): the piece is recorded and acknowledged."""
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                "junk",
                {"id": "1", "changes": [None, {"field": "messages"}]},
                {
                    "id": "1",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {"messages": [{"type": "text"}], "statuses": [{"id": 5}]},
                        }
                    ],
                },
            ],
        }
    ).encode()

    found = provider.split(make_channel(), body, "")

    assert len(found) == 5
    assert all(d.conversation_id is None for d in found)
    assert len({d.dedupe_key for d in found}) == 5
