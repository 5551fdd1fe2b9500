"""Conversations and their participants.

A conversation and its participants are written before the first `receive` that names it,
because Pipedrive may call getConversationById at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from service.models import Conversation, Participant
from service.store.engine import Database
from service.store.schema import conversations, participants, utcnow


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
    result = []
    for r in rows:
        m = r._mapping
        result.append(
            Conversation(
                id=m["id"],
                channel_id=m["channel_id"],
                external_id=m["external_id"],
                address=m["address"],
                link=m["link"],
                status=m["status"],
                last_inbound_at=m["last_inbound_at"],
                last_activity_at=m["last_activity_at"],
                participants=tuple(people[m["id"]]),
            )
        )
    return result


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
    """Create or refresh a conversation and its participants (names may change)."""
    async with db.engine.begin() as conn:
        found = (
            await conn.execute(
                sa.select(
                    conversations.c.id,
                    conversations.c.last_activity_at,
                    conversations.c.last_inbound_at,
                ).where(
                    conversations.c.channel_id == channel_id,
                    conversations.c.external_id == external_id,
                )
            )
        ).first()
        if found is None:
            try:
                async with conn.begin_nested():
                    result = await conn.execute(
                        conversations.insert()
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
                        .returning(conversations.c.id)
                    )
                    conversation_id = int(result.scalar_one())
            except IntegrityError:  # created by another worker meanwhile
                conversation_id = int(
                    (
                        await conn.execute(
                            sa.select(conversations.c.id).where(
                                conversations.c.channel_id == channel_id,
                                conversations.c.external_id == external_id,
                            )
                        )
                    ).scalar_one()
                )
        else:
            conversation_id = int(found.id)
            values: dict[str, Any] = {"status": "open"}
            if activity_at > found.last_activity_at:
                values["last_activity_at"] = activity_at
            last_inbound = found.last_inbound_at
            if inbound and (last_inbound is None or activity_at > last_inbound):
                values["last_inbound_at"] = activity_at
            await conn.execute(
                conversations.update().where(conversations.c.id == conversation_id).values(**values)
            )
        for person in people:
            await _upsert_participant(conn, conversation_id, person)
    conversation = await get_by_pk(db, conversation_id)
    assert conversation is not None
    return conversation


async def _upsert_participant(
    conn: AsyncConnection, conversation_id: int, person: Participant
) -> None:
    updated = await conn.execute(
        participants.update()
        .where(
            participants.c.conversation_id == conversation_id,
            participants.c.external_id == person.external_id,
        )
        .values(name=person.name, avatar_url=person.avatar_url)
    )
    if updated.rowcount:
        return
    try:
        async with conn.begin_nested():
            await conn.execute(
                participants.insert().values(
                    conversation_id=conversation_id,
                    external_id=person.external_id,
                    name=person.name,
                    role=person.role,
                    avatar_url=person.avatar_url,
                )
            )
    except IntegrityError:
        pass  # inserted by another worker meanwhile: same data


async def touch(db: Database, conversation_id: int, at: datetime) -> None:
    async with db.engine.begin() as conn:
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


async def close(db: Database, conversation_id: int) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            conversations.update()
            .where(conversations.c.id == conversation_id)
            .values(status="closed")
        )
