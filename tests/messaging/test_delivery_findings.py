"""Findings on the delivery engine, written as tests first: each fails until the engine is fixed.

Everything runs end to end on the real harness: the bridge on a real socket, real arq workers,
real Redis and databases, Telegram and Pipedrive played by their stand-ins. The assertions are on
what the customer receives at the Telegram stand-in, what Pipedrive receives at the Pipedrive
stand-in, and HTTP answers; never on wall-clock gaps. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx2
import pytest

from jobs import maintenance
from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import RecordedRequest, TelegramStandin
from sandbox.telegram import _error as telegram_error
from service import queue as queue_module
from service.app import create_app
from service.context import Services
from service.embedded_redis import free_port
from service.pipedrive.manifest import manifest
from service.queue import JobContext, Queue
from service.store import Database, messages
from service.store.schema import messages as messages_table
from tests.messaging.harness import Stack, running_stack, serving
from tests.pipedrive.bridge import PUBLIC_URL, standin

pytestmark = pytest.mark.anyio

BOT_TOKEN = "777003:findings-bot-token"
BIZ = "tg:biz:777003"
CHAT = 7770001
CONVERSATION = f"tg:777003:{CHAT}"
RECEIVE = "/v1/channels/messages/receive"
#: What Pipedrive accepts as a message status (messaging contract §2.2, §3.3).
PIPEDRIVE_STATUSES = {"sent", "delivered", "read", "failed"}
#: Upper bound for one worker run that should take a few seconds: a hang fails, never blocks CI.
DRAIN_SECONDS = 90.0


class FloodingTelegram(TelegramStandin):
    """The Telegram stand-in, plus flood control on a chosen later call of a method (the public
    ``fail_next`` can only fail the very next one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._flood: list[tuple[str, int, int]] = []  # (method, calls to let through, retry_after)

    def flood_after(self, method: str, let_through: int, *, retry_after: int = 1) -> None:
        """Let ``let_through`` calls of ``method`` pass, then answer the next one with Telegram's
        429 ``{"parameters": {"retry_after": N}}`` once."""
        with self._lock:
            self._flood.append((method.lower(), let_through, retry_after))

    def _take_fault(self, rec: RecordedRequest) -> tuple[int, dict[str, Any]] | None:
        for index, (method, let_through, retry_after) in enumerate(self._flood):
            if method != rec.method.lower():
                continue
            if let_through > 0:
                self._flood[index] = (method, let_through - 1, retry_after)
                break
            del self._flood[index]
            rec.note = "injected flood control 429"
            return telegram_error(
                429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after}
            )
        return super()._take_fault(rec)


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tg() -> Iterator[FloodingTelegram]:
    with FloodingTelegram(bot_token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
async def stack(
    stack: tuple[str, str], pd: PipedriveStandin, tg: FloodingTelegram
) -> AsyncIterator[Stack]:
    async with running_stack(stack, pd, tg) as running:
        yield running


@pytest.fixture
async def chat(stack: Stack) -> tuple[Stack, str]:
    """A channel with one conversation in which the customer wrote first."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    update = stack.tg.text_update(update_id=1, chat_id=CHAT, text="hi", message_id=1)
    assert (await stack.send_update(pcid, update)).status_code == 200
    await drain(stack)
    return stack, pcid


# --- helpers ------------------------------------------------------------------------------------


async def drain(
    stack: Stack, *extra: queue_module.RegisteredJob, within: float = DRAIN_SECONDS
) -> None:
    """Run a burst worker until the queue is empty (deferred retries included), within a bound."""
    try:
        async with asyncio.timeout(within):
            await stack.bridge.run_worker(*extra)
    except TimeoutError:
        raise AssertionError(f"the worker did not empty the queue within {within} s") from None


async def post(
    stack: Stack, pcid: str, message: str, files: list[tuple[str, bytes, str]] | None = None
) -> tuple[int, dict[str, Any]]:
    """An agent's reply from the Pipedrive inbox, through the URL Pipedrive's manifest names."""
    response = await asyncio.to_thread(
        stack.pd.post_message,
        pcid,
        conversation_id=CONVERSATION,
        sender_id=BIZ,
        recipient_ids=[f"tg:{CHAT}"],
        message=message,
        files=files or [],
    )
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"text": response.text}
    return response.status_code, body


def reported(stack: Stack, pcid: str) -> dict[str, dict[str, Any]]:
    """What Pipedrive holds per message id (the latest `receive` of each)."""
    return {m["id"]: m for m in stack.pd.received(pcid)}


def received_texts(stack: Stack) -> list[str]:
    """The texts of every accepted `receive`, in the order Pipedrive got them."""
    return [
        str(r.json["message"])
        for r in stack.pd.requests
        if r.api_path == RECEIVE and r.status == 200 and isinstance(r.json, dict)
    ]


async def sweep_now(ctx: JobContext, payload: dict[str, Any]) -> int:
    """The maintenance sweeper, run once by a real worker with the worker's own ctx."""
    return await maintenance.sweep_stuck_deliveries(ctx)


async def sweep_and_drain(stack: Stack) -> None:
    """Queue one sweep, then run a worker until the sweep and all it queued are done."""
    await stack.bridge.services.queue.enqueue("sweep_now", {}, key=f"sweep:{uuid.uuid4().hex}")
    await drain(stack, queue_module.job(sweep_now))


@asynccontextmanager
async def web_without_redis(stack: Stack) -> AsyncIterator[httpx2.AsyncClient]:
    """A second web process of the same bridge (same settings and database) whose Redis is
    unreachable (a closed port), served on a real socket and named in Pipedrive's manifest while
    the block runs; yields an in-process client of it. Workers keep the real Redis."""
    settings = stack.bridge.settings
    dead_queue = await Queue.connect(f"redis://127.0.0.1:{free_port()}/0")
    services = Services.create(settings, db=Database(settings.database_url), queue=dead_queue)
    app = create_app(settings, services)
    try:
        async with serving(app) as url:
            stack.pd.set_manifest(manifest(url))
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
                try:
                    yield http
                finally:
                    stack.pd.set_manifest(stack.manifest())
    finally:
        await services.close()


# --- 1. a multi-part send throttled half-way ----------------------------------------------------


@pytest.mark.parametrize("shape", ["long-text", "text-then-file"])
async def test_flood_control_on_a_later_part_does_not_resend_the_earlier_parts(
    chat: tuple[Stack, str], tg: FloodingTelegram, shape: str
) -> None:
    """When Telegram throttles a later part of a multi-part reply, the customer still gets every
    part exactly once, in order, and Pipedrive is told the reply was sent."""
    stack, pcid = chat
    # No whitespace: however the text is cut into Telegram-sized parts, they join back to it.
    text = "".join(f"part{n:05d}." for n in range(500))  # 5500 characters: two messages
    files: list[tuple[str, bytes, str]] = []
    if shape == "long-text":
        tg.flood_after("sendMessage", 1, retry_after=1)  # the second text part is throttled
    else:
        text = text[:2000]  # over the 1024-character caption limit: text first, then the file
        files = [("offer.pdf", b"%PDF-1.4 offer " + b"x" * 2000, "application/pdf")]
        tg.fail_next("sendDocument", 429, retry_after=1)  # the file, after the text went out
    status, body = await post(stack, pcid, text, files)
    assert status == 200, body
    message_id = body["data"]["id"]
    await drain(stack)
    sent = stack.tg.sent
    texts = [s["text"] for s in sent if s["method"] == "sendMessage"]
    assert len(texts) == len(set(texts)), (
        f"a part reached the customer twice: {[t[:14] + '...' for t in texts]}"
    )
    assert "".join(texts) == text, "the parts the customer got do not join back to the reply"
    if files:
        assert [s["method"] for s in sent] == ["sendMessage", "sendDocument"], [
            s["method"] for s in sent
        ]
        assert sent[-1]["file_bytes"] == files[0][1]
    else:
        assert len(texts) >= 2
    assert [r.status for r in stack.tg.requests if r.method.startswith("send")].count(429) == 1
    assert reported(stack, pcid)[message_id]["status"] == "sent"


# --- 2. an attachment that cannot be read ---------------------------------------------------------


async def test_an_unreadable_attachment_fails_its_message_and_not_the_next_reply(
    chat: tuple[Stack, str],
) -> None:
    """A reply whose stored file has gone is reported failed to Pipedrive, and the agent's next
    reply in the same conversation still reaches the customer and is reported sent."""
    stack, pcid = chat
    status, body = await post(
        stack, pcid, "", files=[("offer.pdf", b"%PDF-1.4 gone", "application/pdf")]
    )
    assert status == 200, body
    first_id = body["data"]["id"]
    channel = await stack.channel(pcid)
    stored = await messages.get(stack.bridge.services.db, channel.id, first_id)
    assert stored is not None
    assert len(stored.attachments) == 1
    await stack.bridge.services.media.delete(stored.attachments[0].key)  # the file is lost
    await drain(stack)
    first = reported(stack, pcid).get(first_id, {}).get("status")
    assert first == "failed", f"Pipedrive holds status {first!r} for the reply whose file is gone"
    after = await messages.get(stack.bridge.services.db, channel.id, first_id)
    assert after is not None
    assert after.error, "no reason is kept for the failure"

    status, body = await post(stack, pcid, "Sorry, the offer again in a minute")
    assert status == 200, body
    second_id = body["data"]["id"]
    await drain(stack)
    assert [s["text"] for s in stack.tg.sent] == ["Sorry, the offer again in a minute"]
    assert reported(stack, pcid)[second_id]["status"] == "sent"


# --- 3. postMessage while the web cannot reach Redis ----------------------------------------------


async def test_post_message_is_accepted_without_redis_and_swept_out_before_the_next_reply(
    chat: tuple[Stack, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply recorded while the web's Redis is down is answered 200 with its id, and the
    sweeper sends it once Redis is back: exactly once, before the agent's next reply."""
    stack, pcid = chat
    monkeypatch.setattr(maintenance, "STUCK_AFTER", timedelta(0))
    async with web_without_redis(stack):
        status, body = await post(stack, pcid, "first, written while Redis was away")
    assert status == 200, f"postMessage answered {status} {body} when only the enqueue failed"
    first_id = body["data"]["id"]
    assert first_id

    await sweep_and_drain(stack)
    assert [s["text"] for s in stack.tg.sent] == ["first, written while Redis was away"], (
        "the sweeper did not send the recorded reply"
    )
    assert reported(stack, pcid)[first_id]["status"] == "sent"

    status, body = await post(stack, pcid, "second")
    assert status == 200, body
    await drain(stack)
    await sweep_and_drain(stack)
    assert [s["text"] for s in stack.tg.sent] == ["first, written while Redis was away", "second"]
    assert reported(stack, pcid)[body["data"]["id"]]["status"] == "sent"


# --- 4. a provider webhook while the web cannot reach Redis ---------------------------------------


async def test_webhook_recorded_without_redis_is_acknowledged_and_swept_to_pipedrive(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Telegram update recorded while the web's Redis is down is answered 200, and the sweeper
    relays it to Pipedrive exactly once when Redis is back."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    monkeypatch.setattr(maintenance, "STUCK_AFTER", timedelta(0))
    update = stack.tg.text_update(update_id=41, chat_id=CHAT, text="anyone there?", message_id=1)
    assert stack.tg.webhook is not None
    async with web_without_redis(stack) as http:
        response = await http.post(
            f"/webhooks/telegram/{pcid}",
            json=update,
            headers={"X-Telegram-Bot-Api-Secret-Token": stack.tg.webhook["secret_token"]},
        )
    assert response.status_code == 200, (
        f"the recorded update was answered {response.status_code} {response.text}"
    )
    await sweep_and_drain(stack)
    await sweep_and_drain(stack)
    assert received_texts(stack) == ["anyone there?"]
    [message] = stack.pd.received(pcid)
    assert message["status"] == "sent"


# --- 5. one busy conversation must not hold up the others ----------------------------------------


async def test_a_burst_in_one_conversation_does_not_hold_up_another(stack: Stack) -> None:
    """A message in a quiet conversation reaches Pipedrive long before a 300-message burst in
    another conversation, accepted just before it, has been relayed."""
    burst = 300
    stack.pd.set_burst_limit(100_000, 2.0)  # Pipedrive's rate limit is not what this is about
    pcid = (await stack.add_channel())["provider_channel_id"]
    other = CHAT + 1
    for n in range(1, burst + 1):
        update = stack.tg.text_update(update_id=n, chat_id=CHAT, text=f"a{n}", message_id=n)
        response = await stack.send_update(pcid, update)
        assert response.status_code == 200, response.text
    update = stack.tg.text_update(
        update_id=burst + 1, chat_id=other, text="b1", message_id=1, from_id=other
    )
    assert (await stack.send_update(pcid, update)).status_code == 200
    await drain(stack, within=240.0)
    order = received_texts(stack)
    assert [t for t in order if t.startswith("a")] == [f"a{n}" for n in range(1, burst + 1)]
    assert order.count("b1") == 1
    position = order.index("b1")
    assert position < 50, (
        f"the quiet conversation's message was relayed {position + 1}th of {len(order)}, behind "
        f"{position} messages of the busy one"
    )


# --- 6. the internal `sending` status never reaches Pipedrive -------------------------------------


async def test_a_message_being_sent_is_served_with_a_status_pipedrive_knows(
    chat: tuple[Stack, str],
) -> None:
    """getMessageById, getConversationById and getConversations never show Pipedrive the internal
    `sending` status: every message carries sent, delivered, read or failed."""
    stack, pcid = chat
    status, body = await post(stack, pcid, "on its way")
    assert status == 200, body
    message_id = body["data"]["id"]
    async with stack.bridge.services.db.engine.begin() as conn:  # claimed by a worker, mid-send
        await conn.execute(
            messages_table.update()
            .where(messages_table.c.external_id == message_id)
            .values(status="sending")
        )

    async def call(endpoint: str, **kwargs: Any) -> Any:
        response = await asyncio.to_thread(
            stack.pd.call_manifest, endpoint, providerChannelId=pcid, **kwargs
        )
        assert response.status_code == 200, (endpoint, response.text)
        return response.json()

    bare = await call(
        "getMessageById", sourceConversationId=CONVERSATION, sourceMessageId=message_id
    )
    conversation = (await call("getConversationById", sourceConversationId=CONVERSATION))["data"]
    listing = (await call("getConversations"))["data"]
    served = {
        "getMessageById": bare["status"],
        "getConversationById": {m["id"]: m["status"] for m in conversation["messages"]}[message_id],
        "getConversations": {m["id"]: m["status"] for c in listing for m in c["messages"]}[
            message_id
        ],
    }
    assert all(s in PIPEDRIVE_STATUSES for s in served.values()), (
        f"statuses Pipedrive does not know were served: {served}"
    )
