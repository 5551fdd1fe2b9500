"""Put dead letters back on the queue (admin API and `pdbridge dead-letters replay`)."""

from __future__ import annotations

from service.logging import get_logger
from service.queue import Queue
from service.store import Database, dead_letters

log = get_logger(__name__)


class UnknownDeadLetter(LookupError):
    """No dead letter has that id."""


async def replay_one(db: Database, queue: Queue, dead_letter_id: int) -> None:
    """Enqueue the dead letter's job again with its payload, under a fresh job key."""
    found = await dead_letters.get(db, dead_letter_id)
    if found is None:
        raise UnknownDeadLetter(dead_letter_id)
    key = f"replay:{found.id}:{found.replay_count + 1}"
    await queue.enqueue(found.kind, found.payload, key=key)
    await dead_letters.mark_replayed(db, found.id)
    log.info("dead_letter.replayed", dead_letter_id=found.id, kind=found.kind, job_key=key)


async def replay_pending(db: Database, queue: Queue) -> list[int]:
    """Replay every dead letter not replayed yet; returns their ids."""
    replayed = []
    for found in await dead_letters.list_all(db, limit=10_000, pending_only=True):
        await replay_one(db, queue, found.id)
        replayed.append(found.id)
    return replayed
