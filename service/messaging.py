"""The bridge's core: chat messages in and out, in order, with statuses that only move forward.

Inbound: a conversation's recorded deliveries are relayed by one worker at a time (a Redis lock
per conversation) in the order they arrived, so several workers never reorder a chat. For each
message the conversation and its participants are stored first (Pipedrive may call
getConversationById as soon as `receive` names it), the media is re-hosted, and then `receive`
is called. A message that reached Pipedrive once is never sent again.

Outbound: postMessage stores a `pending` message and queues its delivery; the worker sends it
through the provider, then reports `sent` (or `failed`) with the same id through `receive`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, cast

from service import redis_keys
from service.context import Services
from service.errors import is_transient
from service.ingest import conversation_key as ingest_key
from service.logging import get_logger
from service.media import MAX_MEDIA_BYTES, media_url, new_media_key
from service.models import Channel, Conversation, Message, Participant, StoredAttachment
from service.pipedrive import channels as pipedrive_channels
from service.providers.base import (
    InboundMessage,
    OutgoingFile,
    ProviderPermanent,
    ProviderTransient,
    StatusEvent,
)
from service.store import (
    channels,
    conversations,
    dead_letters,
    deliveries,
    installations,
    messages,
)
from service.store.installations import Installation

log = get_logger(__name__)

CONVERSATION_LOCK_SECONDS = 300.0
TEMPLATES_TTL_SECONDS = 600
#: How long a status for a message we do not know yet is kept for its sender to find.
EARLY_STATUS_SECONDS = 600


def source_user(channel: Channel) -> Participant:
    return Participant(channel.source_user_id, channel.account_name or channel.name, "source_user")


def attachment_json(services: Services, attachment: StoredAttachment) -> dict[str, Any]:
    """An attachment as Pipedrive gets it: a signed link of ours, fresh on every call."""
    return {
        "id": attachment.id,
        "type": attachment.mime_type,
        "name": attachment.name,
        "size": attachment.size,
        "url": media_url(
            services.settings.base_url,
            services.crypto,
            attachment.key,
            attachment.mime_type,
            attachment.name,
        ),
        "preview_url": None,
        "link_expires": True,
    }


def receive_payload(
    services: Services, channel: Channel, conversation: Conversation, message: Message
) -> dict[str, Any]:
    """The `receive` body (ChannelsReceiveMessageRequest) for a message at its current status."""
    payload: dict[str, Any] = {
        "id": message.external_id,
        "channel_id": channel.provider_channel_id,
        "sender_id": message.sender_id,
        "conversation_id": conversation.external_id,
        "message": message.text,
        "status": "sent" if message.status == "pending" else message.status,
        "created_at": pipedrive_channels.receive_time(message.created_at),
        "attachments": [attachment_json(services, a) for a in message.attachments],
    }
    if conversation.link:
        payload["conversation_link"] = conversation.link
    reply_by = reply_deadline(services, channel, conversation)
    if reply_by is not None:
        payload["reply_by"] = pipedrive_channels.receive_time(reply_by)
    return payload


def reply_deadline(
    services: Services, channel: Channel, conversation: Conversation
) -> datetime | None:
    """The customer's last message plus the provider's reply window (WhatsApp: 24 h)."""
    window = services.adapter(channel.provider).reply_window_for(channel)
    if window is None or conversation.last_inbound_at is None:
        return None
    return conversation.last_inbound_at + window


async def templates(services: Services, channel: Channel) -> list[dict[str, str]]:
    """The channel's approved templates, cached for a few minutes (Pipedrive asks often)."""
    key = f"{redis_keys.TEMPLATES}{channel.id}"
    cached = await services.queue.redis.get(key)
    if cached is not None:
        found: list[dict[str, str]] = json.loads(cached)
        return found
    fresh = await services.adapter(channel.provider).list_templates(channel)
    await services.queue.redis.set(key, json.dumps(fresh), ex=TEMPLATES_TTL_SECONDS)
    return fresh


