"""Relay a conversation's recorded provider deliveries to Pipedrive, in order."""

from __future__ import annotations

from typing import Any

from service import messaging
from service.context import Services
from service.logging import get_logger
from service.queue import JobContext
from service.store import channels

log = get_logger(__name__)


async def relay_conversation(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Drain the conversation named in the payload (any worker's job drains all of it)."""
    svc: Services = ctx["services"]
    channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
    if channel is None or channel.status != "active":
        log.info("relay.channel_gone", channel_id=payload["channel_id"])
        return 0
    return await messaging.relay_conversation(svc, channel, str(payload["conversation_key"]))


async def retry_delivery(ctx: JobContext, payload: dict[str, Any]) -> int:
    """Replay of a delivery that had been set aside (see `messaging.retry_delivery`)."""
    return await messaging.retry_delivery(ctx["services"], payload)
