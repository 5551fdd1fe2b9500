"""Inbound: a conversation's recorded provider deliveries relayed to Pipedrive, in order, once.

One drain job per conversation (`queue.RELAY_CONVERSATION`, coalesced) takes the conversation's
pending deliveries oldest first, in batches. For a batch it:

1. parses each delivery into events (a delivery that can never be read is set aside as a
   replayable dead letter instead of blocking the chat);
2. stores the conversation, its participants and the new messages before telling anyone
   (Pipedrive may call getConversationById as soon as `receive` names it): a few statements,
   each idempotent and committed on its own, so a crash between them is repaired by the retry;
3. re-hosts media, then calls `receive` for each message in order (an upsert keyed by our id, so
   telling Pipedrive twice after a crash is harmless) and applies provider statuses;
4. marks the deliveries done and the messages told (two statements; either order is safe).

A transient failure (Pipedrive down, a 429 storm) raises: the job retries later from the same
delivery, and nothing behind it overtakes it. A message that reached Pipedrive once is never sent
again: a redelivery finds it stored and told.
"""

from __future__ import annotations

import time
from typing import Any

from service import queue, sinks
from service.context import Services
from service.errors import is_transient
from service.ingest import conversation_key as ingest_key
from service.logging import get_logger
from service.media import MAX_MEDIA_BYTES, new_media_key
from service.models import Channel, Conversation, Message, Participant, StoredAttachment
from service.providers.base import Event, InboundMessage, ProviderPermanent, StatusEvent
from service.store import (
    channels,
    conversations,
    dead_letters,
    deliveries,
    erasures,
    messages,
)

log = get_logger(__name__)

#: Deliveries read and relayed per batch (one round of writes before the calls, one after).
BATCH = 100
#: A drain hands the rest of a long backlog to a fresh job after this long, so one busy chat
#: cannot hold a worker slot past the job timeout, and others get their turn.
DRAIN_SECONDS = 20.0


def source_user(channel: Channel) -> Participant:
    return Participant(channel.source_user_id, channel.account_name or channel.name, "source_user")


async def push(
    svc: Services, channel: Channel, conversation: Conversation, message: Message
) -> None:
    """Tell Pipedrive about the message at its stored status, through the channel's sink
    (service.sinks: the Channels API or notes); idempotent either way."""
    sink = await sinks.push(svc, channel, conversation, message)
    log.info(
        "message.pushed",
        channel=channel.provider_channel_id,
        message_id=message.external_id,
        status=message.status,
        direction=message.direction,
        sink=sink,
    )


async def drain(svc: Services, payload: queue.RelayPayload, job_id: str) -> int:
    """The drain job: relay the conversation until it is empty; returns how many deliveries."""
    channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
    if channel is None or channel.status != "active":
        group = ingest_key(int(payload["channel_id"]), str(payload["conversation_key"]))
        dropped = await deliveries.drop_pending(svc.db, group)
        log.info("relay.channel_gone", channel_id=payload["channel_id"], dropped=dropped)
        await svc.queue.finish(queue.RELAY_CONVERSATION, payload, job_id)
        return 0
    started = time.monotonic()
    relayed = 0
    await svc.queue.begin(queue.RELAY_CONVERSATION, payload)
    while True:
        relayed += await relay_conversation(svc, channel, str(payload["conversation_key"]))
        if time.monotonic() - started > DRAIN_SECONDS:
            await svc.queue.schedule(queue.RELAY_CONVERSATION, payload, force=True)
            log.info("relay.handed_over", relayed=relayed)
            return relayed
        if not await svc.queue.finish(queue.RELAY_CONVERSATION, payload, job_id):
            return relayed


async def relay_conversation(svc: Services, channel: Channel, conversation_key: str) -> int:
    """Relay every pending delivery of one conversation, oldest first; returns how many."""
    group = ingest_key(channel.id, conversation_key)
    relayed = 0
    while True:
        rows = await deliveries.pending_for_conversation(
            svc.db, channel.provider, group, limit=BATCH
        )
        if not rows:
            return relayed
        relayed += await _relay_batch(svc, channel, conversation_key, rows)
        if len(rows) < BATCH:
            return relayed


