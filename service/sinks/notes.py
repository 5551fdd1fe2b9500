"""The `notes` sink: a conversation written into Pipedrive as notes on the customer's person.

`push` (called by the relay for every new message and status) only records: the message becomes a
line of the conversation's open window (one window = one note, NOTES_WINDOW_SECONDS long), and a
coalesced `notes_flush` job is scheduled for the conversation. The flush then writes each window
whose lines changed: the first write creates the note (`POST /v1/notes`), later ones replace its
content (`PUT /v1/notes/{id}`). So a burst of messages costs one write, not one per message.

Idempotency, and why this way. The content is always rebuilt from our stored lines, so writing it
again is harmless, and a PUT is idempotent. The only risky call is the POST: an answer lost after
Pipedrive stored the note (a crash, a timeout) must not become a second note. Pipedrive has no
idempotency key, so the window row is the intent, written before the POST with a random marker
that the note's content carries; `post_started_at` is set just before the call. A retry that finds
it set first looks among the person's notes for one with the marker and adopts it. A retry that
cannot see it (the person changed in between) creates a new note; that costs at most one orphan,
recognisable by its marker, and never a lost line. Replays and redeliveries of a message never
reach here twice (the relay stores each message once), and a repeated push only marks the window
for writing again.

A status (delivered, read, failed) updates its line while its window is open; after the window
closed it is dropped, and the log says so.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any

from service import queue
from service.context import Services
from service.logging import get_logger
from service.media import media_url
from service.models import Channel, Conversation, Message
from service.pipedrive.errors import InvalidPayload, NotFound
from service.pipedrive.ledger import budget_left_fraction, notes_window
from service.sinks.channels import installation_of
from service.sinks.persons import PersonMatcher
from service.store import channels, conversations
from service.store import notes as note_store
from service.store.installations import Installation
from service.store.notes import NoteWindow
from service.store.schema import utcnow

log = get_logger(__name__)

#: A note is read for months: its attachment links live this long.
NOTE_MEDIA_TTL = 365 * 24 * 3600
#: The flush waits this long after the first new line, so a burst of messages (a relay batch,
#: a customer typing fast) is one write.
FLUSH_DELAY = 1.0
#: How often a flush stands back for a relay still draining (then it writes anyway).
MAX_FLUSH_WAITS = 30
#: Notes searched for a lost POST's marker.
ADOPT_SEARCH_LIMIT = 50
_PROVIDER_NAMES = {"telegram": "Telegram", "whatsapp": "WhatsApp", "twilio": "SMS (Twilio)"}


def flush_payload(channel: Channel, conversation_id: int) -> queue.NotesPayload:
    return {"channel_id": channel.id, "conversation_id": conversation_id}


async def push(
    svc: Services, channel: Channel, conversation: Conversation, message: Message
) -> None:
    """Record the message as a line (or its new status) and schedule the conversation's flush."""
    now = utcnow()
    window = await note_store.window_of_message(svc.db, message.id)
    if window is not None:
        if not window.is_open(now):
            log.info(
                "notes.status_dropped",
                channel=channel.provider_channel_id,
                message_id=message.external_id,
                status=message.status,
                note_id=window.note_id,
                reason="the message's note window has closed",
            )
            return
        await note_store.bump(svc.db, window.id)
    else:
        inst = await installation_of(svc, channel)
        window = await note_store.open_window(
            svc.db,
            conversation_id=conversation.id,
            company_id=inst.company_id,
            now=now,
            # Shorter while the company's daily budget is plentiful, longer when it runs short.
            seconds=notes_window(
                svc.settings.notes_window_seconds,
                await budget_left_fraction(svc, inst.company_id),
            ),
        )
        await note_store.add_line(svc.db, window.id, message.id)
    await svc.queue.schedule(
        queue.NOTES_FLUSH, flush_payload(channel, conversation.id), defer_by=FLUSH_DELAY
    )
    log.info(
        "message.noted",
        channel=channel.provider_channel_id,
        message_id=message.external_id,
        status=message.status,
        window=window.id,
    )


async def flush(svc: Services, payload: queue.NotesPayload, job_id: str) -> int:
    """The `notes_flush` job: write every window of the conversation whose lines changed.
    While the conversation's relay is still draining a backlog, the flush stands back (a few
    times at most) so the backlog becomes one write."""
    written = 0
    await svc.queue.begin(queue.NOTES_FLUSH, payload)
    while True:
        channel = await channels.get_by_id(svc.db, svc.crypto, int(payload["channel_id"]))
        conversation = await conversations.get_by_pk(svc.db, int(payload["conversation_id"]))
        waits = int(payload.get("waits", 0))
        if (
            channel is not None
            and conversation is not None
            and waits < MAX_FLUSH_WAITS
            and await svc.queue.busy(
                queue.RELAY_CONVERSATION,
                {"channel_id": channel.id, "conversation_key": conversation.external_id},
            )
        ):
            later: queue.NotesPayload = {**payload, "waits": waits + 1}
            await svc.queue.schedule(queue.NOTES_FLUSH, later, force=True, defer_by=FLUSH_DELAY)
            return written
        if channel is not None and conversation is not None:
            inst = await installation_of(svc, channel)
            for window in await note_store.unwritten(svc.db, conversation.id):
                written += await write_window(svc, inst, channel, conversation, window)
        if not await svc.queue.finish(queue.NOTES_FLUSH, payload, job_id):
            return written


