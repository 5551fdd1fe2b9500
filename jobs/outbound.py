"""Deliver agents' messages through the provider; unhook removed channels."""

from __future__ import annotations

from typing import Any

from service import messaging
from service import queue as queue_module
from service.context import Services
from service.logging import get_logger
from service.providers.base import ProviderError
from service.queue import JobContext
from service.store import channels

log = get_logger(__name__)


async def deliver_outbound(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Send one pending message; on the last try a transient failure is reported as failed."""
    svc: Services = ctx["services"]
    last_try = int(ctx["job_try"]) >= queue_module.MAX_TRIES
    return await messaging.deliver_outbound(svc, int(payload["message_id"]), last_try=last_try)


async def remove_provider_webhook(ctx: JobContext, payload: dict[str, Any]) -> bool:
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
