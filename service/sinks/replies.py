"""Replies from the CRM: an agent's note that starts with the marker is sent to the customer.

Pipedrive calls our v2 webhook when a note is created. A note counts as a reply when its first
line starts with NOTES_REPLY_MARKER (`/reply`), it is linked to a person or deal one of our
conversations is linked to, and we did not write it ourselves (our notes come back as webhooks
too: they are known by id and carry our marker). Its text goes to that person's most recent
conversation through the outbox, so it is sent part by part, at most once, and its status shows
in the conversation's note like any outgoing message.

Exactly once: a webhook delivered again is stopped at intake (its dedupe key), and the reply is
stored under an id derived from the note id (`pd-note:{company}:{note}`), looked up before it is
stored, so even a second event about the same note sends nothing.
"""

from __future__ import annotations

import sqlalchemy as sa

from service import outbox
from service.context import Services
from service.logging import get_logger
from service.models import Conversation
from service.pipedrive.webhooks import PipedriveEvent
from service.sinks import notes as notes_sink
from service.sinks.persons import CONVERSATION_REF
from service.store import channels, conversations, messages
from service.store import notes as note_store
from service.store.engine import Database
from service.store.installations import Installation
from service.store.notes import MARKER_PREFIX
from service.store.schema import conversations as conversations_table
from service.store.schema import messages as messages_table
from service.store.schema import person_links, utcnow

log = get_logger(__name__)


def reply_text(content: str, marker: str) -> str | None:
    """The text to send when the note's first line starts with the marker, else None."""
    text = notes_sink.plain_text(content).strip()
    first, _, rest = text.partition("\n")
    if not first.strip().lower().startswith(marker.lower()):
        return None
    return (first.strip()[len(marker) :].strip() + "\n" + rest).strip()


def reply_id(company_id: int, note_id: int) -> str:
    return f"pd-note:{company_id}:{note_id}"


async def _latest_conversation(
    db: Database, company_id: int, person_id: int | None, deal_id: int | None
) -> Conversation | None:
    ids: list[int] = []
    if person_id is not None:
        query = (
            sa.select(conversations_table.c.id)
            .join(
                person_links,
                sa.and_(
                    person_links.c.ref_kind == CONVERSATION_REF,
                    person_links.c.ref_id
                    == sa.cast(conversations_table.c.channel_id, sa.String)
                    + ":"
                    + conversations_table.c.external_id,
                ),
            )
            .where(person_links.c.company_id == company_id, person_links.c.person_id == person_id)
            .order_by(
                conversations_table.c.last_activity_at.desc(), conversations_table.c.id.desc()
            )
        )
        async with db.engine.connect() as conn:
            ids = [int(r[0]) for r in await conn.execute(query)]
    if not ids and deal_id is not None:
        ids = await note_store.conversations_of_deal(db, company_id, deal_id)
    for conversation_id in ids:
        found = await conversations.get_by_pk(db, conversation_id)
        if found is not None and found.status != "closed":
            return found
    return None


async def _already_sent(db: Database, external_id: str) -> bool:
    query = sa.select(messages_table.c.id).where(messages_table.c.external_id == external_id)
    async with db.engine.connect() as conn:
        return (await conn.execute(query)).first() is not None


async def handle_note(svc: Services, inst: Installation, event: PipedriveEvent) -> bool:
    """A created note: send it to the customer when it is a reply; True when one was queued."""
    note = event.data or {}
    note_id = int(event.entity_id)
    content = str(note.get("content") or "")
    context = {"note_id": note_id, "company_id": event.company_id}
    if await note_store.is_ours(svc.db, event.company_id, note_id) or MARKER_PREFIX in content:
        log.info("notes.reply_ignored", reason="written by pdbridge", **context)
        return False
    text = reply_text(content, svc.settings.notes_reply_marker)
    if text is None:
        log.debug("notes.reply_ignored", reason="no reply marker", **context)
        return False
    if not text:
        log.warning(
            "notes.reply_empty", action="nothing sent: the note has only the marker", **context
        )
        return False
    person_id = _optional_int(note.get("person_id"))
    deal_id = _optional_int(note.get("deal_id"))
    conversation = await _latest_conversation(svc.db, event.company_id, person_id, deal_id)
    if conversation is None:
        log.warning(
            "notes.reply_unlinked",
            person_id=person_id,
            deal_id=deal_id,
            action="nothing sent: no conversation of ours is linked to that person or deal",
            **context,
        )
        return False
    channel = await channels.get_by_id(svc.db, svc.crypto, conversation.channel_id)
    if channel is None or channel.status != "active":
        log.warning("notes.reply_channel_gone", conversation=conversation.external_id, **context)
        return False
    external_id = reply_id(event.company_id, note_id)
    if await _already_sent(svc.db, external_id):
        log.info("notes.reply_duplicate", **context)
        return False
    [(stored, new)] = await messages.insert_many(
        svc.db,
        [
            messages.NewMessage(
                channel_id=channel.id,
                conversation_id=conversation.id,
                external_id=external_id,
                provider_message_id=None,
                direction="out",
                sender_id=channel.source_user_id,
                text=text,
                status="pending",
                created_at=utcnow(),
            )
        ],
    )
    if not new:
        log.info("notes.reply_duplicate", **context)
        return False
    await outbox.schedule(svc, channel, conversation.id)
    log.info(
        "notes.reply_queued",
        channel=channel.provider_channel_id,
        conversation=conversation.external_id,
        message_id=stored.external_id,
        **context,
    )
    return True


def _optional_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
