"""Catch up after downtime: ask each provider that can list its traffic for what we missed.

Each fetched item goes through the same record-then-enqueue path as a webhook, so what was
already received is a duplicate and nothing is relayed twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from service import ingest
from service.context import Services
from service.logging import get_logger
from service.models import Channel
from service.queue import JobContext
from service.store import channels
from service.store.schema import utcnow

log = get_logger(__name__)

#: A first backfill (or one after a long outage) looks back this far at most.
MAX_LOOKBACK = timedelta(hours=24)
#: Each run overlaps the previous one by this much: items near the edge are not missed.
OVERLAP = timedelta(minutes=5)


async def backfill_channel(svc: Services, channel: Channel, since: datetime) -> int:
    """Record and queue what the provider lists since `since`; returns how many were new."""
    found = await svc.adapter(channel.provider).backfill(channel, since)
    new = 0
    for delivery in found:
        if delivery.conversation_id is not None:
            new += int(await ingest.accept_chat_delivery(svc, channel, delivery))
    if new:
        log.warning("backfill.caught_up", channel=channel.provider_channel_id, missed=new)
    return new


async def backfill(ctx: JobContext) -> int:
    """Every few minutes: backfill every active channel from where the last run left off."""
    svc: Services = ctx["services"]
    total = 0
    now = utcnow()
    for channel in await channels.list_active(svc.db, svc.crypto):
        mark = await svc.coordination.backfill_mark(channel.id)
        since = mark - OVERLAP if mark else now - MAX_LOOKBACK
        try:
            total += await backfill_channel(svc, channel, max(since, now - MAX_LOOKBACK))
        except Exception as error:  # noqa: BLE001 -- one broken channel must not stop the others
            log.error(
                "backfill.failed",
                channel=channel.provider_channel_id,
                error=str(error),
                error_type=type(error).__name__,
            )
            continue  # the mark stays: the next run looks back from the same point
        await svc.coordination.set_backfill_mark(channel.id, now)
    return total
