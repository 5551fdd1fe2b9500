"""The receive path shared by every webhook: record the delivery durably, then enqueue its job.

Order matters: the dedupe record is written first (so a redelivery is recognised), the job is
enqueued next, and the record is marked `enqueued` last. If the process dies in between, the
delivery stays `received`: a redelivery enqueues it again, and the sweeper job does the same for
one that is never redelivered. The job key is derived from the dedupe key, so the two paths can
never queue the work twice at once.
"""

from __future__ import annotations

from typing import Any

from service.context import Services
from service.store import deliveries
from service.store.deliveries import Source


def job_key(source: Source, dedupe_key: str) -> str:
    return f"in:{source}:{dedupe_key}"


async def accept(
    services: Services,
    *,
    source: Source,
    dedupe_key: str,
    job: str,
    payload: dict[str, Any],
    conversation_key: str | None = None,
) -> bool:
    """Record and enqueue one delivery; False when it was a duplicate already queued."""
    if not await deliveries.record(
        services.db,
        source=source,
        dedupe_key=dedupe_key,
        job=job,
        payload=payload,
        conversation_key=conversation_key,
    ):
        return False
    await services.queue.enqueue(job, payload, key=job_key(source, dedupe_key))
    await deliveries.mark_enqueued(services.db, source=source, dedupe_key=dedupe_key)
    return True


async def acknowledge_only(
    services: Services, *, source: Source, dedupe_key: str, payload: dict[str, Any]
) -> None:
    """Record a delivery there is nothing to do for (a group chat, a kind we do not relay), so
    that it is deduped and visible, without queueing work."""
    await deliveries.record(
        services.db,
        source=source,
        dedupe_key=dedupe_key,
        job="none",
        payload=payload,
        status="done",
    )
