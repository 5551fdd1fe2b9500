"""Messages both ways, with forward-only status changes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.models import Message, StoredAttachment, status_advances
from service.store.engine import Database
from service.store.schema import messages, utcnow


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


def _as_json(attachments: Sequence[StoredAttachment]) -> list[dict[str, Any]]:
    return [
        {"id": a.id, "key": a.key, "mime_type": a.mime_type, "name": a.name, "size": a.size}
        for a in attachments
    ]


async def insert(
    db: Database,
    *,
    channel_id: int,
    conversation_id: int,
    external_id: str,
    provider_message_id: str | None,
    direction: str,
    sender_id: str,
    text: str,
    attachments: Sequence[StoredAttachment],
    status: str,
    created_at: datetime,
) -> tuple[Message, bool]:
    """Store a message; with an existing `external_id` returns that one and False."""
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                messages.insert().values(
                    channel_id=channel_id,
                    conversation_id=conversation_id,
                    external_id=external_id,
                    provider_message_id=provider_message_id,
                    direction=direction,
                    sender_id=sender_id,
                    text=text,
                    attachments=_as_json(attachments),
                    status=status,
                    created_at=created_at,
                    updated_at=utcnow(),
                )
            )
        created = True
    except IntegrityError:
        created = False
    found = await get(db, channel_id, external_id)
    assert found is not None
    return found, created


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
    query = sa.select(messages).where(
        messages.c.channel_id == channel_id, messages.c.provider_message_id == provider_message_id
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _row(row) if row else None


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
    message_id: int,
    new_status: str,
    *,
    error: str | None = None,
    provider_message_id: str | None = None,
) -> bool:
    """Move the status forward (compare-and-set, safe against concurrent updates); False when
    `new_status` is not ahead of the stored one."""
    for _ in range(5):
        current = await get_by_pk(db, message_id)
        if current is None or not status_advances(current.status, new_status):
            return False
        values: dict[str, Any] = {"status": new_status, "updated_at": utcnow()}
        if error is not None:
            values["error"] = error[:1000]
        if provider_message_id is not None:
            values["provider_message_id"] = provider_message_id
        async with db.engine.begin() as conn:
            result = await conn.execute(
                messages.update()
                .where(messages.c.id == message_id, messages.c.status == current.status)
                .values(**values)
            )
        if result.rowcount:
            return True
    return False


async def mark_pushed(db: Database, message_id: int, status: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            messages.update().where(messages.c.id == message_id).values(pushed_status=status)
        )


async def count(db: Database, conversation_id: int) -> int:
    query = sa.select(sa.func.count()).where(messages.c.conversation_id == conversation_id)
    async with db.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def set_attachments(
    db: Database, message_id: int, attachments: Sequence[StoredAttachment]
) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(attachments=_as_json(attachments), updated_at=utcnow())
        )


async def set_text(db: Database, message_id: int, text: str) -> None:
    async with db.engine.begin() as conn:
        await conn.execute(
            messages.update()
            .where(messages.c.id == message_id)
            .values(text=text, updated_at=utcnow())
        )


async def move(db: Database, message_id: int, from_status: str, to_status: str) -> bool:
    """Compare-and-set the status (claiming a message for sending, or handing it back)."""
    async with db.engine.begin() as conn:
        result = await conn.execute(
            messages.update()
            .where(messages.c.id == message_id, messages.c.status == from_status)
            .values(status=to_status, updated_at=utcnow())
        )
        return bool(result.rowcount)


async def pending_outbound(db: Database, conversation_id: int, up_to: int) -> list[Message]:
    """Outgoing messages of a conversation still waiting to be sent, oldest first."""
    query = (
        sa.select(messages)
        .where(
            messages.c.conversation_id == conversation_id,
            messages.c.direction == "out",
            messages.c.status == "pending",
            messages.c.id <= up_to,
        )
        .order_by(messages.c.id)
    )
    async with db.engine.connect() as conn:
        return [_row(r) for r in await conn.execute(query)]