async def _installation(services: Services, channel: Channel) -> Installation:
    inst = await installations.get(services.db, channel.installation_id)
    assert inst is not None  # a channel's installation row outlives it (foreign key)
    return inst


async def push(services: Services, channel: Channel, message: Message) -> None:
    """Tell Pipedrive about the message at its stored status (idempotent: an upsert by id)."""
    conversation = await conversations.get_by_pk(services.db, message.conversation_id)
    assert conversation is not None
    await pipedrive_channels.receive(
        services.pipedrive,
        await _installation(services, channel),
        receive_payload(services, channel, conversation, message),
    )
    await messages.mark_pushed(services.db, message.id, message.status)
    log.info(
        "message.pushed",
        channel=channel.provider_channel_id,
        message_id=message.external_id,
        status=message.status,
        direction=message.direction,
    )


async def relay_conversation(services: Services, channel: Channel, conversation_key: str) -> int:
    """Relay every pending delivery of one conversation, oldest first; returns how many."""
    lock = services.queue.redis.lock(
        f"{redis_keys.CONVERSATION_LOCK}{channel.id}:{conversation_key}",
        timeout=CONVERSATION_LOCK_SECONDS,
        blocking_timeout=CONVERSATION_LOCK_SECONDS,
    )
    adapter = services.adapter(channel.provider)
    relayed = 0
    async with lock:
        source = channel.provider
        pending = await deliveries.pending_for_conversation(
            services.db, source, ingest_key(channel.id, conversation_key)
        )
        for row in pending:
            raw = row["payload"].get("raw", row["payload"])
            try:
                for event in adapter.parse(channel, raw):
                    if isinstance(event, InboundMessage):
                        await relay_inbound(services, channel, event)
                    elif isinstance(event, StatusEvent):
                        await apply_status(services, channel, event)
            except Exception as error:
                if is_transient(error):
                    raise  # the job retries; later deliveries wait, so the order holds
                # This delivery will fail however often it is tried: set it aside as a dead
                # letter (replayable) instead of blocking the rest of the conversation.
                await _set_aside(services, channel, row, conversation_key, error)
                continue
            await deliveries.set_status(
                services.db, source=source, dedupe_key=row["dedupe_key"], status="done"
            )
            relayed += 1
    return relayed


async def _set_aside(
    services: Services,
    channel: Channel,
    row: dict[str, Any],
    conversation_key: str,
    error: Exception,
) -> None:
    await deliveries.set_status(
        services.db, source=channel.provider, dedupe_key=row["dedupe_key"], status="failed"
    )
    letter = await dead_letters.record(
        services.db,
        kind="retry_delivery",
        job_id=None,
        payload={
            "channel_id": channel.id,
            "source": channel.provider,
            "dedupe_key": row["dedupe_key"],
            "conversation_key": conversation_key,
        },
        error=f"{type(error).__name__}: {error}",
        tries=1,
        channel=channel.provider_channel_id,
    )
    log.error(
        "relay.delivery_failed",
        channel=channel.provider_channel_id,
        dedupe_key=row["dedupe_key"],
        dead_letter_id=letter,
        error=str(error),
        error_type=type(error).__name__,
    )


async def retry_delivery(services: Services, payload: dict[str, Any]) -> int:
    """A dead-lettered delivery is replayed: put it back in line and relay its conversation."""
    channel = await channels.get_by_id(services.db, services.crypto, int(payload["channel_id"]))
    if channel is None:
        return 0
    await deliveries.set_status(
        services.db, source=payload["source"], dedupe_key=payload["dedupe_key"], status="enqueued"
    )
    return await relay_conversation(services, channel, str(payload["conversation_key"]))


