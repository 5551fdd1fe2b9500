"""Messages both ways, with forward-only status changes."""

from __future__ import annotations

import functools
import json as jsonlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from service.models import Message, StoredAttachment, status_advances
from service.store.engine import Database, insert_ignoring
from service.store.schema import message_parts, messages, utcnow


def _attachments(raw: Any) -> tuple[StoredAttachment, ...]:
    return tuple(StoredAttachment(**a) for a in raw or [])


def _row(row: sa.Row[Any]) -> Message:
    return _message(row._mapping)


def _message(m: Any) -> Message:
    """A message from a row's mapping (SQLAlchemy's, or an asyncpg record)."""
    return Message(
        id=m["id"],
        channel_id=m["channel_id"],
        conversation_id=m["conversation_id"],
        external_id=m["external_id"],
        provider_message_id=m["provider_message_id"],
        direction=m["direction"],
        sender_id=m["sender_id"],
        text=m["text"],
        attachments=_attachments(m["attachments"]),
        status=m["status"],
        pushed_status=m["pushed_status"],
        error=m["error"],
        created_at=m["created_at"],
    )


#: The row mapping for other store modules that join messages.
row_to_message = _row


def _as_json(attachments: Sequence[StoredAttachment]) -> list[dict[str, Any]]:
    return [
        {"id": a.id, "key": a.key, "mime_type": a.mime_type, "name": a.name, "size": a.size}
        for a in attachments
    ]


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store (see `insert_many`)."""

    channel_id: int
    conversation_id: int
    external_id: str
    provider_message_id: str | None
    direction: str
    sender_id: str
    text: str
    status: str
    created_at: datetime
    attachments: Sequence[StoredAttachment] = ()


@functools.cache
def _insert_returning(sqlite: bool) -> Any:
    """The messages INSERT, built once per backend."""
    return insert_ignoring(sqlite, messages).returning(messages)


_EXISTING = sa.select(messages).where(
    messages.c.channel_id == sa.bindparam("channel_id"),
    messages.c.external_id.in_(sa.bindparam("external_ids", expanding=True)),
)


async def insert_many(db: Database, found: Sequence[NewMessage]) -> list[tuple[Message, bool]]:
    """Store messages; each comes back with True when new, or as it was already stored (same
    channel and `external_id`) with False. One INSERT for the lot (RETURNING the new rows), and
    one SELECT for those stored before, if any: a retry after a crash finds them stored."""
    if not found:
        return []
    now = utcnow()
    rows = [
        {
            "channel_id": item.channel_id,
            "conversation_id": item.conversation_id,
            "external_id": item.external_id,
            "provider_message_id": item.provider_message_id,
            "direction": item.direction,
            "sender_id": item.sender_id,
            "text": item.text,
            "attachments": _as_json(item.attachments),
            "status": item.status,
            "created_at": item.created_at,
            "updated_at": now,
        }
        for item in found
    ]
    new: dict[tuple[int, str], Message] = {}
    old: dict[tuple[int, str], Message] = {}
    if not db.is_sqlite:
        new, old = await _insert_many_pg(db, found, rows)
        return _matched(found, new, old)
    insert = _insert_returning(db.is_sqlite)

    def store(conn: Connection) -> None:
        for row in conn.execute(insert, rows):
            message = _row(row)
            new[(message.channel_id, message.external_id)] = message
        missing = [
            (i.channel_id, i.external_id) for i in found if (i.channel_id, i.external_id) not in new
        ]
        for channel_id in {c for c, _ in missing}:
            ids = sorted({e for c, e in missing if c == channel_id})
            for row in conn.execute(_EXISTING, {"channel_id": channel_id, "external_ids": ids}):
                message = _row(row)
                old[(message.channel_id, message.external_id)] = message

    await db.inline(store, write=True)
    return _matched(found, new, old)


def _matched(
    found: Sequence[NewMessage],
    new: dict[tuple[int, str], Message],
    old: dict[tuple[int, str], Message],
) -> list[tuple[Message, bool]]:
    """Each message to store with what is stored now, and whether this call stored it."""
    result: list[tuple[Message, bool]] = []
    for item in found:
        key = (item.channel_id, item.external_id)
        if key in new:
            result.append((new.pop(key), True))  # the same message twice in one batch: new once
            old[key] = result[-1][0]
        else:
            result.append((old[key], False))
    return result


_COLUMNS = (
    "channel_id, conversation_id, external_id, provider_message_id, direction, sender_id, text,"
    " attachments, status, created_at, updated_at"
)
#: One row's placeholders, numbered from {0}: the JSON goes as text, the times as timestamptz.
_ROW = (
    "(${0}, ${1}, ${2}, ${3}, ${4}, ${5}, ${6}, ${7}::json, ${8}, ${9}::timestamptz,"
    " ${10}::timestamptz)"
)
_EXISTING_PG = "SELECT * FROM messages WHERE channel_id = $1 AND external_id = ANY($2::text[])"


def _insert_sql(count: int) -> str:
    """The multi-row INSERT for `count` messages (the driver prepares each size once)."""
    values = ", ".join(_ROW.format(*range(1 + 11 * i, 12 + 11 * i)) for i in range(count))
    # Only constant column names and numbered placeholders are joined; the values are bound.
    sql = f"INSERT INTO messages ({_COLUMNS}) VALUES {values}"  # noqa: S608
    return f"{sql} ON CONFLICT DO NOTHING RETURNING *"


async def _insert_many_pg(
    db: Database, found: Sequence[NewMessage], rows: list[dict[str, Any]]
) -> tuple[dict[tuple[int, str], Message], dict[tuple[int, str], Message]]:
    """`insert_many` on PostgreSQL through the driver's prepared statements (see
    `Database.driver`): the new messages, and those stored before."""
    args: list[Any] = []
    for row in rows:
        args += [row[c] for c in _COLUMNS.replace(" ", "").split(",")]
        args[-4] = jsonlib.dumps(row["attachments"])
    new: dict[tuple[int, str], Message] = {}
    old: dict[tuple[int, str], Message] = {}
    async with db.driver() as raw:
        for record in await raw.fetch(_insert_sql(len(rows)), *args):
            message = _message(record)
            new[(message.channel_id, message.external_id)] = message
        missing = {(i.channel_id, i.external_id) for i in found} - new.keys()
        for channel_id in {c for c, _ in missing}:
            ids = sorted(e for c, e in missing if c == channel_id)
            for record in await raw.fetch(_EXISTING_PG, channel_id, ids):
                message = _message(record)
                old[(message.channel_id, message.external_id)] = message
    return new, old


async def get(db: Database, channel_id: int, external_id: str) -> Message | None:
    query = sa.select(messages).where(
        messages.c.channel_id == channel_id, messages.c.external_id == external_id
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _row(row) if row else None


async def get_by_pk(db: Database, message_id: int) -> Message | None:
    async with db.engine.connect() as conn:
        row = (await conn.execute(sa.select(messages).where(messages.c.id == message_id))).first()
    return _row(row) if row else None


async def find_by_provider_id(
    db: Database, channel_id: int, provider_message_id: str
) -> Message | None:
    """The message the provider knows by this id: its first part, or any later one."""
    query = sa.select(messages).where(
        messages.c.channel_id == channel_id, messages.c.provider_message_id == provider_message_id
    )
    by_part = (
        sa.select(messages)
        .join(message_parts, message_parts.c.message_id == messages.c.id)
        .where(
            message_parts.c.channel_id == channel_id,
            message_parts.c.provider_message_id == provider_message_id,
        )
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first() or (await conn.execute(by_part)).first()
    return _row(row) if row else None


async def sent_parts(db: Database, message_id: int) -> list[str]:
    """Provider ids of the parts of an outgoing message already sent, in order."""
    query = (
        sa.select(message_parts.c.provider_message_id)
        .where(message_parts.c.message_id == message_id)
        .order_by(message_parts.c.part_index)
    )
    async with db.engine.connect() as conn:
        return [str(r) for r in (await conn.execute(query)).scalars()]


async def record_part(
    db: Database, message: Message, part_index: int, provider_message_id: str
) -> None:
    """The provider accepted one part: record it at once (it is never sent again). The first
    part's id is also the message's, which statuses and replies refer to."""
    async with db.write() as conn:
        await conn.execute(
            message_parts.insert().values(
                message_id=message.id,
                channel_id=message.channel_id,
                part_index=part_index,
                provider_message_id=provider_message_id,
                created_at=utcnow(),
            )
        )
        if part_index == 0:
            await conn.execute(
                messages.update()
                .where(messages.c.id == message.id)
                .values(provider_message_id=provider_message_id, updated_at=utcnow())
            )


async def page(
    db: Database, conversation_id: int, *, limit: int, before_id: int | None
) -> list[Message]:
    """The latest `limit` messages older than `before_id`, oldest first."""
    query = sa.select(messages).where(messages.c.conversation_id == conversation_id)
    if before_id is not None:
        query = query.where(messages.c.id < before_id)
    query = query.order_by(messages.c.id.desc()).limit(limit)
    async with db.engine.connect() as conn:
        rows = [_row(r) for r in await conn.execute(query)]
    return list(reversed(rows))


async def advance_status(
    db: Database,
    message: Message,
    new_status: str,
    *,
    error: str | None = None,
) -> tuple[Message, bool]:
    """Move the status forward (compare-and-set, safe against concurrent updates). Returns the
    message as stored afterwards, and False when `new_status` was not ahead of the stored one."""
    current: Message | None = message
    for _ in range(5):
        if current is None:
            break
        if not status_advances(current.status, new_status):
            return current, False
        values: dict[str, Any] = {"status": new_status, "updated_at": utcnow()}
        if error is not None:
            values["error"] = error[:1000]
        async with db.write() as conn:
            updated = (
                await conn.execute(
                    messages.update()
                    .where(messages.c.id == current.id, messages.c.status == current.status)
                    .values(**values)
                    .returning(messages)
                )
            ).first()
        if updated is not None:
            return _row(updated), True
        current = await get_by_pk(db, message.id)
    return current or message, False


async def count(db: Database, conversation_id: int) -> int:
    query = sa.select(sa.func.count()).where(messages.c.conversation_id == conversation_id)
    async with db.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def set_attachments(
    db: Database, message_id: int, attachments: Sequence[StoredAttachment]
) -> None:
    async with db.write() as conn:
        await conn.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(attachments=_as_json(attachments), updated_at=utcnow())
        )


async def set_text(db: Database, message_id: int, text: str) -> None:
    async with db.write() as conn:
        await conn.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(text=text, updated_at=utcnow())
        )


async def move(db: Database, message_id: int, from_status: str, to_status: str) -> bool:
    """Compare-and-set the status (claiming a message for sending, or handing it back)."""
    async with db.write() as conn:
        result = await conn.execute(
            messages.update()
            .where(messages.c.id == message_id, messages.c.status == from_status)
            .values(status=to_status, updated_at=utcnow())
        )
        return bool(result.rowcount)


#: Outgoing statuses that still need the outbox: waiting, or interrupted while being handed over.
UNSENT = ("pending", "sending")


async def outbox(db: Database, conversation_id: int, *, limit: int = 20) -> list[Message]:
    """A conversation's outgoing messages not yet handed to the provider, or handed over but
    not yet reported to Pipedrive (that report failed), oldest first."""
    query = (
        sa.select(messages)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.direction == "out",
            sa.or_(
                messages.c.status.in_(UNSENT),
                messages.c.pushed_status.is_distinct_from(messages.c.status),
            ),
        )
        .order_by(messages.c.id)
        .limit(limit)
    )
    async with db.engine.connect() as conn:
        return [_row(r) for r in await conn.execute(query)]


async def stuck_outboxes(db: Database, older_than: datetime) -> list[tuple[int, int]]:
    """(channel id, conversation id) of outboxes with a message waiting since `older_than`:
    its send was never queued (Redis was down) or its job gave up during an outage."""
    query = (
        sa.select(messages.c.channel_id, messages.c.conversation_id)
        .where(
            messages.c.direction == "out",
            messages.c.status.in_(UNSENT),
            messages.c.updated_at < older_than,
        )
        .distinct()
        .limit(500)
    )
    async with db.engine.connect() as conn:
        return [(int(c), int(v)) for c, v in await conn.execute(query)]


async def last_times(db: Database, channel_ids: Sequence[int]) -> dict[int, dict[str, datetime]]:
    """Per channel, when its last inbound (`in`) and outbound (`out`) message was recorded;
    a direction with no message is absent. The operator console's sign of life per channel."""
    found: dict[int, dict[str, datetime]] = {i: {} for i in channel_ids}
    if not found:
        return found
    query = (
        sa.select(messages.c.channel_id, messages.c.direction, sa.func.max(messages.c.created_at))
        .where(messages.c.channel_id.in_(list(found)))
        .group_by(messages.c.channel_id, messages.c.direction)
    )
    async with db.engine.connect() as conn:
        for channel_id, direction, at in await conn.execute(query):
            found[channel_id][direction] = at
    return found
