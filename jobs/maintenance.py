"""Periodic housekeeping."""

from __future__ import annotations

from datetime import timedelta

from service.logging import get_logger
from service.queue import JobContext
from service.store import dead_letters
from service.store.schema import utcnow

log = get_logger(__name__)

#: Replayed dead letters are kept this long for the record, then removed.
REPLAYED_RETENTION = timedelta(days=30)


async def prune_dead_letters(ctx: JobContext) -> int:
    """Remove dead letters replayed more than 30 days ago; never-replayed ones are kept."""
    removed = await dead_letters.prune_replayed(ctx["db"], utcnow() - REPLAYED_RETENTION)
    log.info("maintenance.dead_letters_pruned", removed=removed)
    return removed
