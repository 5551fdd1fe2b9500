"""Periodic housekeeping."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from service import erasure, ingest, queue, retention, uninstall
from service.config import redact
from service.context import Services
from service.logging import get_logger
from service.queue import JobContext
from service.store import deliveries, messages
from service.store.schema import utcnow

log = get_logger(__name__)


async def prune_storage(ctx: JobContext) -> dict[str, Any]:
    """Hourly: prune what the retention settings no longer keep (service/retention.py), and
    queue again the unhook of uninstalled channels whose job did not get through."""
    svc: Services = ctx["services"]
    pruned = await retention.prune(svc.db, svc.media, retention.Policy.from_settings(svc.settings))
    unhooks = await uninstall.resume(svc)
    return {**pruned.as_log(), "unhooks_queued": unhooks}


async def erase_due_persons(ctx: JobContext) -> int:
    """Every minute: the person erasures whose grace has passed (service/erasure.py)."""
    return await erasure.erase_due_persons(ctx["services"])


#: Work recorded but not done for this long is queued again by the sweeper (a drain that is
#: still queued or running makes that a no-op, so a slow one is never doubled).
STUCK_AFTER = timedelta(minutes=1)


async def sweep_stuck_deliveries(ctx: JobContext) -> int:
    """Every minute: queue the work that a failed enqueue (Redis away), a crash, or a job that
    ran out of tries during an outage left behind: inbound deliveries and outgoing messages.
    Then roll the API cost ledger up into the database (its failure never stops the sweep)."""
    svc: Services = ctx["services"]
    queued = await sweep(svc, older_than=utcnow() - STUCK_AFTER)
    await roll_up_api_usage(svc)
    return queued


async def roll_up_api_usage(svc: Services) -> int:
    """Copy yesterday's and today's API spend from Redis into the database (idempotent); a
    failure is logged and left to the next minute's run."""
    try:
        written = await svc.pipedrive.ledger.roll_up(svc.db)
    except Exception as error:  # noqa: BLE001 -- bookkeeping must not fail the sweeper
        log.warning(
            "maintenance.api_usage_not_rolled_up", error=redact(f"{type(error).__name__}: {error}")
        )
        return 0
    log.debug("maintenance.api_usage_rolled_up", rows=written)
    return written


async def sweep(svc: Services, *, older_than: datetime) -> int:
    """Queue what was recorded before `older_than` and is not done (see above); a drain that
    is queued or running makes that a no-op for its conversation."""
    stuck = await deliveries.stuck(svc.db, older_than)
    groups: set[tuple[int, str]] = set()
    for row in stuck:
        spec = queue.DECLARED.get(row["job"])
        if spec is queue.RELAY_CONVERSATION:
            groups.add((int(row["payload"]["channel_id"]), str(row["payload"]["conversation_key"])))
        else:
            await svc.queue.enqueue(
                row["job"], row["payload"], key=ingest.job_key(row["source"], row["dedupe_key"])
            )
    for channel_id, conversation_key in sorted(groups):
        await svc.queue.schedule(
            queue.RELAY_CONVERSATION,
            {"channel_id": channel_id, "conversation_key": conversation_key},
        )
    by_source: dict[str, list[str]] = {}
    for row in stuck:
        by_source.setdefault(row["source"], []).append(row["dedupe_key"])
    for source, keys in by_source.items():
        await deliveries.touch(svc.db, source, keys)  # type: ignore[arg-type]
    outboxes = await messages.stuck_outboxes(svc.db, older_than)
    for channel_id, conversation_id in outboxes:
        await svc.queue.schedule(
            queue.SEND_CONVERSATION, {"channel_id": channel_id, "conversation_id": conversation_id}
        )
    if stuck or outboxes:
        log.warning("maintenance.stuck_work_queued", deliveries=len(stuck), outboxes=len(outboxes))
    return len(stuck) + len(outboxes)