async def relay_inbound(services: Services, channel: Channel, event: InboundMessage) -> Message:
    """Store the conversation, participants, message and media, then `receive` it (once)."""
    conversation = await conversations.upsert(
        services.db,
        channel_id=channel.id,
        external_id=event.conversation_id,
        address=event.address,
        link=event.link,
        people=[source_user(channel), event.sender],
        activity_at=event.created_at,
        inbound=True,
    )
    message, created = await messages.insert(
        services.db,
        channel_id=channel.id,
        conversation_id=conversation.id,
        external_id=event.message_id,
        provider_message_id=event.provider_message_id,
        direction="in",
        sender_id=event.sender.external_id,
        text=event.text,
        attachments=(),
        status="sent",
        created_at=event.created_at,
    )
    if not created and message.pushed_status is not None:
        log.info(
            "message.duplicate", channel=channel.provider_channel_id, message_id=message.external_id
        )
        return message
    if event.media and not message.attachments:
        stored, missing = await _rehost(services, channel, event, message.external_id)
        await messages.set_attachments(services.db, message.id, stored)
        if missing:
            note = "\n".join(f"[attachment not available: {m}]" for m in missing)
            await messages.set_text(services.db, message.id, f"{event.text}\n{note}".strip())
        refreshed = await messages.get_by_pk(services.db, message.id)
        assert refreshed is not None
        message = refreshed
    await push(services, channel, message)
    return message


async def _rehost(
    services: Services, channel: Channel, event: InboundMessage, message_id: str
) -> tuple[list[StoredAttachment], list[str]]:
    """Download each file and store it with us; a file the provider will not give (too large,
    expired) is named in the text instead of holding the message back."""
    adapter = services.adapter(channel.provider)
    stored: list[StoredAttachment] = []
    missing: list[str] = []
    for index, ref in enumerate(event.media):
        try:
            data = await adapter.fetch_media(channel, ref)
        except ProviderPermanent as error:
            log.warning("media.unavailable", name=ref.name, reason=str(error))
            missing.append(ref.name)
            continue
        if len(data) > MAX_MEDIA_BYTES:
            missing.append(ref.name)
            continue
        key = new_media_key(ref.mime_type)
        await services.media.put(key, data)
        stored.append(
            StoredAttachment(
                id=f"{message_id}:a{index}",
                key=key,
                mime_type=ref.mime_type,
                name=ref.name,
                size=len(data),
            )
        )
    return stored, missing


async def apply_status(services: Services, channel: Channel, event: StatusEvent) -> bool:
    """A provider status for one of our messages: stored and pushed only if it moves forward."""
    message = await messages.find_by_provider_id(services.db, channel.id, event.provider_message_id)
    if message is None:
        # The provider can report on a message before our send call has stored its id (or the
        # message was sent outside the bridge): keep the status a while for the sender to find.
        key = f"{redis_keys.EARLY_STATUS}{channel.id}:{event.provider_message_id}"
        await cast(
            "Awaitable[int]",
            services.queue.redis.rpush(key, json.dumps([event.status, event.error])),
        )
        await services.queue.redis.expire(key, EARLY_STATUS_SECONDS)
        log.info("status.early", provider_message_id=event.provider_message_id, status=event.status)
        return False
    return await advance(services, channel, message, event.status, error=event.error)


async def _apply_early_statuses(
    services: Services, channel: Channel, message: Message, provider_message_id: str
) -> None:
    """Statuses that arrived before the send call returned, applied now (forward-only)."""
    key = f"{redis_keys.EARLY_STATUS}{channel.id}:{provider_message_id}"
    early = await cast("Awaitable[list[bytes]]", services.queue.redis.lrange(key, 0, -1))
    if not early:
        return
    await services.queue.redis.delete(key)
    for raw in early:
        status, error = json.loads(raw)
        current = await messages.get_by_pk(services.db, message.id)
        assert current is not None
        await advance(services, channel, current, str(status), error=error)


