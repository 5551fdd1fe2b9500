"""Relay a conversation's recorded provider deliveries to Pipedrive, in order."""

from __future__ import annotations

from typing import Any

from service import queue, relay
from service.context import Services
from service.queue import JobContext


async def relay_conversation(ctx: JobContext, payload: queue.RelayPayload) -> int:
    """Drain the conversation named in the payload (one drain per conversation at a time)."""
    svc: Services = ctx["services"]
    return await relay.drain(svc, payload, str(ctx["job_id"]))


async def retry_delivery(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Replay of a delivery that had been set aside (see `relay.retry_delivery`)."""
    return await relay.retry_delivery(ctx["services"], payload)
