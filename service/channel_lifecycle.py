"""Adding and removing channels: stored here, registered at Pipedrive, hooked at the provider.

These run on an operator's request (admin API, CLI) and need Pipedrive's answer to report
back, so they call out inline, unlike the webhook paths. A step that fails undoes the earlier
ones: no channel exists half-registered.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from service import erasure, sinks
from service.context import Services
from service.logging import get_logger
from service.models import Channel
from service.pipedrive import channels as pipedrive_channels
from service.pipedrive.errors import Forbidden, PipedriveError
from service.providers import UnknownProvider
from service.providers.base import InvalidCredentials, ProviderAdapter, ProviderError
from service.store import channels, conversations, installations
from service.store.installations import Installation

log = get_logger(__name__)


@dataclass
class ChannelError(Exception):
    """A refused channel operation, with the HTTP status and code the admin API answers."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def webhook_url(services: Services, channel: Channel) -> str:
    return f"{services.settings.base_url}/webhooks/{channel.provider}/{channel.provider_channel_id}"


async def _installation(
    services: Services, company_id: int | None, user_id: int | None
) -> Installation:
    if company_id is not None and user_id is not None:
        inst = await installations.find(services.db, company_id, user_id)
        if inst is None:
            raise ChannelError(404, "NOT_FOUND", f"no installation for {company_id}:{user_id}")
    elif services.settings.single_company:
        try:
            inst = await services.pipedrive.single_company_installation()
        except PipedriveError as error:
            raise ChannelError(502, "PIPEDRIVE_UNAVAILABLE", str(error)) from None
    else:
        raise ChannelError(400, "INVALID_BODY", "company_id and user_id are required")
    if inst.status != "active":
        raise ChannelError(409, "INSTALLATION_INACTIVE", f"the installation is {inst.status}")
    return inst


async def add(
    services: Services,
    *,
    provider: str,
    name: str,
    credentials: dict[str, Any],
    company_id: int | None = None,
    user_id: int | None = None,
    sink: str | None = None,
    create_persons: bool | None = None,
) -> Channel:
    """Store the channel, register it with Pipedrive (not for the notes sink, which needs no
    registration; under `auto` a Channels API that is gone moves it to notes), then register our
    webhook at the provider."""
    if sink is not None and sink not in sinks.SINKS:
        raise ChannelError(400, "INVALID_BODY", f"sink must be one of {', '.join(sinks.SINKS)}")
    try:
        adapter = services.adapter(provider)
        checked = adapter.check_credentials(credentials)
    except (UnknownProvider, InvalidCredentials) as error:
        raise ChannelError(400, "INVALID_BODY", str(error)) from None
    inst = await _installation(services, company_id, user_id)
    try:
        account_id, account_name = await adapter.describe_account(checked)
    except InvalidCredentials as error:
        raise ChannelError(400, "INVALID_CREDENTIALS", str(error)) from None
    except ProviderError as error:
        raise ChannelError(502, "PROVIDER_UNAVAILABLE", str(error)) from None
    for existing in await channels.list_active(services.db, services.crypto):
        if existing.provider == provider and existing.account_id == account_id:
            raise ChannelError(
                409,
                "ALREADY_CONNECTED",
                f"this {provider} account is already channel {existing.provider_channel_id}",
            )
    channel = await channels.create(
        services.db,
        services.crypto,
        provider_channel_id=str(uuid.uuid4()),
        provider=provider,
        installation_id=inst.id,
        name=name,
        credentials=checked,
        webhook_secret=adapter.new_webhook_secret(),
        account_id=account_id,
        account_name=account_name,
        sink=sink,
        create_persons=create_persons,
    )
    if sinks.effective(services.settings, channel) == "channels":
        channel = await _register(services, inst, adapter, channel)
    try:
        await adapter.register_webhook(channel, webhook_url(services, channel))
    except ProviderError as error:
        if channel.pipedrive_channel_id:
            try:
                await pipedrive_channels.delete(services.pipedrive, inst, channel)
            except PipedriveError as cleanup:
                log.error(
                    "channel.cleanup_failed",
                    channel=channel.provider_channel_id,
                    error=str(cleanup),
                )
        await channels.remove(services.db, channel.id)
        raise ChannelError(502, "PROVIDER_WEBHOOK_FAILED", str(error)) from None
    found = await channels.get(services.db, services.crypto, channel.provider_channel_id)
    assert found is not None
    log.info(
        "channel.added",
        channel=found.provider_channel_id,
        provider=provider,
        account=account_id,
        sink=sinks.effective(services.settings, found),
    )
    return found


