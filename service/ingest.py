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
from service.models import Channel
from service.providers.base import Delivery
from service.store import deliveries
from service.store.deliveries import Source


def job_key(source: Source, dedupe_key: str) -> str:
    return f"in:{source}:{dedupe_key}"


def conversation_key(channel_id: int, conversation_id: str) -> str:
    """Deliveries are grouped per channel and conversation: a number that moves from one
    company's channel to another's never mixes their pending traffic."""
    return f"{channel_id}:{conversation_id}"


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


async def accept_chat_delivery(services: Services, channel: Channel, delivery: Delivery) -> bool:
    """Record a provider delivery and queue the relay of its conversation (webhook or backfill);
    one with no conversation is recorded as done. False for a duplicate."""
    if delivery.conversation_id is None:
        await acknowledge_only(
            services,
            source=channel.provider,
            dedupe_key=delivery.dedupe_key,
            payload=delivery.payload,
        )
        return False
    return await accept(
        services,
        source=channel.provider,
        dedupe_key=delivery.dedupe_key,
        job="relay_conversation",
        payload={
            "channel_id": channel.id,
            "company_channel": channel.provider_channel_id,
            "conversation_key": delivery.conversation_id,
            "raw": delivery.payload,
        },
        conversation_key=conversation_key(channel.id, delivery.conversation_id),
    )
