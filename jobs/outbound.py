"""Deliver agents' messages through the provider; unhook removed channels."""

from __future__ import annotations

from typing import Any

from service import outbox, queue, uninstall
from service.context import Services
from service.queue import JobContext
from service.store import channels


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
    """After Pipedrive deleted a channel, or the app was uninstalled: stop the provider sending
    us its updates, then delete the channel's credentials (see `service.uninstall.unhook`)."""
    svc: Services = ctx["services"]
    channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
    if channel is None:
        return False
    return await uninstall.unhook(svc, channel)
