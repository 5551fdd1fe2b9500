"""Where a message ends up in Pipedrive: the sink of its channel.

- `channels`: Pipedrive's Messaging inbox through the Channels API (`receive`), as before.
- `notes`: notes on the matched person (and deal), batched per conversation (`sinks.notes`).

Pipedrive deprecated the Channels API (effective 2026-02-01). A channel's own `sink` wins; a
channel without one follows PIPEDRIVE_SINK. Under `auto` a channel starts on `channels`, and the
first time Pipedrive answers that the API is gone (404 or 410 on `/v1/channels*`, or an error
that says deprecated or removed) it moves to `notes` for good: the move is stored, logged once as
a warning, counted for /metrics, and the message that hit the error is written as a note, so
nothing is lost or dead-lettered for it.
"""

from __future__ import annotations

from typing import Literal

from service import redis_keys
from service.config import Settings
from service.context import Services
from service.logging import get_logger
from service.models import Channel, Conversation, Message
from service.pipedrive.errors import InvalidPayload, NotFound, PipedriveError
from service.sinks import channels as channels_sink
from service.sinks import notes as notes_sink
from service.store import channels

log = get_logger(__name__)

Sink = Literal["channels", "notes"]
SINKS: tuple[Sink, ...] = ("channels", "notes")
#: Words in an error that mean the Channels API itself is gone, not just one request refused.
_GONE_WORDS = ("deprecat", "removed", "no longer available", "retired", "discontinued")


def effective(settings: Settings, channel: Channel) -> Sink:
    """The sink the channel writes to now."""
    if channel.sink == "notes" or (channel.sink is None and settings.pipedrive_sink == "notes"):
        return "notes"
    return "channels"


def follows_auto(settings: Settings, channel: Channel) -> bool:
    """True when the channel moves to notes by itself once the Channels API is gone."""
    return channel.sink is None and settings.pipedrive_sink == "auto"


def channels_api_gone(error: BaseException | None) -> bool:
    """Pipedrive's answer to a `/v1/channels*` call says the API is gone (see the module doc)."""
    if not isinstance(error, PipedriveError):
        return False
    if isinstance(error, NotFound) and error.status in (404, 410):
        return True
    text = f"{error} {error.code or ''}".lower()
    return isinstance(error, InvalidPayload | NotFound) and any(w in text for w in _GONE_WORDS)


def describe(settings: Settings, channel: Channel) -> dict[str, object]:
    """The admin API's view of a channel's sink."""
    return {
        "sink": effective(settings, channel),
        "sink_setting": channel.sink,
        "sink_moved_at": channel.sink_moved_at.isoformat() if channel.sink_moved_at else None,
        "create_persons": (
            channel.create_persons
            if channel.create_persons is not None
            else settings.notes_create_persons
        ),
    }


async def move_to_notes(svc: Services, channel: Channel, error: BaseException) -> Channel:
    """Store the move (once), warn once, count it; returns the channel as it is now."""
    if await channels.move_to_notes(svc.db, channel.id):
        log.warning(
            "sink.moved_to_notes",
            channel=channel.provider_channel_id,
            reason=f"Pipedrive's Channels API is gone: {error}",
            action="this channel now writes conversations as notes on the matched person",
        )
        await svc.queue.redis.incr(redis_keys.SINK_MOVES)
    moved = await channels.get_by_id(svc.db, svc.crypto, channel.id)
    return moved or channel


async def push(
    svc: Services, channel: Channel, conversation: Conversation, message: Message
) -> Sink:
    """Tell Pipedrive about the message at its stored status through the channel's sink;
    returns the sink that took it."""
    if follows_auto(svc.settings, channel):
        # A relay holds its channel for a whole drain: see a move made meanwhile (the process
        # cache drops the channel on every write, so this is a dictionary lookup).
        channel = await channels.get_by_id(svc.db, svc.crypto, channel.id) or channel
    if effective(svc.settings, channel) == "notes":
        await notes_sink.push(svc, channel, conversation, message)
        return "notes"
    try:
        await channels_sink.push(svc, channel, conversation, message)
    except PipedriveError as error:
        if not (follows_auto(svc.settings, channel) and channels_api_gone(error)):
            raise
        moved = await move_to_notes(svc, channel, error)
        await notes_sink.push(svc, moved, conversation, message)
        return "notes"
    return "channels"
