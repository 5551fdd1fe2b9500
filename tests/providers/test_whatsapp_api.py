"""The WhatsApp adapter against the Graph stand-in on a real socket: sending (§3.6), its errors
(§3.10), media download (§3.9), templates (§3.8) and the account check."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from service.models import Channel
from service.providers.base import (
    InvalidCredentials,
    MediaRef,
    OutgoingFile,
    ProviderAuthError,
    ProviderPermanent,
    ProviderTransient,
    RecipientUnreachable,
)
from service.providers.urls import UntrustedURL
from service.providers.whatsapp import MAX_TEXT, WhatsAppProvider
from tests.providers.channels import channel_for
from tests.standins.whatsapp import GraphStandin

pytestmark = pytest.mark.anyio

CUSTOMER = "16505551234"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg bytes " * 100
PDF = b"%PDF-1.7\n" + b"quote " * 200


def make_channel(credentials: dict[str, Any]) -> Channel:
    return channel_for(
        "whatsapp",
        dict(credentials),
        account_id=str(credentials["phone_number_id"]),
        channel_id=3,
        provider_channel_id="ch_wa_3",
        account_name="Pdbridge Test Shop",
    )


@pytest.fixture
def graph() -> Iterator[GraphStandin]:
    with GraphStandin() as standin:
        yield standin


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=10, follow_redirects=False) as client:
        yield client


@pytest.fixture
def provider(graph: GraphStandin, http: httpx2.AsyncClient) -> WhatsAppProvider:
    return WhatsAppProvider(graph.graph_url, http)


@pytest.fixture
def channel(graph: GraphStandin) -> Channel:
    return make_channel(graph.credentials)


# ---------------------------------------------------------------------- sending


async def test_send_text(graph: GraphStandin, provider: WhatsAppProvider, channel: Channel) -> None:
    wamid = await provider.send(channel, CUSTOMER, "Hi! Yes, it comes in blue.", [])

    assert graph.sent == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": CUSTOMER,
            "type": "text",
            "text": {"body": "Hi! Yes, it comes in blue.", "preview_url": False},
        }
    ]
    assert wamid == graph.wamids[0]
    assert wamid.startswith("wamid.")
    [request] = graph.requests
    assert request.graph_path == f"{graph.phone_number_id}/messages"
    assert request.path.startswith("/v21.0/")
    assert request.headers["authorization"] == "Bearer EAAG-test"
    assert request.headers["content-type"] == "application/json"


async def test_long_text_is_split(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    text = ("word " * 1000).strip()  # 4999 characters

    wamid = await provider.send(channel, CUSTOMER, text, [])

    bodies = [m["text"]["body"] for m in graph.sent]
    assert len(bodies) == 2
    assert all(len(b) <= MAX_TEXT for b in bodies)
    assert "".join(bodies) == text
    assert bodies[0].endswith(" ")  # cut between words
    assert wamid == graph.wamids[0]


async def test_send_files_uploads_then_sends_with_caption(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    files = [
        OutgoingFile("photo.jpg", "image/jpeg", JPEG),
        OutgoingFile("quote.pdf", "application/pdf", PDF),
    ]

    wamid = await provider.send(channel, CUSTOMER, "Here you go", files)

    uploads = graph.uploads
    assert [(u.file_name, u.mime_type, u.content) for u in uploads] == [
        ("photo.jpg", "image/jpeg", JPEG),
        ("quote.pdf", "application/pdf", PDF),
    ]
    assert all(u.messaging_product == "whatsapp" for u in uploads)
    sent = graph.sent
    assert [m["type"] for m in sent] == ["image", "document"]
    assert sent[0]["image"] == {"id": uploads[0].id, "caption": "Here you go"}
    assert sent[1]["document"] == {"id": uploads[1].id, "filename": "quote.pdf"}
    assert all(m["to"] == CUSTOMER for m in sent)
    assert wamid == graph.wamids[0]
    # Both uploads happen before the first send: a failed upload sends nothing.
    paths = [r.graph_path.rsplit("/", 1)[-1] for r in graph.requests]
    assert paths == ["media", "media", "messages", "messages"]


async def test_text_goes_first_when_the_first_file_takes_no_caption(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    voice = OutgoingFile("note.ogg", "audio/ogg; codecs=opus", b"OggS" + b"\x00" * 100)

    wamid = await provider.send(channel, CUSTOMER, "Listen to this", [voice])

    assert [m["type"] for m in graph.sent] == ["text", "audio"]
    assert "caption" not in graph.sent[1]["audio"]
    assert graph.uploads[0].mime_type == "audio/ogg"
    assert wamid == graph.wamids[0]


async def test_failed_upload_sends_nothing(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    graph.fail_next("/media", 400, code=131053, message="(#131053) Media upload error")

    with pytest.raises(ProviderPermanent, match="131053"):
        await provider.send(channel, CUSTOMER, "Here", [OutgoingFile("a.jpg", "image/jpeg", JPEG)])

    assert graph.sent == []


async def test_nothing_to_send(provider: WhatsAppProvider, channel: Channel) -> None:
    with pytest.raises(ProviderPermanent, match="nothing to send"):
        await provider.send(channel, CUSTOMER, "  ", [])


async def test_send_template(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    wamid = await provider.send_template(
        channel, CUSTOMER, "order_update", "en_US", ["Sheena", "#1042", "Friday"]
    )

    assert graph.sent[0]["type"] == "template"
    assert graph.sent[0]["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Sheena"},
                    {"type": "text", "text": "#1042"},
                    {"type": "text", "text": "Friday"},
                ],
            }
        ],
    }
    assert wamid == graph.wamids[0]
    with pytest.raises(ProviderPermanent, match="132000"):
        await provider.send_template(channel, CUSTOMER, "order_update", "en_US", ["Sheena"])


# ---------------------------------------------------------------------- errors


async def test_outside_the_window_is_unreachable(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    graph.fail_next(
        "/messages",
        400,
        code=131047,
        message="(#131047) Re-engagement message",
        details="Message failed to send because more than 24 hours have passed since the "
        "customer last replied to this number.",
    )

    with pytest.raises(RecipientUnreachable) as caught:
        await provider.send(channel, CUSTOMER, "Hello again", [])

    assert "24-hour window" in str(caught.value)
    assert "template" in str(caught.value)


async def test_undeliverable_is_unreachable(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    graph.fail_next("/messages", 400, code=131026, message="Message undeliverable")
    with pytest.raises(RecipientUnreachable, match="131026"):
        await provider.send(channel, CUSTOMER, "Hello", [])


@pytest.mark.parametrize(
    ("status", "code", "headers", "retry_after"),
    [
        (400, 130429, {}, None),
        (400, 131056, {}, None),
        (400, 80007, {"Retry-After": "30"}, 30.0),
        (
            403,
            4,
            {"x-business-use-case-usage": '{"1": [{"estimated_time_to_regain_access": 2}]}'},
            120.0,
        ),
        (429, 100, {}, None),
        (500, 2, {}, None),
        (503, 9999, {}, None),
    ],
)
async def test_rate_limits_and_outages_are_transient(
    graph: GraphStandin,
    provider: WhatsAppProvider,
    channel: Channel,
    status: int,
    code: int,
    headers: dict[str, str],
    retry_after: float | None,
) -> None:
    graph.fail_next("/messages", status, code=code, message="slow down", headers=headers)

    with pytest.raises(ProviderTransient) as caught:
        await provider.send(channel, CUSTOMER, "Hello", [])

    assert caught.value.retry_after == retry_after


async def test_refused_token_is_an_auth_error_without_the_token(
    graph: GraphStandin, provider: WhatsAppProvider
) -> None:
    channel = make_channel({**graph.credentials, "access_token": "EAAG-revoked-secret"})

    with pytest.raises(ProviderAuthError) as caught:
        await provider.send(channel, CUSTOMER, "Hello", [])

    assert "190" in str(caught.value)
    assert "EAAG" not in str(caught.value)
    assert graph.requests[0].status == 401


async def test_other_errors_are_permanent_with_code_and_message(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    graph.fail_next("/messages", 400, code=100, message="(#100) Invalid parameter", details="to")

    with pytest.raises(ProviderPermanent) as caught:
        await provider.send(channel, CUSTOMER, "Hello", [])

    assert not isinstance(caught.value, RecipientUnreachable | ProviderAuthError)
    assert str(caught.value) == "WhatsApp send: 100 Invalid parameter: to"


async def test_unreachable_server_is_transient(channel: Channel, http: httpx2.AsyncClient) -> None:
    provider = WhatsAppProvider("http://127.0.0.1:9/v21.0", http)
    with pytest.raises(ProviderTransient) as caught:
        await provider.send(channel, CUSTOMER, "Hello", [])
    assert "127.0.0.1" not in str(caught.value)


# ---------------------------------------------------------------------- media


async def test_fetch_media_round_trip(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    media_id = graph.add_media(JPEG, "image/jpeg")

    data = await provider.fetch_media(
        channel, MediaRef(media_id, "image/jpeg", f"image_{media_id}.jpg", None)
    )

    assert data == JPEG
    lookup, download = graph.requests
    assert lookup.graph_path == media_id
    assert download.graph_path == "whatsapp_business/attachments"
    assert download.headers["authorization"] == "Bearer EAAG-test"
    assert download.status == 200


async def test_media_on_a_foreign_host_is_never_fetched(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    """`localhost` reaches the very same stand-in, but is not a host Meta serves media from."""
    port = graph.base_url.rsplit(":", 1)[1]
    media_id = graph.add_media(
        JPEG, "image/jpeg", url=f"http://localhost:{port}/whatsapp_business/attachments/?mid=1"
    )

    with pytest.raises(UntrustedURL) as caught:
        await provider.fetch_media(channel, MediaRef(media_id, "image/jpeg", "a.jpg", None))

    assert isinstance(caught.value, ProviderPermanent)  # the shared layer names it unavailable
    assert [r.graph_path for r in graph.requests] == [media_id]
    assert "localhost" in str(caught.value)
    assert "mid=" not in str(caught.value)


async def test_media_url_over_plain_http_is_refused(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    """The bearer token goes with the download: Meta's hosts are fetched over https only."""
    media_id = graph.add_media(JPEG, "image/jpeg", url="http://lookaside.fbsbx.com/x?mid=1")

    with pytest.raises(UntrustedURL, match="plain http"):
        await provider.fetch_media(channel, MediaRef(media_id, "image/jpeg", "a.jpg", None))


