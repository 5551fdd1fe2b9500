"""Notes sink records: a conversation's note windows and which message is a line of which.

A window is one Pipedrive note. Its row is written before the note exists (the intent), with the
`marker` the note's content will carry; `note_id` is filled in once Pipedrive answered. `revision`
grows with every line added or changed, `written_revision` is the last one Pipedrive has, so a
flush knows what to write and a retried flush writes the same thing again (PUT is idempotent).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.models import Message
from service.store import messages as message_store
from service.store.engine import Database
from service.store.schema import messages, note_lines, note_windows, utcnow

#: Every note's content carries this followed by the window's random part; a reply webhook
#: and a lost POST answer are recognised by it.
MARKER_PREFIX = "pdbridge-note-"


@dataclass(frozen=True, slots=True)
class NoteWindow:
    id: int
    conversation_id: int
    company_id: int
    marker: str
    note_id: int | None
    person_id: int | None
    deal_id: int | None
    deal_checked: bool
    opened_at: datetime
    closes_at: datetime
    revision: int
    written_revision: int
    post_started_at: datetime | None

    def is_open(self, now: datetime) -> bool:
        return now < self.closes_at


def _window(row: sa.Row[Any]) -> NoteWindow:
    m = row._mapping
    return NoteWindow(
        id=m["id"],
        conversation_id=m["conversation_id"],
        company_id=int(m["company_id"]),
        marker=m["marker"],
        note_id=int(m["note_id"]) if m["note_id"] is not None else None,
        person_id=int(m["person_id"]) if m["person_id"] is not None else None,
        deal_id=int(m["deal_id"]) if m["deal_id"] is not None else None,
        deal_checked=bool(m["deal_checked"]),
        opened_at=m["opened_at"],
        closes_at=m["closes_at"],
        revision=int(m["revision"]),
        written_revision=int(m["written_revision"]),
        post_started_at=m["post_started_at"],
    )


async def get(db: Database, window_id: int) -> NoteWindow | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(note_windows).where(note_windows.c.id == window_id))
        ).first()
    return _window(row) if row else None


async def window_of_message(db: Database, message_id: int) -> NoteWindow | None:
    query = (
        sa.select(note_windows)
        .join(note_lines, note_lines.c.window_id == note_windows.c.id)
        .where(note_lines.c.message_id == message_id)
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _window(row) if row else None


async def open_window(
    db: Database, *, conversation_id: int, company_id: int, now: datetime, seconds: float
) -> NoteWindow:
    """The conversation's window open at `now`, created when there is none. Two writers racing
    here may both create one; both then take the oldest open one, and the other stays empty
    (an empty window is never written)."""
    query = (
        sa.select(note_windows)
        .where(note_windows.c.conversation_id == conversation_id, note_windows.c.closes_at > now)
        .order_by(note_windows.c.id)
        .limit(1)
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is not None:
        return _window(row)
    previous = await latest(db, conversation_id)
    async with db.write() as conn:
        await conn.execute(
            note_windows.insert().values(
                conversation_id=conversation_id,
                company_id=company_id,
                marker=MARKER_PREFIX + secrets.token_hex(8),
                # A new note of the same conversation keeps the deal the last one found.
                deal_id=previous.deal_id if previous else None,
                deal_checked=previous.deal_checked if previous else False,
                opened_at=now,
                closes_at=now + timedelta(seconds=seconds),
            )
        )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    if row is None:  # the window closed in between: only with a window of a few microseconds
        raise RuntimeError("note window closed while opening it")
    return _window(row)


async def latest(db: Database, conversation_id: int) -> NoteWindow | None:
    query = (
        sa.select(note_windows)
        .where(note_windows.c.conversation_id == conversation_id)
        .order_by(note_windows.c.id.desc())
        .limit(1)
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _window(row) if row else None


async def add_line(db: Database, window_id: int, message_id: int) -> bool:
    """Make the message a line of the window; False when it already is a line of a note."""
    try:
        async with db.write() as conn:
            await conn.execute(
                note_lines.insert().values(window_id=window_id, message_id=message_id)
            )
            await _bump(conn, window_id)
    except IntegrityError:
        return False
    return True


async def bump(db: Database, window_id: int) -> None:
    """A line of the window changed (a status): the note needs writing again."""
    async with db.write() as conn:
        await _bump(conn, window_id)


async def _bump(conn: Any, window_id: int) -> None:
    await conn.execute(
        note_windows.update()
        .where(note_windows.c.id == window_id)
        .values(revision=note_windows.c.revision + 1)
    )


async def unwritten(db: Database, conversation_id: int) -> list[NoteWindow]:
    """The conversation's windows whose latest lines Pipedrive does not have yet, oldest first."""
    query = (
        sa.select(note_windows)
        .where(
            note_windows.c.conversation_id == conversation_id,
            note_windows.c.revision > note_windows.c.written_revision,
        )
        .order_by(note_windows.c.id)
    )
    async with db.engine.connect() as conn:
        return [_window(r) for r in await conn.execute(query)]


