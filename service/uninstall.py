"""Uninstall: what happens once Pipedrive's notice names an installation of a company.

The notice names a user: that user's installation stops, or, when that admin never installed
(another admin removed the app for the company), every installation of the company. Each one
is marked `uninstalled` and its Pipedrive tokens are deleted; its active channels become
`uninstalled` with their waiting work (deliveries not yet relayed are dropped, replies not yet
sent fail), so jobs already queued find nothing to do; and a queued job per channel takes our
webhook down at the provider (Telegram `deleteWebhook`, retried like any job), then deletes the
channel's provider credentials. Until the provider stops, its traffic for such a channel is
answered 2xx and dropped (handlers/provider_webhooks.py). Every step is idempotent: a repeated
notice, or the maintenance job after a lost enqueue, redoes only what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

from service import queue
from service.context import Services
from service.logging import get_logger
from service.models import Channel
from service.pipedrive import subscriptions
from service.providers.base import ProviderPermanent
from service.store import channels, installations

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Uninstalled:
    installations: int
    channels: int


async def uninstall_company(svc: Services, company_id: int) -> Uninstalled:
    """Stop everything of the company (see the module docstring)."""
    found = await installations.list_for_company(svc.db, company_id)
    return await uninstall_installations(svc, company_id, found)


async def uninstall_installations(
    svc: Services, company_id: int, found: list[installations.Installation]
) -> Uninstalled:
    """Stop these installations of the company and their channels (what a notice names:
    `installations.find_for_uninstall`; a colleague's own installation stays)."""
    ids = [inst.id for inst in found]
    changed = await installations.uninstall(svc.db, ids, "uninstalled in Pipedrive")
    for inst in found:
        await subscriptions.forget(svc, inst)  # Pipedrive deletes the app's webhooks itself
    deactivated = await channels.deactivate_for_installations(svc.db, ids)
    for channel_id, public_id in deactivated:
        await queue_unhook(svc, channel_id, public_id)
    log.info(
        "uninstall.done",
        company_id=company_id,
        installations=len(ids),
        newly_uninstalled=changed,
        channels=[public_id for _, public_id in deactivated],
    )
    return Uninstalled(len(ids), len(deactivated))


async def queue_unhook(svc: Services, channel_id: int, public_id: str) -> None:
    await svc.queue.enqueue(
        queue.REMOVE_PROVIDER_WEBHOOK, {"channel_id": channel_id, "channel": public_id}
    )


async def unhook(svc: Services, channel: Channel) -> bool:
    """Take our webhook down at the provider, then delete the credentials of a channel that is
    no longer active; False when there was nothing left to do. A transient failure raises (the
    job retries); a permanent one (the bot token was revoked meanwhile) means the provider will
    not call with it again, so the credentials go all the same."""
    if channel.status != "active" and not channel.credentials:
        return False
    try:
        await svc.adapter(channel.provider).remove_webhook(channel)
    except ProviderPermanent as error:
        log.warning(
            "channel.webhook_not_removed", channel=channel.provider_channel_id, error=str(error)
        )
    if channel.status != "active":
        await channels.forget_credentials(svc.db, channel.id)
    log.info("channel.unhooked", channel=channel.provider_channel_id, status=channel.status)
    return True


async def resume(svc: Services) -> int:
    """Queue the unhook again for uninstalled channels still holding credentials (an enqueue
    lost to a Redis outage, or a job that ran out of tries); returns how many."""
    pending = await channels.still_hooked(svc.db, svc.crypto)
    for channel in pending:
        await queue_unhook(svc, channel.id, channel.provider_channel_id)
    return len(pending)