async def test_media_over_20_mb_is_refused(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    media_id = graph.add_media(b"small", "video/mp4", declared_size=25 * 1024 * 1024)

    with pytest.raises(ProviderPermanent, match="20 MB"):
        await provider.fetch_media(channel, MediaRef(media_id, "video/mp4", "v.mp4", None))

    assert len(graph.requests) == 1  # looked up, not downloaded


async def test_unknown_media_and_bad_media_ids(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    with pytest.raises(ProviderPermanent, match="100"):
        await provider.fetch_media(channel, MediaRef("424242", "image/jpeg", "x.jpg", None))
    with pytest.raises(ProviderPermanent, match="not a WhatsApp media id"):
        await provider.fetch_media(channel, MediaRef("../me", "image/jpeg", "x.jpg", None))
    assert len(graph.requests) == 1


async def test_a_media_url_refused_twice_is_given_up(
    provider: WhatsAppProvider, channel: Channel
) -> None:
    with GraphStandin(media_url_ttl=-1) as graph:
        provider = WhatsAppProvider(graph.graph_url, provider.http)
        media_id = graph.add_media(JPEG, "image/jpeg")
        with pytest.raises(ProviderPermanent, match=r"HTTP 404.*after a fresh lookup"):
            await provider.fetch_media(channel, MediaRef(media_id, "image/jpeg", "a.jpg", None))


async def test_uploaded_media_checksum_matches(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    await provider.send(channel, CUSTOMER, "", [OutgoingFile("a.pdf", "application/pdf", PDF)])
    media_id = graph.uploads[0].id
    assert graph.media_content(media_id) == PDF
    data = await provider.fetch_media(channel, MediaRef(media_id, "application/pdf", "a", None))
    assert hashlib.sha256(data).digest() == hashlib.sha256(PDF).digest()


# ---------------------------------------------------------------------- templates, account


async def test_list_templates_returns_approved_ones_with_their_body(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    templates = await provider.list_templates(channel)

    assert templates == [
        {
            "id": "1192339204654487",
            "name": "hello_world",
            "content": "Welcome and congratulations!! This message demonstrates your ability "
            "to send a WhatsApp message notification from the Cloud API.",
            "language": "en_US",
        },
        {
            "id": "1402958037436710",
            "name": "order_update",
            "content": "Hi {{1}}, your order {{2}} has shipped and arrives on {{3}}.",
            "language": "en_US",
        },
        {
            "id": "1402958037436711",
            "name": "order_update",
            "content": "Hallo {{1}}, deine Bestellung {{2}} ist unterwegs.",
            "language": "de",
        },
    ]
    [request] = graph.requests
    assert request.graph_path == f"{graph.waba_id}/message_templates"
    assert request.query == {"status": "APPROVED", "limit": "100"}


async def test_list_templates_filters_and_pages(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    body = {"type": "BODY", "text": "Hello {{1}}"}
    graph.templates = [
        {
            "id": str(n),
            "name": f"t{n}",
            "language": "en",
            "status": "APPROVED",
            "components": [body],
        }
        for n in range(230)
    ] + [{"id": "x", "name": "paused", "language": "en", "status": "PAUSED", "components": []}]

    templates = await provider.list_templates(channel)

    assert [t["name"] for t in templates] == [f"t{n}" for n in range(230)]
    assert len(graph.requests) == 3


async def test_list_templates_filters_even_when_the_server_does_not(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    """The `status` filter of the listing is unconfirmed (§3.8): the adapter filters itself."""
    graph.templates = [
        {"id": "1", "name": "ok", "language": "en", "status": "APPROVED", "components": []},
        {"id": "2", "name": "no", "language": "en", "status": "PENDING", "components": []},
    ]
    graph.ignore_template_filters = True

    templates = await provider.list_templates(channel)

    assert templates == [{"id": "1", "name": "ok", "content": "", "language": "en"}]


async def test_describe_account(graph: GraphStandin, provider: WhatsAppProvider) -> None:
    assert await provider.describe_account(graph.credentials) == (
        graph.phone_number_id,
        "Pdbridge Test Shop",
    )
    [request] = graph.requests
    assert request.query == {"fields": "display_phone_number,verified_name"}

    with pytest.raises(InvalidCredentials, match="access token"):
        await provider.describe_account({**graph.credentials, "access_token": "EAAG-wrong"})
    with pytest.raises(InvalidCredentials, match="phone_number_id"):
        await provider.describe_account({**graph.credentials, "phone_number_id": "123"})


async def test_webhook_registration_is_manual(
    graph: GraphStandin, provider: WhatsAppProvider, channel: Channel
) -> None:
    await provider.register_webhook(channel, "https://bridge.example.com/webhooks/whatsapp/x")
    await provider.remove_webhook(channel)
    assert await provider.backfill(channel, datetime(2026, 1, 1, tzinfo=UTC)) == []
    assert graph.requests == []
