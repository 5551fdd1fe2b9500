"""The receive path shared by every webhook: record the deliveries durably, then queue the work.

Order matters: a body's deliveries are written in one transaction first (so a redelivery is
recognised), and only then is the work queued. Once the record is committed the sender gets its
2xx whatever Redis does: if queueing fails (Redis restarting), the delivery stays `received` and
the sweeper queues it once Redis is back. A sender that got a 2xx never needs to retry; one that
got an error (the database was away) was told to, and nothing was half-written.

Chat deliveries are queued per conversation (`queue.RELAY_CONVERSATION`, coalesced); Pipedrive
events one job each, keyed by their dedupe key so the two paths never queue them twice at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from service import queue
from service.context import Services
from service.logging import get_logger
from service.models import Channel
from service.providers.base import Delivery
from service.store import deliveries
from service.store.deliveries import NewDelivery, Source

log = get_logger(__name__)


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
    job: queue.JobSpec,
    payload: dict[str, Any],
) -> bool:
    """Record one delivery and queue its job; False when it was a duplicate already handled.
    Raises only when it could not be recorded."""
    [found] = await deliveries.record_many(
        services.db, source, [NewDelivery(dedupe_key, job.name, payload)]
    )
    if found != "done":
        await _queue_or_leave_for_sweeper(
            services, lambda: services.queue.enqueue(job, payload, key=job_key(source, dedupe_key))
        )
    return found == "new"


async def accept_chat_deliveries(
    services: Services, found: Sequence[tuple[Channel, Delivery]]
) -> list[bool]:
    """Record a provider body's deliveries (for one or several channels) in one transaction,
    then queue a relay of each conversation with work to do; True for each new delivery. One with
    no conversation (a group chat, a kind we do not relay) is recorded as done: deduped and
    visible, with no work queued."""
    by_source: dict[str, list[tuple[int, Channel, Delivery]]] = {}
    for index, (channel, delivery) in enumerate(found):
        by_source.setdefault(channel.provider, []).append((index, channel, delivery))
    fresh = [False] * len(found)
    groups: dict[tuple[int, str], queue.RelayPayload] = {}
    for source, items in by_source.items():
        recorded = await deliveries.record_many(
            services.db,
            source,  # type: ignore[arg-type]
            [
                NewDelivery(
                    dedupe_key=d.dedupe_key,
                    job=queue.RELAY_CONVERSATION.name,
                    payload=_relay_payload(c, d),
                    conversation_key=(
                        conversation_key(c.id, d.conversation_id) if d.conversation_id else None
                    ),
                    status="received" if d.conversation_id is not None else "done",
                )
                for _, c, d in items
            ],
        )
        for (index, channel, delivery), state in zip(items, recorded, strict=True):
            if delivery.conversation_id is None:
                continue
            fresh[index] = state == "new"
            if state != "done":
                groups[(channel.id, delivery.conversation_id)] = {
                    "channel_id": channel.id,
                    "conversation_key": delivery.conversation_id,
                }
    for payload in groups.values():
        await _queue_or_leave_for_sweeper(
            services, lambda p=payload: services.queue.schedule(queue.RELAY_CONVERSATION, p)
        )
    return fresh


async def accept_chat_delivery(services: Services, channel: Channel, delivery: Delivery) -> bool:
    """One delivery (backfill); False for a duplicate or one with nothing to relay."""
    [fresh] = await accept_chat_deliveries(services, [(channel, delivery)])
    return fresh


def _relay_payload(channel: Channel, delivery: Delivery) -> dict[str, Any]:
    return {
        "channel_id": channel.id,
        "company_channel": channel.provider_channel_id,
        "conversation_key": delivery.conversation_id,
        "raw": delivery.payload,
    }


async def _queue_or_leave_for_sweeper(services: Services, enqueue: Any) -> None:
    try:
        await enqueue()
    except (RedisError, OSError) as error:
        services.metrics.queue_unavailable()
        log.warning(
            "ingest.not_queued",
            error=str(error),
            action="recorded; the sweeper queues it once Redis answers",
        )