async def _relay_batch(
    svc: Services, channel: Channel, conversation_key: str, rows: list[dict[str, Any]]
) -> int:
    """Store the batch's messages, then relay its deliveries in order."""
    adapter = svc.adapter(channel.provider)
    parsed: list[tuple[dict[str, Any], list[Event]]] = []
    for row in rows:
        raw = row["payload"].get("raw", row["payload"])
        try:
            parsed.append((row, adapter.parse(channel, raw)))
        except Exception as error:  # noqa: BLE001 -- any unreadable delivery is set aside
            await _set_aside(svc, channel, row, conversation_key, error)
    inbound = [e for _, events in parsed for e in events if isinstance(e, InboundMessage)]
    erased = await erasures.erased_among(svc.db, channel.id, [e.message_id for e in inbound])
    if erased:  # erased history stays erased, whatever key a late copy comes under
        parsed = [(row, [e for e in events if not _erased(e, erased)]) for row, events in parsed]
        inbound = [e for e in inbound if e.message_id not in erased]
        log.info("relay.erased_dropped", channel=channel.provider_channel_id, messages=len(erased))
    stored = await _store_messages(svc, channel, inbound) if inbound else {}
    done: list[int] = []
    pushed: list[tuple[int, str]] = []
    told_now: set[str] = set()
    relayed = 0
    for row, events in parsed:
        try:
            for event in events:
                if isinstance(event, InboundMessage):
                    conversation, message, new = stored[event.message_id]
                    if event.message_id in told_now:
                        continue  # the same message twice in one batch: told once
                    told = await _relay_message(svc, channel, conversation, event, message, new)
                    told_now.add(event.message_id)
                    if told is not None:
                        pushed.append((told.id, told.status))
                elif isinstance(event, StatusEvent):
                    await apply_status(svc, channel, event)
        except Exception as error:
            await deliveries.mark_relayed(svc.db, done, pushed)
            relayed += len(done)
            done, pushed = [], []
            if is_transient(error):
                raise  # the job retries from this delivery; later ones wait, so the order holds
            # This delivery will fail however often it is tried: set it aside as a dead letter
            # (replayable) instead of blocking the rest of the conversation.
            await _set_aside(svc, channel, row, conversation_key, error)
            continue
        done.append(row["id"])
    await deliveries.mark_relayed(svc.db, done, pushed)
    return relayed + len(done)


def _erased(event: Event, erased: set[str]) -> bool:
    return isinstance(event, InboundMessage) and event.message_id in erased


async def _store_messages(
    svc: Services, channel: Channel, inbound: list[InboundMessage]
) -> dict[str, tuple[Conversation, Message, bool]]:
    """The conversation, its participants and the batch's messages, stored before any is told
    to Pipedrive (which may ask for the conversation at once). By message id: the conversation,
    the stored message, and whether it is new."""
    last = inbound[-1]
    conversation = await conversations.upsert(
        svc.db,
        channel_id=channel.id,
        external_id=last.conversation_id,
        address=last.address,
        link=last.link,
        people=[source_user(channel), last.sender],
        activity_at=max(e.created_at for e in inbound),
        inbound=True,
    )
    stored = await messages.insert_many(
        svc.db,
        [
            messages.NewMessage(
                channel_id=channel.id,
                conversation_id=conversation.id,
                external_id=event.message_id,
                provider_message_id=event.provider_message_id,
                direction="in",
                sender_id=event.sender.external_id,
                text=event.text,
                status="sent",
                created_at=event.created_at,
            )
            for event in inbound
        ],
    )
    return {
        event.message_id: (conversation, message, new)
        for event, (message, new) in zip(inbound, stored, strict=True)
    }