async def write_window(
    svc: Services,
    inst: Installation,
    channel: Channel,
    conversation: Conversation,
    window: NoteWindow,
    *,
    retried: bool = False,
) -> int:
    """Write one window's note as of now; returns 1 when Pipedrive was written."""
    matcher = PersonMatcher(svc, inst, channel)
    lines = await note_store.lines(svc.db, window.id)
    if not lines:
        return 0  # a window that lost a race to open (see note_store.open_window)
    person_id = await matcher.person_for(conversation)
    if person_id is None:
        return 0  # logged by the matcher; the lines wait
    deal_id, deal_checked = window.deal_id, window.deal_checked
    if not deal_checked or window.person_id not in (None, person_id):
        deal_id, deal_checked = await matcher.deal_for(person_id, conversation), True
    content = render(svc, channel, conversation, window, lines)
    body: dict[str, Any] = {"content": content, "person_id": person_id}
    if deal_id is not None:
        body["deal_id"] = deal_id
    try:
        note_id = await _write(svc, inst, window, person_id, body)
    except (NotFound, InvalidPayload) as error:
        if retried or await matcher.exists(person_id):
            raise
        log.warning(
            "notes.person_deleted",
            channel=channel.provider_channel_id,
            conversation=conversation.external_id,
            person_id=person_id,
            error=str(error),
            action="the conversation is matched again and its notes written anew",
        )
        await matcher.forget(conversation, person_id)
        await note_store.forget_person(svc.db, inst.company_id, person_id)
        fresh = await note_store.get(svc.db, window.id)
        if fresh is None:
            return 0
        return await write_window(svc, inst, channel, conversation, fresh, retried=True)
    await note_store.update(
        svc.db,
        window.id,
        note_id=note_id,
        person_id=person_id,
        deal_id=deal_id,
        deal_checked=deal_checked,
    )
    await note_store.mark_written(svc.db, window.id, window.revision)
    log.info(
        "notes.written",
        channel=channel.provider_channel_id,
        conversation=conversation.external_id,
        note_id=note_id,
        person_id=person_id,
        deal_id=deal_id,
        lines=len(lines),
    )
    return 1


async def _write(
    svc: Services, inst: Installation, window: NoteWindow, person_id: int, body: dict[str, Any]
) -> int:
    """PUT the known note, or adopt the note a lost POST created, or POST a new one."""
    if window.note_id is not None:  # a merge may have moved it: the body names the person
        await svc.pipedrive.put(inst, f"/notes/{window.note_id}", body)
        return window.note_id
    if window.note_id is None and window.post_started_at is not None:
        adopted = await _find_by_marker(svc, inst, person_id, window.marker)
        if adopted is not None:
            log.info("notes.adopted", note_id=adopted, marker=window.marker)
            await svc.pipedrive.put(inst, f"/notes/{adopted}", body)
            return adopted
    await note_store.update(svc.db, window.id, post_started_at=utcnow())
    note = await svc.pipedrive.post(inst, "/notes", body)
    return int(note["id"])


async def _find_by_marker(
    svc: Services, inst: Installation, person_id: int, marker: str
) -> int | None:
    found = (
        await svc.pipedrive.get(
            inst,
            "/notes",
            person_id=person_id,
            sort="id DESC",
            limit=ADOPT_SEARCH_LIMIT,
        )
        or []
    )
    for note in found:
        if marker in str(note.get("content") or ""):
            return int(note["id"])
    return None


# --- content ----------------------------------------------------------------------------------


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _text(value: str) -> str:
    return html.escape(value).replace("\n", "<br>")


def _status(message: Message) -> str:
    if message.direction != "out":
        return ""
    if message.status == "failed":
        reason = f": {message.error}" if message.error else ""
        return f" <i>[failed{_text(reason)}]</i>"
    shown = message.status if message.status in ("sent", "delivered", "read") else "sending"
    return f" <i>[{shown}]</i>"


def line(svc: Services, channel: Channel, conversation: Conversation, message: Message) -> str:
    """One message as a line: time, direction, sender, text, attachment links, status."""
    if message.direction == "in":
        arrow, sender = "&#8601; in", _customer_name(conversation)
    else:
        arrow, sender = "&#8599; out", channel.account_name or channel.name
    links = "".join(
        f' <a href="{html.escape(_link(svc, a.key, a.mime_type, a.name))}">'
        f"{html.escape(a.name or 'attachment')}</a>"
        for a in message.attachments
    )
    return (
        f"{_time(message.created_at)} &middot; {arrow} &middot; <b>{_text(sender)}</b>: "
        f"{_text(message.text)}{links}{_status(message)}"
    )


def _link(svc: Services, key: str, mime_type: str, name: str) -> str:
    return media_url(svc.settings.base_url, svc.crypto, key, mime_type, name, NOTE_MEDIA_TTL)


def _customer_name(conversation: Conversation) -> str:
    for person in conversation.participants:
        if person.role == "end_user":
            return person.name
    return conversation.address


def render(
    svc: Services,
    channel: Channel,
    conversation: Conversation,
    window: NoteWindow,
    lines: list[Message],
) -> str:
    """The note's whole content (escaped HTML), rebuilt from our lines on every write."""
    provider = _PROVIDER_NAMES.get(channel.provider, channel.provider)
    head = (
        f"<p><b>{provider} conversation with {_text(_customer_name(conversation))}</b> "
        f"({_text(conversation.address)}) via {_text(channel.name)}</p>"
    )
    body = "<br>".join(line(svc, channel, conversation, m) for m in lines)
    foot = f"<p><small>{window.marker}</small></p>"
    return f"{head}<p>{body}</p>{foot}"


_TAGS = re.compile(r"<[^>]*>")
_BREAKS = re.compile(r"<\s*(br|/p|/div|/li)\s*/?\s*>", re.IGNORECASE)


def plain_text(content: str) -> str:
    """A note's HTML as text: breaks and paragraphs become newlines, tags go, entities decode."""
    return html.unescape(_TAGS.sub("", _BREAKS.sub("\n", content))).replace("\xa0", " ")
