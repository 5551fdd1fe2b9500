"""postMessage input handling and outbound files, retries and provider flood control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.media import MAX_MEDIA_BYTES
from tests.messaging.harness import Stack, running_stack
from tests.pipedrive.bridge import standin

pytestmark = pytest.mark.anyio

CHAT = 6660001
CONVERSATION = f"tg:777002:{CHAT}"


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token="777002:another-token") as server:
        yield server


@pytest.fixture
async def chat(
    stack: tuple[str, str], pd: PipedriveStandin, tg: TelegramStandin
) -> AsyncIterator[tuple[Stack, str]]:
    """A channel with one conversation in which the customer wrote first."""
    async with running_stack(stack, pd, tg) as running:
        pcid = (await running.add_channel())["provider_channel_id"]
        update = tg.text_update(update_id=1, chat_id=CHAT, text="hi", message_id=1)
        await running.send_update(pcid, update)
        await running.run_worker()
        yield running, pcid


async def post(stack: Stack, pcid: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    values: dict[str, object] = {
        "conversation_id": CONVERSATION,
        "sender_id": "tg:biz:777002",
        "recipient_ids": [f"tg:{CHAT}"],
        "message": "hello",
    }
    values.update(kwargs)
    response = await asyncio.to_thread(stack.pd.post_message, pcid, **values)
    return response.status_code, response.json()


async def test_a_file_goes_out_as_a_photo_with_the_text_as_caption(chat: tuple[Stack, str]) -> None:
    """An image attached in Pipedrive is uploaded with sendPhoto, same bytes, text as caption."""
    stack, pcid = chat
    picture = b"\x89PNG\r\n\x1a\n" + b"p" * 5000
    status, body = await post(stack, pcid, files=[("chart.png", picture, "image/png")])
    assert status == 200
    await stack.run_worker()
    [sent] = stack.tg.sent
    assert (sent["method"], sent["caption"], sent["file_bytes"]) == ("sendPhoto", "hello", picture)
    reported = {m["id"]: m for m in stack.pd.received(pcid)}[body["data"]["id"]]  # type: ignore[index]
    assert reported["status"] == "sent"
    assert reported["attachments"][0]["name"] == "chart.png"


async def test_a_document_goes_out_with_send_document(chat: tuple[Stack, str]) -> None:
    """A PDF is uploaded with sendDocument under its file name."""
    stack, pcid = chat
    status, _ = await post(
        stack, pcid, message="", files=[("offer.pdf", b"%PDF-1.4 x", "application/pdf")]
    )
    assert status == 200
    await stack.run_worker()
    [sent] = stack.tg.sent
    assert (sent["method"], sent["file_name"]) == ("sendDocument", "offer.pdf")


async def test_flood_control_is_waited_out(chat: tuple[Stack, str]) -> None:
    """A 429 with retry_after from Telegram is retried after that delay and then sent once."""
    stack, pcid = chat
    stack.tg.fail_next("sendMessage", 429, retry_after=1)
    status, body = await post(stack, pcid)
    assert status == 200
    await stack.run_worker()
    assert len(stack.tg.sent) == 1
    reported = {m["id"]: m for m in stack.pd.received(pcid)}[body["data"]["id"]]  # type: ignore[index]
    assert reported["status"] == "sent"
    outcomes = await stack.bridge.services.queue.job_outcomes()
    assert outcomes[("send_conversation", "retried")] == 1


@pytest.mark.parametrize("field", ["recipientIds[]", "recipientIds", "recipientIds[0]"])
async def test_every_recipient_spelling_is_understood(chat: tuple[Stack, str], field: str) -> None:
    """`recipientIds[]`, `recipientIds` and `recipientIds[0]` all name the recipient."""
    stack, pcid = chat
    status, _ = await post(stack, pcid, recipient_field=field)
    assert status == 200


async def test_bad_input_gets_invalid_body_and_nothing_is_sent(chat: tuple[Stack, str]) -> None:
    """Unknown recipient, empty message, too many or too large files, unknown conversation:
    each is refused with the extension's envelope and nothing reaches Telegram."""
    stack, pcid = chat
    cases = [
        {"recipient_ids": ["tg:999"]},
        {"message": ""},
        {"files": [(f"f{n}.txt", b"x", "text/plain") for n in range(11)]},
        {"files": [("big.bin", b"\0" * (MAX_MEDIA_BYTES + 1), "application/octet-stream")]},
        {"sender_id": "somebody-else"},
    ]
    for case in cases:
        status, body = await post(stack, pcid, **case)
        assert status == 400, (case.keys(), body)
        assert body["data"]["code"] == "INVALID_BODY"  # type: ignore[index]
    status, body = await post(stack, pcid, conversation_id="tg:777002:404")
    assert status == 404
    await stack.run_worker()
    assert stack.tg.sent == []


