"""The `channels` sink: a message told to Pipedrive's Messaging inbox through `receive`."""

from __future__ import annotations

from service.context import Services
from service.errors import PermanentError
from service.models import Channel, Conversation, Message
from service.pipedrive import channels as pipedrive_channels
from service.pipedrive import shapes
from service.store import installations
from service.store.installations import Installation


class ChannelInstallationMissing(PermanentError):
    """A channel whose installation row is gone (it cascades, so only mid-uninstall)."""


async def installation_of(svc: Services, channel: Channel) -> Installation:
    inst = await installations.get(svc.db, channel.installation_id)
    if inst is None:
        raise ChannelInstallationMissing(
            f"channel {channel.provider_channel_id} has no installation"
        )
    return inst


async def push(
    svc: Services, channel: Channel, conversation: Conversation, message: Message
) -> None:
    """`receive` the message at its stored status (an upsert by our id: idempotent)."""
    await pipedrive_channels.receive(
        svc.pipedrive,
        await installation_of(svc, channel),
        shapes.receive_body(svc, channel, conversation, message),
    )