async def advance(
    services: Services,
    channel: Channel,
    message: Message,
    status: str,
    *,
    error: str | None = None,
    provider_message_id: str | None = None,
) -> bool:
    """Move a message's status forward and tell Pipedrive; regressions and repeats are dropped.
    A status stored earlier but not yet told (its push failed) is told now."""
    moved = await messages.advance_status(
        services.db, message.id, status, error=error, provider_message_id=provider_message_id
    )
    updated = await messages.get_by_pk(services.db, message.id)
    assert updated is not None
    if not moved:
        log.info(
            "status.ignored", message_id=message.external_id, current=updated.status, new=status
        )
    if updated.pushed_status != updated.status and updated.status not in ("pending", "sending"):
        await push(services, channel, updated)
    return moved


async def deliver_outbound(services: Services, message_id: int, *, last_try: bool) -> str:
    """Send the conversation's pending outgoing messages up to this one, in order, each once.

    A message is claimed (`pending` → `sending`) before the provider is called. If the call
    fails in a way that may have delivered it anyway (a timeout after sending, a 5xx), it is
    reported `failed` rather than sent again: a duplicate in the customer's chat is worse than
    a visible failure the agent can resend (chat-providers.md §1.6)."""
    message = await messages.get_by_pk(services.db, message_id)
    if message is None:
        return "skipped"
    channel = await channels.get_by_id(services.db, services.crypto, message.channel_id)
    assert channel is not None
    if message.status not in ("pending", "sending"):
        await advance(services, channel, message, message.status)  # re-tell a lost push
        return "skipped"
    lock = services.queue.redis.lock(
        f"{redis_keys.CONVERSATION_LOCK}{channel.id}:out:{message.conversation_id}",
        timeout=CONVERSATION_LOCK_SECONDS,
        blocking_timeout=CONVERSATION_LOCK_SECONDS,
    )
    result = "skipped"
    async with lock:
        current = await messages.get_by_pk(services.db, message.id)
        if current is not None and current.status == "sending":
            # Under the lock nobody else is sending: a worker died mid-send. It may have gone out.
            reason = "delivery interrupted; resend if it did not arrive"
            await advance(services, channel, current, "failed", error=reason)
            return "failed"
        for queued in await messages.pending_outbound(
            services.db, message.conversation_id, message.id
        ):
            outcome = await _send_one(services, channel, queued, last_try=last_try)
            if queued.id == message.id:
                result = outcome
    return result


async def _send_one(
    services: Services, channel: Channel, message: Message, *, last_try: bool
) -> str:
    conversation = await conversations.get_by_pk(services.db, message.conversation_id)
    assert conversation is not None
    files = [  # read before the claim: a failure here has certainly sent nothing
        OutgoingFile(
            a.name,
            a.mime_type,
            await services.media.get(a.key),
            url=attachment_json(services, a)["url"],
        )
        for a in message.attachments
    ]
    if not await messages.move(services.db, message.id, "pending", "sending"):
        return "skipped"  # another worker has it
    if channel.status != "active":
        await advance(services, channel, message, "failed", error="the channel was removed")
        return "failed"
    try:
        provider_id = await services.adapter(channel.provider).send(
            channel, conversation.address, message.text, files
        )
    except ProviderPermanent as error:
        log.warning("outbound.failed", message_id=message.external_id, reason=str(error))
        await advance(services, channel, message, "failed", error=str(error))
        return "failed"
    except ProviderTransient as error:
        if error.maybe_delivered or last_try:
            reason = (
                f"delivery not confirmed by the provider ({error}); resend if it did not arrive"
                if error.maybe_delivered
                else str(error)
            )
            log.warning("outbound.failed", message_id=message.external_id, reason=reason)
            await advance(services, channel, message, "failed", error=reason)
            return "failed"
        await messages.move(services.db, message.id, "sending", "pending")  # certainly unsent
        raise
    # Anything else (a bug, a cancelled job) leaves the message `sending`: the next try finds it
    # under the conversation lock and reports it failed rather than risk sending it twice.
    await conversations.touch(services.db, conversation.id, message.created_at)
    await advance(services, channel, message, "sent", provider_message_id=provider_id)
    await _apply_early_statuses(services, channel, message, provider_id)
    return "sent"
