"""Outbound: agents' messages from postMessage to the provider, in order, each part at most once.

postMessage records the message `pending` and schedules its conversation's drain
(`queue.SEND_CONVERSATION`, coalesced); if Redis is away the message is still recorded, answered,
and the sweeper schedules it later. The drain sends the conversation's unsent messages oldest
first:

- Files are read before anything is sent: a file that cannot be read fails its own message,
  reported `failed` with the reason, and the conversation goes on.
- A message is claimed (`pending` → `sending`) before the provider is called, and each part the
  provider accepts is recorded at once (`SendProgress`). A part refused with "certainly not
  sent" (a 429, a refused connection) hands the message back to `pending` and the job retries:
  the next try starts at that part. A part that may have gone out (a timeout after sending, a
  5xx) is reported `failed` rather than sent again: a duplicate in the customer's chat is worse
  than a visible failure the agent can resend (chat-providers.md §1.6).
- A message found `sending` by a later drain was interrupted mid-part (the worker died): for the
  same reason it is reported `failed`.
- `sent` is reported with the same id through `receive`, never the internal statuses. A report
  that fails (Pipedrive answers 5xx or too late) fails the try; the retry finds the message sent
  but untold and tells it, without sending it again.
"""

from __future__ import annotations

import time

from service import queue, relay
from service.context import Services
from service.logging import get_logger
from service.media import MediaNotFound
from service.models import Channel, Message, StoredAttachment
from service.pipedrive import shapes
from service.providers.base import (
    OutgoingFile,
    ProviderPermanent,
    ProviderTransient,
    SendProgress,
)
from service.store import channels, conversations, messages

log = get_logger(__name__)

#: As for the relay: a long backlog is handed to a fresh job after this long.
DRAIN_SECONDS = 20.0
INTERRUPTED = "delivery interrupted; resend if it did not arrive"


async def schedule(svc: Services, channel: Channel, conversation_id: int) -> bool:
    """Make sure the conversation's outbox drain is queued or running."""
    payload: queue.SendPayload = {"channel_id": channel.id, "conversation_id": conversation_id}
    return await svc.queue.schedule(queue.SEND_CONVERSATION, payload)


async def drain(svc: Services, payload: queue.SendPayload, job_id: str, *, last_try: bool) -> int:
    """The drain job: send the conversation's unsent messages until none is left."""
    channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
    started = time.monotonic()
    handled = 0
    await svc.queue.begin(queue.SEND_CONVERSATION, payload)
    while True:
        pending = await messages.outbox(svc.db, int(payload["conversation_id"]))
        outcomes = [await send(svc, channel, message, last_try=last_try) for message in pending]
        handled += sum(outcome != "skipped" for outcome in outcomes)
        if pending and time.monotonic() - started > DRAIN_SECONDS:
            await svc.queue.schedule(queue.SEND_CONVERSATION, payload, force=True)
            return handled
        if any(outcome != "skipped" for outcome in outcomes):
            continue  # more may have been posted meanwhile
        # Empty, or nothing this drain can move (another drain holds it): let the group go.
        if not await svc.queue.finish(queue.SEND_CONVERSATION, payload, job_id):
            return handled


async def send(svc: Services, channel: Channel | None, message: Message, *, last_try: bool) -> str:
    """Hand one message to the provider (see the module docstring); returns its outcome."""
    if message.status not in messages.UNSENT:
        # Handed over already, but telling Pipedrive failed (a 5xx, a timeout): tell it now.
        if channel is None:
            return "skipped"
        await relay.advance(svc, channel, message, message.status)
        return "told"
    if channel is None or channel.status != "active":
        if channel is not None:
            await _fail(svc, channel, message, "the channel was removed")
        else:
            await messages.move(svc.db, message.id, message.status, "failed")
        return "failed"
    if message.status == "sending":
        await _fail(svc, channel, message, INTERRUPTED)
        return "failed"
    conversation = await conversations.get_by_pk(svc.db, message.conversation_id)
    if conversation is None:
        return "skipped"
    by_url = svc.adapter(channel.provider).sends_files_by_url
    try:  # read before the claim: a failure here has certainly sent nothing
        files = [await _outgoing_file(svc, a, by_url=by_url) for a in message.attachments]
    except (MediaNotFound, OSError, ValueError) as error:
        reason = f"an attachment could not be read ({type(error).__name__}); send it again"
        await _fail(svc, channel, message, reason)
        return "failed"
    # Read before the claim too: the claim is the last database call before the provider's, so
    # a database lost in between cannot leave a message `sending` that was never handed over.
    sent_parts = await messages.sent_parts(svc.db, message.id)
    if not await messages.move(svc.db, message.id, "pending", "sending"):
        return "skipped"  # another drain has it (only after a lost group mark)

    async def record(index: int, provider_id: str) -> None:
        await messages.record_part(svc.db, message, index, provider_id)

    progress = SendProgress(sent=sent_parts, record=record)
    try:
        provider_id = await svc.adapter(channel.provider).send(
            channel, conversation.address, message.text, files, progress
        )
    except ProviderPermanent as error:
        await _fail(svc, channel, message, str(error))
        return "failed"
    except ProviderTransient as error:
        if error.maybe_delivered or last_try:
            reason = (
                f"delivery not confirmed by the provider ({error}); resend if it did not arrive"
                if error.maybe_delivered
                else str(error)
            )
            await _fail(svc, channel, message, reason)
            return "failed"
        await messages.move(svc.db, message.id, "sending", "pending")  # this part is unsent
        raise
    # Anything else (a bug, a cancelled job) leaves the message `sending`: the next drain finds
    # it and reports it failed rather than risk sending a part twice.
    await conversations.touch(svc.db, conversation.id, message.created_at)
    current = await messages.get_by_pk(svc.db, message.id)
    await relay.advance(svc, channel, current or message, "sent")
    await relay.apply_early_statuses(svc, channel, current or message, provider_id)
    return "sent"


async def _outgoing_file(svc: Services, stored: StoredAttachment, *, by_url: bool) -> OutgoingFile:
    """The file as the adapter takes it. A provider that fetches our signed link itself gets
    only the link: the file is checked to exist (so a lost file fails before anything is sent)
    but never read."""
    if by_url:
        await svc.media.size(stored.key)
        data = None
    else:
        data = await svc.media.get(stored.key)
    url = shapes.attachment(svc, stored)["url"]
    return OutgoingFile(stored.name, stored.mime_type, data, url=url)


async def _fail(svc: Services, channel: Channel, message: Message, reason: str) -> None:
    log.warning(
        "outbound.failed",
        channel=channel.provider_channel_id,
        message_id=message.external_id,
        reason=reason,
    )
    await relay.advance(svc, channel, message, "failed", error=reason)


async def deliver_message(svc: Services, message_id: int, *, last_try: bool) -> str:
    """An earlier version's per-message job (still replayable): drain its conversation now."""
    message = await messages.get_by_pk(svc.db, message_id)
    if message is None:
        return "skipped"
    channel = await channels.get_by_id(svc.db, svc.crypto, message.channel_id)
    if message.status not in messages.UNSENT:
        if channel is not None:
            await relay.advance(svc, channel, message, message.status)  # re-tell a lost push
        return "skipped"
    result = "skipped"
    for queued in await messages.outbox(svc.db, message.conversation_id, limit=1000):
        if queued.id > message.id:
            break
        outcome = await send(svc, channel, queued, last_try=last_try)
        if queued.id == message.id:
            result = outcome
    return result
