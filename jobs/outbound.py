"""Deliver agents' messages through the provider; unhook removed channels."""

from __future__ import annotations

from typing import Any

from service import outbox, queue
from service.context import Services
from service.logging import get_logger
from service.providers.base import ProviderError
from service.queue import JobContext
from service.store import channels

log = get_logger(__name__)


def _last_try(ctx: JobContext) -> bool:
    return int(ctx["job_try"]) >= queue.MAX_TRIES


async def send_conversation(ctx: JobContext, payload: queue.SendPayload) -> int:
    """Send the conversation's unsent messages in order; on the last try a transient failure
    is reported as failed."""
    svc: Services = ctx["services"]
    return await outbox.drain(svc, payload, str(ctx["job_id"]), last_try=_last_try(ctx))


async def deliver_outbound(ctx: JobContext, payload: dict[str, Any]) -> str:
    """An earlier version's per-message job, kept so its dead letters can be replayed."""
    svc: Services = ctx["services"]
    return await outbox.deliver_message(svc, int(payload["message_id"]), last_try=_last_try(ctx))


async def remove_provider_webhook(ctx: JobContext, payload: queue.ChannelPayload) -> bool:
    """After Pipedrive deleted a channel: stop the provider sending us its updates."""
    svc: Services = ctx["services"]
    channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
    if channel is None:
        return False
    try:
        await svc.adapter(channel.provider).remove_webhook(channel)
    except ProviderError as error:
        log.warning(
            "channel.webhook_not_removed", channel=channel.provider_channel_id, error=str(error)
        )
        raise
    return True