async def lines(db: Database, window_id: int) -> list[Message]:
    """The window's messages, in the order they happened."""
    query = (
        sa.select(messages)
        .join(note_lines, note_lines.c.message_id == messages.c.id)
        .where(note_lines.c.window_id == window_id)
        .order_by(messages.c.created_at, messages.c.id)
    )
    async with db.engine.connect() as conn:
        return [message_store.row_to_message(r) for r in await conn.execute(query)]


async def update(db: Database, window_id: int, **values: Any) -> None:
    """Set the window's Pipedrive side: note_id, person_id, deal_id, deal_checked or
    post_started_at (callers name what they learnt; `mark_written` records a write)."""
    allowed = {"note_id", "person_id", "deal_id", "deal_checked", "post_started_at"}
    unknown = set(values) - allowed
    if unknown:
        raise TypeError(f"not a note window field: {sorted(unknown)}")
    async with db.write() as conn:
        await conn.execute(
            note_windows.update().where(note_windows.c.id == window_id).values(**values)
        )


async def mark_written(db: Database, window_id: int, revision: int) -> None:
    """Pipedrive has the note as of `revision` (never moves back: a slower flush may finish
    after a newer one)."""
    async with db.write() as conn:
        await conn.execute(
            note_windows.update()
            .where(note_windows.c.id == window_id, note_windows.c.written_revision < revision)
            .values(written_revision=revision, written_at=utcnow())
        )


async def is_ours(db: Database, company_id: int, note_id: int) -> bool:
    """Did the sink write this note?"""
    query = sa.select(note_windows.c.id).where(
        note_windows.c.company_id == company_id, note_windows.c.note_id == note_id
    )
    async with db.engine.connect() as conn:
        return (await conn.execute(query)).first() is not None


async def conversations_of_deal(db: Database, company_id: int, deal_id: int) -> list[int]:
    """Conversations whose notes are attached to the deal, most recent note first."""
    query = (
        sa.select(note_windows.c.conversation_id)
        .where(note_windows.c.company_id == company_id, note_windows.c.deal_id == deal_id)
        .order_by(note_windows.c.opened_at.desc())
    )
    async with db.engine.connect() as conn:
        return [int(r[0]) for r in await conn.execute(query)]


async def forget_person(db: Database, company_id: int, person_id: int) -> int:
    """The person was deleted in Pipedrive (its notes with it): the windows written to it are
    written again, as new notes, to whichever person the conversation matches next."""
    async with db.write() as conn:
        result = await conn.execute(
            note_windows.update()
            .where(note_windows.c.company_id == company_id, note_windows.c.person_id == person_id)
            .values(
                note_id=None,
                person_id=None,
                deal_id=None,
                deal_checked=False,
                post_started_at=None,
                written_revision=0,
            )
        )
        return int(result.rowcount)
