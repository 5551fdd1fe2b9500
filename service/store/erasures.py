"""Erased history: deleting a conversation's rows, the tombstones that keep it deleted, and
person erasures that wait out a possible merge.

A conversation is erased in one transaction: its messages (their parts cascade), its
participants, the conversation itself and the links that name it go, and the raw webhook bodies
recorded for it are emptied but kept as `erased`, so that their dedupe keys still turn a
provider's redelivery away. Each erased message id is also kept as a tombstone, so that the
relay drops a delivery of that message under another key (a backfill, a re-sent batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service.store.engine import Database
from service.store.person_links import CONVERSATION
from service.store.schema import (
    conversations,
    erased_messages,
    inbound_deliveries,
    messages,
    person_erasures,
    person_links,
    utcnow,
)

#: Rows written or read per statement.
BATCH = 1000
#: A person link whose `ref_id` is `ingest.conversation_key(channel id, conversation id)`.
CONVERSATION_REF = CONVERSATION


@dataclass(frozen=True, slots=True)
class ConversationRows:
    """What an erasure needs to know before it starts: the media keys to delete."""

    conversation_id: int
    channel_id: int
    external_id: str
    media_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure removed."""

    messages: int
    deliveries: int
    media_files: int


async def conversation_rows(db: Database, conversation_id: int) -> ConversationRows | None:
    """The conversation and its messages' media keys; None when it is gone already."""
    async with db.engine.connect() as conn:
        found = (
            await conn.execute(
                sa.select(conversations.c.channel_id, conversations.c.external_id).where(
                    conversations.c.id == conversation_id
                )
            )
        ).first()
        if found is None:
            return None
        keys: list[str] = []
        query = sa.select(messages.c.attachments).where(
            messages.c.conversation_id == conversation_id
        )
        for (attachments,) in await conn.execute(query):
            keys += media_keys(attachments)
    return ConversationRows(conversation_id, int(found[0]), str(found[1]), tuple(keys))


def media_keys(attachments: Any) -> list[str]:
    """The stored media keys in a message's `attachments` column."""
    return [str(a["key"]) for a in attachments or [] if isinstance(a, dict) and a.get("key")]


async def erase_conversation(db: Database, rows: ConversationRows, delivery_key: str) -> Erased:
    """Delete the conversation's rows and tombstone its message ids (see the module docstring);
    `delivery_key` is the `conversation_key` its deliveries were recorded under."""
    now = utcnow()
    async with db.write() as conn:
        ids = [
            str(i)
            for i in (
                await conn.execute(
                    sa.select(messages.c.external_id).where(
                        messages.c.conversation_id == rows.conversation_id
                    )
                )
            ).scalars()
        ]
        for start in range(0, len(ids), BATCH):
            await conn.execute(
                db.insert_ignoring_duplicates(erased_messages),
                [
                    {"channel_id": rows.channel_id, "external_id": i, "erased_at": now}
                    for i in ids[start : start + BATCH]
                ],
            )
        emptied = await conn.execute(
            inbound_deliveries.update()
            .where(inbound_deliveries.c.conversation_key == delivery_key)
            .values(payload={}, status="erased", updated_at=now)
        )
        await conn.execute(
            messages.delete().where(messages.c.conversation_id == rows.conversation_id)
        )
        await conn.execute(conversations.delete().where(conversations.c.id == rows.conversation_id))
        await conn.execute(
            person_links.delete().where(
                person_links.c.ref_kind == CONVERSATION_REF, person_links.c.ref_id == delivery_key
            )
        )
    return Erased(len(ids), int(emptied.rowcount), len(rows.media_keys))


_ERASED_AMONG = sa.select(erased_messages.c.external_id).where(
    erased_messages.c.channel_id == sa.bindparam("channel_id"),
    erased_messages.c.external_id.in_(sa.bindparam("ids", expanding=True)),
)
_ERASED_AMONG_PG = (
    "SELECT external_id FROM erased_messages WHERE channel_id = $1 AND external_id = ANY($2)"
)


async def erased_among(db: Database, channel_id: int, external_ids: Sequence[str]) -> set[str]:
    """Which of these message ids of the channel were erased (asked for every relayed batch,
    so on the hot path's connections: no BEGIN/ROLLBACK, asyncpg's prepared statement on
    PostgreSQL)."""
    if not external_ids:
        return set()
    ids = list(set(external_ids))
    if not db.is_sqlite:
        async with db.driver() as raw:
            return {str(r[0]) for r in await raw.fetch(_ERASED_AMONG_PG, channel_id, ids)}
    params = {"channel_id": channel_id, "ids": ids}
    return await db.inline(
        lambda conn: {str(i) for i in conn.execute(_ERASED_AMONG, params).scalars()}, write=False
    )


async def conversations_of_person(
    db: Database, company_id: int, person_id: int
) -> list[tuple[int, str]]:
    """(conversation row id, conversation key) of the conversations linked to the person."""
    links = sa.select(person_links.c.ref_id).where(
        person_links.c.company_id == company_id,
        person_links.c.person_id == person_id,
        person_links.c.ref_kind == CONVERSATION_REF,
    )
    async with db.engine.connect() as conn:
        keys = [str(k) for k in (await conn.execute(links)).scalars()]
        found: list[tuple[int, str]] = []
        for key in keys:
            channel_id, _, external_id = key.partition(":")
            if not channel_id.isdigit():
                continue
            row = (
                await conn.execute(
                    sa.select(conversations.c.id).where(
                        conversations.c.channel_id == int(channel_id),
                        conversations.c.external_id == external_id,
                    )
                )
            ).scalar_one_or_none()
            if row is not None:
                found.append((int(row), key))
    return found


async def schedule_person(db: Database, company_id: int, person_id: int, due_at: datetime) -> None:
    """Erase the person's conversations once `due_at` passes (a later notice keeps the first)."""
    async with db.write() as conn:
        await conn.execute(
            db.insert_ignoring_duplicates(person_erasures).values(
                company_id=company_id, person_id=person_id, due_at=due_at
            )
        )


async def cancel_person(db: Database, company_id: int, person_id: int) -> bool:
    """The person was merged away, not deleted: nothing is erased."""
    async with db.write() as conn:
        result = await conn.execute(
            person_erasures.delete().where(
                person_erasures.c.company_id == company_id,
                person_erasures.c.person_id == person_id,
            )
        )
        return bool(result.rowcount)


async def due_persons(db: Database, now: datetime, limit: int = 100) -> list[tuple[int, int]]:
    """(company id, person id) of the person erasures due by `now`, oldest first."""
    query = (
        sa.select(person_erasures.c.company_id, person_erasures.c.person_id)
        .where(person_erasures.c.due_at <= now)
        .order_by(person_erasures.c.due_at, person_erasures.c.id)
        .limit(limit)
    )
    async with db.engine.connect() as conn:
        return [(int(c), int(p)) for c, p in await conn.execute(query)]