async def _register(
    services: Services, inst: Installation, adapter: ProviderAdapter, channel: Channel
) -> Channel:
    """Register the channel with Pipedrive's Channels API; returns it as stored afterwards."""
    try:
        registered = await pipedrive_channels.register(
            services.pipedrive,
            inst,
            channel,
            provider_type=adapter.pipedrive_provider_type,
            template_support=adapter.template_support,
        )
    except pipedrive_channels.ChannelRegistrationError as error:
        if sinks.follows_auto(services.settings, channel) and sinks.channels_api_gone(
            error.__cause__
        ):
            return await sinks.move_to_notes(services, channel, error)
        await channels.remove(services.db, channel.id)
        status = 403 if error.code == "ADMIN_ONLY" else 400
        raise ChannelError(status, error.code or "PIPEDRIVE_REFUSED", str(error)) from None
    except PipedriveError as error:
        if sinks.follows_auto(services.settings, channel) and sinks.channels_api_gone(error):
            return await sinks.move_to_notes(services, channel, error)
        await channels.remove(services.db, channel.id)
        raise ChannelError(502, "PIPEDRIVE_UNAVAILABLE", str(error)) from None
    await channels.set_pipedrive_id(services.db, channel.id, str(registered.get("id", "")))
    found = await channels.get_by_id(services.db, services.crypto, channel.id)
    return found or channel


async def set_sink(services: Services, channel: Channel, sink: str | None) -> Channel:
    """An operator moves a channel between sinks (None: follow PIPEDRIVE_SINK). Messages from
    now on go to the new sink; what was told before stays where it is."""
    if sink is not None and sink not in sinks.SINKS:
        raise ChannelError(400, "INVALID_BODY", f"sink must be one of {', '.join(sinks.SINKS)}")
    await channels.set_sink(services.db, channel.id, sink)
    found = await channels.get_by_id(services.db, services.crypto, channel.id)
    assert found is not None
    log.info(
        "channel.sink_set",
        channel=channel.provider_channel_id,
        sink_setting=sink,
        sink=sinks.effective(services.settings, found),
    )
    return found


async def remove(services: Services, channel: Channel, *, at_pipedrive: bool) -> None:
    """Remove at Pipedrive (unless Pipedrive asked us), at the provider, then locally."""
    if at_pipedrive:
        inst = await installations.get(services.db, channel.installation_id)
        if inst is not None and inst.status == "active" and channel.pipedrive_channel_id:
            await pipedrive_channels.delete(services.pipedrive, inst, channel)
    try:
        await services.adapter(channel.provider).remove_webhook(channel)
    except ProviderError as error:
        log.warning(
            "channel.webhook_not_removed", channel=channel.provider_channel_id, error=str(error)
        )
    await channels.mark_deleted(services.db, channel.id)
    log.info("channel.removed", channel=channel.provider_channel_id, at_pipedrive=at_pipedrive)


async def delete_conversation(services: Services, channel: Channel, conversation_id: str) -> None:
    """Delete one conversation in Pipedrive with the channel owner's token, then erase it here
    (messages, media, the webhook bodies it came from: service/erasure.py)."""
    conversation = await conversations.get(services.db, channel.id, conversation_id)
    if conversation is None:
        raise ChannelError(404, "NOT_FOUND", f"no conversation {conversation_id}")
    owner = await installations.get(services.db, channel.installation_id)
    assert owner is not None
    try:
        await pipedrive_channels.delete_conversation(
            services.pipedrive, owner, channel, conversation_id
        )
    except Forbidden as error:
        raise ChannelError(
            403,
            error.code or "FORBIDDEN_USER_REQUEST",
            "only the app owner can delete conversations",
        ) from None
    except PipedriveError as error:
        raise ChannelError(502, "PIPEDRIVE_UNAVAILABLE", str(error)) from None
    await erasure.erase_conversation(services, conversation.id)