async def test_an_unconfirmed_send_is_failed_not_repeated(chat: tuple[Stack, str]) -> None:
    """A 5xx from Telegram may hide a delivered message: it is reported failed, never resent."""
    stack, pcid = chat
    stack.tg.fail_next("sendMessage", 502)
    status, body = await post(stack, pcid)
    assert status == 200
    await stack.run_worker()
    assert len([r for r in stack.tg.requests if r.method == "sendMessage"]) == 1
    reported = {m["id"]: m for m in stack.pd.received(pcid)}[body["data"]["id"]]  # type: ignore[index]
    assert reported["status"] == "failed"


async def test_replies_leave_in_the_order_they_were_written(chat: tuple[Stack, str]) -> None:
    """Five quick replies sent by two workers reach the chat in the order the agent wrote them."""
    stack, pcid = chat
    for n in range(5):
        status, _ = await post(stack, pcid, message=f"r{n}")
        assert status == 200
    await stack.run_worker(workers=2)
    assert [s["text"] for s in stack.tg.sent] == [f"r{n}" for n in range(5)]


async def test_bad_cursors_get_a_clean_400(chat: tuple[Stack, str]) -> None:
    """Forged or foreign cursors are refused in the extension's envelope, never a 500."""
    stack, pcid = chat
    for endpoint, extra in (
        ("getConversations", {}),
        ("getConversationById", {"sourceConversationId": CONVERSATION}),
    ):
        for after in ("cWzFd", "garbage", "mW10", "c" + "e30"):
            response = await asyncio.to_thread(
                stack.pd.call_manifest,
                endpoint,
                providerChannelId=pcid,
                params={"after": after},
                **extra,
            )
            assert response.status_code == 400, (endpoint, after, response.text)
            assert response.json()["data"]["code"] == "INVALID_BODY"


async def test_the_same_bot_cannot_be_connected_twice(chat: tuple[Stack, str]) -> None:
    """A second channel for an already connected bot is refused with 409."""
    stack, _ = chat
    response = await stack.http.post(
        "/admin/channels",
        headers={"Authorization": "Bearer admin-token-for-tests"},
        json={
            "provider": "telegram",
            "company_id": 1001,
            "user_id": 2001,
            "name": "again",
            "credentials": {"bot_token": stack.tg.bot_token},
        },
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ALREADY_CONNECTED"


async def test_framework_errors_under_the_extension_use_its_envelope(
    chat: tuple[Stack, str],
) -> None:
    """Starlette's own 404 and 405, and the 413 for an oversized chunked postMessage, answer in
    the extension's `{success: false, data: {code, message}}` envelope that Pipedrive reads;
    nothing is sent."""
    import base64

    from tests.pipedrive.bridge import CLIENT_ID, CLIENT_SECRET

    stack, pcid = chat
    pair = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    auth = {"Authorization": f"Basic {pair}"}
    missing = await stack.http.get(f"/pipedrive/channels/{pcid}/nowhere", headers=auth)
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    assert missing.json()["data"]["code"] == "NOT_FOUND"
    wrong_method = await stack.http.put(f"/pipedrive/channels/{pcid}/messages", headers=auth)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["data"]["code"] == "METHOD_NOT_ALLOWED"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is counted
        yield (
            b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        for _ in range(46):
            yield b"x" * (1024 * 1024)

    oversized = await stack.http.post(
        f"/pipedrive/channels/{pcid}/messages",
        content=chunks(),
        headers={**auth, "content-type": "multipart/form-data; boundary=zzz"},
    )
    assert oversized.status_code == 413, oversized.text
    assert oversized.json() == {
        "success": False,
        "data": {
            "code": "BODY_TOO_LARGE",
            "message": "the request body is larger than this route accepts",
        },
    }
    assert stack.tg.sent == []


async def test_a_message_refused_for_a_large_file_keeps_none_of_its_files(
    chat: tuple[Stack, str],
) -> None:
    """A small file then one over 20 MB: 400, and the small one is not left in the store."""
    stack, pcid = chat
    files = [
        ("small.txt", b"kept?", "text/plain"),
        ("big.bin", b"\0" * (MAX_MEDIA_BYTES + 1), "application/octet-stream"),
    ]
    status, body = await post(stack, pcid, files=files)
    assert status == 400, body
    media = Path("var") / "media"  # the default local store, in the test's own directory
    assert not media.exists() or list(media.iterdir()) == []
