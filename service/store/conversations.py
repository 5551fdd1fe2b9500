"""Conversations and their participants.

A conversation and its participants are written before the first `receive` that names it,
because Pipedrive may call getConversationById at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from service.models import Conversation, Participant
from service.store.engine import Database
from service.store.schema import UTCDateTime, conversations, participants, utcnow


def _participant(row: sa.Row[Any]) -> Participant:
    m = row._mapping
    return Participant(
        external_id=m["external_id"], name=m["name"], role=m["role"], avatar_url=m["avatar_url"]
    )


async def _with_participants(
    conn: AsyncConnection, rows: Sequence[sa.Row[Any]]
) -> list[Conversation]:
    ids = [r._mapping["id"] for r in rows]
    people: dict[int, list[Participant]] = {i: [] for i in ids}
    if ids:
        query = (
            sa.select(participants)
            .where(participants.c.conversation_id.in_(ids))
            .order_by(participants.c.role.desc(), participants.c.id)
        )
        for p in await conn.execute(query):
            people[p._mapping["conversation_id"]].append(_participant(p))
    return [_conversation(r, people[r._mapping["id"]]) for r in rows]


def _conversation(row: Any, people: Sequence[Participant] = ()) -> Conversation:
    """From a SQLAlchemy row or an asyncpg record."""
    m = row._mapping if isinstance(row, sa.Row) else row
    return Conversation(
        id=m["id"],
        channel_id=m["channel_id"],
        external_id=m["external_id"],
        address=m["address"],
        link=m["link"],
        status=m["status"],
        last_inbound_at=m["last_inbound_at"],
        last_activity_at=m["last_activity_at"],
        participants=tuple(people),
    )


def _refresh(inbound: bool) -> Any:
    """The UPDATE ... RETURNING that refreshes a known conversation (built once per kind)."""
    at = sa.bindparam("at", type_=UTCDateTime)
    values: dict[str, Any] = {
        "status": "open",
        "last_activity_at": sa.case(
            (conversations.c.last_activity_at < at, at), else_=conversations.c.last_activity_at
        ),
    }
    if inbound:
        values["last_inbound_at"] = sa.case(
            (conversations.c.last_inbound_at.is_(None), at),
            (conversations.c.last_inbound_at < at, at),
            else_=conversations.c.last_inbound_at,
        )
    return (
        conversations.update()
        .where(
            conversations.c.channel_id == sa.bindparam("b_channel_id"),
            conversations.c.external_id == sa.bindparam("b_external_id"),
        )
        .values(**values)
        .returning(conversations)
    )


_REFRESH = {True: _refresh(True), False: _refresh(False)}
#: The same for PostgreSQL's driver (see `Database.driver`): $1 channel, $2 external id, $3 time.
_ACTIVITY_PG = (
    "last_activity_at = CASE WHEN last_activity_at < $3::timestamptz THEN $3::timestamptz"
    " ELSE last_activity_at END"
)
_INBOUND_PG = (
    "last_inbound_at = CASE WHEN last_inbound_at IS NULL OR last_inbound_at < $3::timestamptz"
    " THEN $3::timestamptz ELSE last_inbound_at END"
)
_WHERE_PG = " WHERE channel_id = $1 AND external_id = $2 RETURNING *"
_SET_PG = "UPDATE conversations SET status = 'open', "
# Constant pieces only; the values are bound.
_REFRESH_PG = {
    True: _SET_PG + _ACTIVITY_PG + ", " + _INBOUND_PG + _WHERE_PG,
    False: _SET_PG + _ACTIVITY_PG + _WHERE_PG,
}


async def upsert(
    db: Database,
    *,
    channel_id: int,
    external_id: str,
    address: str,
    link: str,
    people: Sequence[Participant],
    activity_at: datetime,
    inbound: bool,
) -> Conversation:
    """Create or refresh a conversation and its participants (names may change); returns it as
    stored, with the participants given. The common case (a known conversation whose
    participants this process already wrote) is one statement; each statement is idempotent,
    so no transaction is held."""
    if not db.is_sqlite:
        # The common case in one prepared statement; anything else takes the path below (whose
        # refresh, repeated, changes nothing).
        async with db.driver() as raw:
            record = await raw.fetchrow(_REFRESH_PG[inbound], channel_id, external_id, activity_at)
        if record is not None and db.cache.peek("participants", record["id"]) == tuple(people):
            return _conversation(record, people)
    refresh = _REFRESH[inbound]
    params = {"b_channel_id": channel_id, "b_external_id": external_id, "at": activity_at}
    wanted = tuple(people)

    def store(conn: Connection) -> Any:
        row = conn.execute(refresh, params).first()
        if row is None:
            row = (
                conn.execute(
                    db.insert_ignoring_duplicates(conversations)
                    .values(
                        channel_id=channel_id,
                        external_id=external_id,
                        address=address,
                        link=link,
                        status="open",
                        last_inbound_at=activity_at if inbound else None,
                        last_activity_at=activity_at,
                        created_at=utcnow(),
                    )
                    .returning(conversations)
                ).first()
                or conn.execute(refresh, params).one()  # created meanwhile
            )
        conversation_id = int(row._mapping["id"])
        if db.cache.peek("participants", conversation_id) != wanted:
            _write_participants(db, conn, conversation_id, people)
            # What this process wrote last: only a change of name or a new person writes again.
            db.cache.put("participants", conversation_id, wanted, seconds=300)
        return row

    row = await db.inline(store, write=True)
    return _conversation(row, people)


def _write_participants(
    db: Database, conn: Connection, conversation_id: int, people: Sequence[Participant]
) -> None:
    known = {
        p.external_id: p
        for p in map(
            _participant,
            conn.execute(
                sa.select(participants).where(participants.c.conversation_id == conversation_id)
            ),
        )
    }
    for person in people:
        found = known.get(person.external_id)
        if found is None:
            conn.execute(
                db.insert_ignoring_duplicates(participants).values(
                    conversation_id=conversation_id,
                    external_id=person.external_id,
                    name=person.name,
                    role=person.role,
                    avatar_url=person.avatar_url,
                )
            )
        elif (found.name, found.avatar_url) != (person.name, person.avatar_url):
            conn.execute(
                participants.update()
                .where(
                    participants.c.conversation_id == conversation_id,
                    participants.c.external_id == person.external_id,
                )
                .values(name=person.name, avatar_url=person.avatar_url)
            )


async def touch(db: Database, conversation_id: int, at: datetime) -> None:
    async with db.write() as conn:
        await conn.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id, conversations.c.last_activity_at < at)
            .values(last_activity_at=at)
        )


async def get(db: Database, channel_id: int, external_id: str) -> Conversation | None:
    query = sa.select(conversations).where(
        conversations.c.channel_id == channel_id, conversations.c.external_id == external_id
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        found = await _with_participants(conn, rows)
    return found[0] if found else None


async def get_by_pk(db: Database, conversation_id: int) -> Conversation | None:
    async with db.engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(conversations).where(conversations.c.id == conversation_id)
            )
        ).all()
        found = await _with_participants(conn, rows)
    return found[0] if found else None


async def page(
    db: Database, channel_id: int, *, limit: int, after: tuple[datetime, int] | None
) -> list[Conversation]:
    """Newest activity first; `after` is the (activity, id) of the last one already given."""
    query = sa.select(conversations).where(conversations.c.channel_id == channel_id)
    if after is not None:
        at, last_id = after
        query = query.where(
            sa.or_(
                conversations.c.last_activity_at < at,
                sa.and_(conversations.c.last_activity_at == at, conversations.c.id < last_id),
            )
        )
    query = query.order_by(
        conversations.c.last_activity_at.desc(), conversations.c.id.desc()
    ).limit(limit)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        return await _with_participants(conn, rows)


async def find_participant(db: Database, channel_id: int, external_id: str) -> Participant | None:
    query = (
        sa.select(participants)
        .join(conversations, conversations.c.id == participants.c.conversation_id)
        .where(conversations.c.channel_id == channel_id, participants.c.external_id == external_id)
        .limit(1)
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _participant(row) if row else None


async def search(db: Database, text: str = "", *, limit: int = 50) -> list[Conversation]:
    """Conversations of every channel, newest activity first; with `text`, only those whose
    customer matches it (participant name or id, the conversation's address or id), ignoring
    case. The operator console's conversation browser."""
    query = sa.select(conversations)
    wanted = text.strip().lower()
    if wanted:
        matching_people = sa.select(participants.c.conversation_id).where(
            sa.or_(
                sa.func.lower(participants.c.name).contains(wanted, autoescape=True),
                sa.func.lower(participants.c.external_id).contains(wanted, autoescape=True),
            )
        )
        query = query.where(
            sa.or_(
                sa.func.lower(conversations.c.address).contains(wanted, autoescape=True),
                sa.func.lower(conversations.c.external_id).contains(wanted, autoescape=True),
                conversations.c.id.in_(matching_people),
            )
        )
    query = query.order_by(
        conversations.c.last_activity_at.desc(), conversations.c.id.desc()
    ).limit(limit)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
        return await _with_participants(conn, rows)
