"""Messages both ways, with forward-only status changes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service.models import Message, StoredAttachment, status_advances
from service.store.engine import Database
from service.store.schema import message_parts, messages, utcnow


def _attachments(raw: Any) -> tuple[StoredAttachment, ...]:
    return tuple(StoredAttachment(**a) for a in raw or [])


def _row(row: sa.Row[Any]) -> Message:
    m = row._mapping
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


async def insert_many(db: Database, found: Sequence[NewMessage]) -> list[tuple[Message, bool]]:
    """Store messages; each comes back with True when new, or as it was already stored (same
    channel and `external_id`) with False. Each insert stands alone: after a crash half-way the
    next try finds the first ones stored and inserts the rest."""
    now = utcnow()
    result: list[tuple[Message, bool]] = []
    async with db.autocommit() as conn:
        for item in found:
            inserted = (
                await conn.execute(
                    db.insert_ignoring_duplicates(messages)
                    .values(
                        channel_id=item.channel_id,
                        conversation_id=item.conversation_id,
                        external_id=item.external_id,
                        provider_message_id=item.provider_message_id,
                        direction=item.direction,
                        sender_id=item.sender_id,
                        text=item.text,
                        attachments=_as_json(item.attachments),
                        status=item.status,
                        created_at=item.created_at,
                        updated_at=now,
                    )
                    .returning(messages)
                )
            ).first()
            if inserted is not None:
                result.append((_row(inserted), True))
                continue
            existing = (
                await conn.execute(
                    sa.select(messages).where(
                        messages.c.channel_id == item.channel_id,
                        messages.c.external_id == item.external_id,
                    )
                )
            ).one()
            result.append((_row(existing), False))
    return result


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
    """A conversation's outgoing messages not yet handed to the provider, oldest first."""
    query = (
        sa.select(messages)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.direction == "out",
            messages.c.status.in_(UNSENT),
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