async def _relay_message(
    svc: Services,
    channel: Channel,
    conversation: Conversation,
    event: InboundMessage,
    message: Message,
    new: bool,
) -> Message | None:
    """Re-host its media and tell Pipedrive; None when Pipedrive was already told."""
    if not new and message.pushed_status is not None:
        log.info(
            "message.duplicate", channel=channel.provider_channel_id, message_id=message.external_id
        )
        return None
    if event.media and not message.attachments:
        message = await _with_media(svc, channel, event, message)
    await push(svc, channel, conversation, message)
    return message


async def _with_media(
    svc: Services, channel: Channel, event: InboundMessage, message: Message
) -> Message:
    """Download each file and store it with us; a file the provider will not give (too large,
    expired) is named in the text instead of holding the message back."""
    adapter = svc.adapter(channel.provider)
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
        await svc.media.put(key, data)
        stored.append(
            StoredAttachment(
                id=f"{message.external_id}:a{index}",
                key=key,
                mime_type=ref.mime_type,
                name=ref.name,
                size=len(data),
            )
        )
    text = message.text
    if missing:
        note = "\n".join(f"[attachment not available: {m}]" for m in missing)
        text = f"{event.text}\n{note}".strip()
    await messages.set_attachments(svc.db, message.id, stored)
    if text != message.text:
        await messages.set_text(svc.db, message.id, text)
    refreshed = await messages.get_by_pk(svc.db, message.id)
    return refreshed or message


async def _set_aside(
    svc: Services,
    channel: Channel,
    row: dict[str, Any],
    conversation_key: str,
    error: Exception,
) -> None:
    await deliveries.set_status(
        svc.db, source=channel.provider, dedupe_key=row["dedupe_key"], status="failed"
    )
    letter = await dead_letters.record(
        svc.db,
        kind=queue.RETRY_DELIVERY.name,
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


async def retry_delivery(svc: Services, payload: dict[str, Any]) -> int:
    """A dead-lettered delivery is replayed: put it back in line and relay its conversation."""
    channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
    if channel is None:
        return 0
    await deliveries.set_status(
        svc.db, source=payload["source"], dedupe_key=payload["dedupe_key"], status="received"
    )
    await svc.queue.schedule(
        queue.RELAY_CONVERSATION,
        {"channel_id": channel.id, "conversation_key": str(payload["conversation_key"])},
    )
    return 1


# --- statuses ---------------------------------------------------------------------------------


async def apply_status(svc: Services, channel: Channel, event: StatusEvent) -> bool:
    """A provider status for one of our messages: stored and pushed only if it moves forward."""
    message = await messages.find_by_provider_id(svc.db, channel.id, event.provider_message_id)
    if message is None:
        # The provider can report on a message before our send call has stored its id (or the
        # message was sent outside the bridge): keep the status a while for the sender to find.
        await svc.coordination.keep_early_status(
            channel.id, event.provider_message_id, event.status, event.error
        )
        log.info("status.early", provider_message_id=event.provider_message_id, status=event.status)
        return False
    return await advance(svc, channel, message, event.status, error=event.error)


async def apply_early_statuses(
    svc: Services, channel: Channel, message: Message, provider_message_id: str
) -> None:
    """Statuses that arrived before the send call returned, applied now (forward-only)."""
    for status, error in await svc.coordination.take_early_statuses(
        channel.id, provider_message_id
    ):
        current = await messages.get_by_pk(svc.db, message.id)
        if current is not None:
            await advance(svc, channel, current, status, error=error)


async def advance(
    svc: Services,
    channel: Channel,
    message: Message,
    status: str,
    *,
    error: str | None = None,
) -> bool:
    """Move a message's status forward and tell Pipedrive; regressions and repeats are dropped.
    A status stored earlier but not yet told (its push failed) is told now."""
    updated, moved = await messages.advance_status(svc.db, message, status, error=error)
    if not moved:
        log.info(
            "status.ignored", message_id=message.external_id, current=updated.status, new=status
        )
    if updated.pushed_status != updated.status and updated.status not in messages.UNSENT:
        conversation = await conversations.get_by_pk(svc.db, updated.conversation_id)
        if conversation is None:
            return moved
        await push(svc, channel, conversation, updated)
        await deliveries.mark_relayed(svc.db, [], [(updated.id, updated.status)])
    return moved
