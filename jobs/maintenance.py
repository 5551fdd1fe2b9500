"""Periodic housekeeping."""

from __future__ import annotations

from datetime import timedelta

from service import ingest
from service.logging import get_logger
from service.queue import JobContext
from service.store import dead_letters, deliveries
from service.store.schema import utcnow

log = get_logger(__name__)

#: Replayed dead letters are kept this long for the record, then removed.
REPLAYED_RETENTION = timedelta(days=30)


async def prune_dead_letters(ctx: JobContext) -> int:
    """Remove dead letters replayed more than 30 days ago; never-replayed ones are kept."""
    removed = await dead_letters.prune_replayed(ctx["db"], utcnow() - REPLAYED_RETENTION)
    log.info("maintenance.dead_letters_pruned", removed=removed)
    return removed


#: A delivery recorded but not enqueued for this long is enqueued again by the sweeper; one
#: enqueued but not done for QUEUED_TOO_LONG too (the job key keeps a live job from doubling).
STUCK_AFTER = timedelta(minutes=1)
QUEUED_TOO_LONG = timedelta(minutes=30)


async def sweep_stuck_deliveries(ctx: JobContext) -> int:
    """Enqueue deliveries whose process died between recording and enqueueing them."""
    svc = ctx["services"]
    now = utcnow()
    stuck = await deliveries.stuck(svc.db, now - STUCK_AFTER, now - QUEUED_TOO_LONG)
    for row in stuck:
        await svc.queue.enqueue(
            row["job"], row["payload"], key=ingest.job_key(row["source"], row["dedupe_key"])
        )
        await deliveries.mark_requeued(svc.db, source=row["source"], dedupe_key=row["dedupe_key"])
    if stuck:
        log.warning("maintenance.stuck_deliveries_enqueued", count=len(stuck))
    return len(stuck)
