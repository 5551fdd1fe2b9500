"""Uninstall: the company's channels stop, our provider webhooks and stored tokens go, queued
work does nothing, and later provider traffic is acknowledged and dropped (never dead-lettered).
Pipedrive and Telegram stand-ins on real sockets, real workers, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from jobs import maintenance
from sandbox.pipedrive import PipedriveStandin
from sandbox.telegram import TelegramStandin
from service.store import dead_letters, deliveries, installations, messages
from service.store.schema import channels as channels_table
from service.store.schema import installations as installations_table
from tests.messaging.harness import Stack, running_stack
from tests.pipedrive.bridge import CLIENT_ID, CLIENT_SECRET, standin

pytestmark = pytest.mark.anyio

CHAT = 5550001
BOT_TOKEN = "777001:SECRET-bot-token"


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
def tg() -> Iterator[TelegramStandin]:
    with TelegramStandin(bot_token=BOT_TOKEN) as server:
        yield server


@pytest.fixture
async def stack(
    stack: tuple[str, str], pd: PipedriveStandin, tg: TelegramStandin
) -> AsyncIterator[Stack]:
    async with running_stack(stack, pd, tg) as running:
        yield running


def client_basic() -> dict[str, str]:
    pair = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


async def uninstall_notice(stack: Stack) -> None:
    """Pipedrive's `DELETE <callback>`; must be acknowledged."""
    body = {"client_id": CLIENT_ID, "company_id": 1001, "user_id": 2001, "timestamp": "t"}
    response = await stack.http.request(
        "DELETE", "/oauth/callback", json=body, headers=client_basic()
    )
    assert response.status_code == 200, response.text


async def post_raw_update(stack: Stack, pcid: str, update_id: int, secret: str) -> int:
    response = await stack.http.post(
        f"/webhooks/telegram/{pcid}",
        json=stack.tg.text_update(update_id=update_id, chat_id=CHAT, text="late", message_id=99),
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )
    return response.status_code


async def test_uninstall_stops_the_company_and_leaves_no_token_behind(stack: Stack) -> None:
    """After the notice: the webhook is deleted at Telegram, no token is stored (Pipedrive's nor
    the bot's), and the update and reply that were queued before it go nowhere."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    await stack.send_update(
        pcid, stack.tg.text_update(update_id=1, chat_id=CHAT, text="hello", message_id=1)
    )
    await stack.run_worker()
    reply = await asyncio.to_thread(
        stack.pd.post_message,
        pcid,
        conversation_id=f"tg:777001:{CHAT}",
        sender_id="tg:biz:777001",
        recipient_ids=[f"tg:{CHAT}"],
        message="a reply queued before the uninstall",
    )
    assert reply.status_code == 200
    await stack.send_update(
        pcid, stack.tg.text_update(update_id=2, chat_id=CHAT, text="queued", message_id=2)
    )
    relayed = len(stack.pd.received(pcid))

    await uninstall_notice(stack)
    await uninstall_notice(stack)  # a repeated notice changes nothing
    await stack.run_worker()

    assert stack.tg.webhook is None
    assert [r.method for r in stack.tg.requests].count("deleteWebhook") == 1
    assert stack.tg.sent == []
    assert len(stack.pd.received(pcid)) == relayed
    db = stack.bridge.services.db
    assert await dead_letters.list_all(db) == []
    [inst] = await installations.list_all(db)
    assert inst.status == "uninstalled"
    async with db.engine.connect() as conn:
        inst_row = (await conn.execute(sa.select(installations_table))).one()._mapping
        channel_row = (await conn.execute(sa.select(channels_table))).one()._mapping
    assert (inst_row["access_token"], inst_row["refresh_token"]) == (None, None)
    assert channel_row["status"] == "uninstalled"
    assert (channel_row["credentials"], channel_row["webhook_secret"]) == ("", None)
    reply_row = await messages.get(db, channel_row["id"], reply.json()["data"]["id"])
    assert reply_row is not None
    assert reply_row.status == "failed"
    assert await deliveries.count_by_status(db, "telegram") == {"done": 1, "dropped": 1}


async def test_traffic_after_uninstall_is_acknowledged_and_dropped(stack: Stack) -> None:
    """A late update (with or without the old secret) gets 200, one info line, and nothing is
    recorded, relayed or dead-lettered; other companies' unknown channels still get 404."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    secret = stack.tg.webhook["secret_token"] if stack.tg.webhook else ""
    await uninstall_notice(stack)
    await stack.run_worker()
    db = stack.bridge.services.db
    before = await deliveries.count(db, "telegram")
    with capture_logs() as logs:
        statuses = [
            await post_raw_update(stack, pcid, 10, secret),
            await post_raw_update(stack, pcid, 11, "wrong"),
        ]
    assert statuses == [200, 200]
    dropped = [e for e in logs if e["event"] == "provider_webhook.dropped"]
    assert len(dropped) == 2
    assert all(e["log_level"] == "info" for e in dropped)
    assert await deliveries.count(db, "telegram") == before
    await stack.run_worker()
    assert stack.pd.received(pcid) == []
    assert await dead_letters.list_all(db) == []
    assert await post_raw_update(stack, "no-such-channel", 12, secret) == 404


async def test_a_failed_delete_webhook_is_retried_until_it_goes_through(stack: Stack) -> None:
    """Telegram answering 502 to deleteWebhook does not leave our webhook set: the job retries,
    and the bot token is deleted only once Telegram has removed it."""
    pcid = (await stack.add_channel())["provider_channel_id"]
    stack.tg.fail_next("deleteWebhook", 502)
    await uninstall_notice(stack)
    await stack.run_worker()
    assert stack.tg.webhook is None
    calls = [r for r in stack.tg.requests if r.method == "deleteWebhook"]
    assert len(calls) == 2
    async with stack.bridge.services.db.engine.connect() as conn:
        query = sa.select(channels_table).where(channels_table.c.provider_channel_id == pcid)
        row = (await conn.execute(query)).one()._mapping
    assert row["credentials"] == ""
    assert await dead_letters.list_all(stack.bridge.services.db) == []


async def test_an_unhook_lost_with_redis_is_queued_again_by_the_hourly_job(stack: Stack) -> None:
    """An unhook job lost with Redis's data is queued again by the hourly maintenance job, which
    then takes the webhook down; a run with nothing left to do queues nothing."""
    await stack.add_channel()
    await uninstall_notice(stack)
    await stack.bridge.services.queue.redis.flushdb()  # the queued unhook is gone
    await stack.run_worker()
    assert stack.tg.webhook is not None
    ctx = {"services": stack.bridge.services}
    assert (await maintenance.prune_storage(ctx))["unhooks_queued"] == 1
    await stack.run_worker()
    assert stack.tg.webhook is None
    assert (await maintenance.prune_storage(ctx))["unhooks_queued"] == 0
