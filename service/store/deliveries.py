"""Inbound deliveries: the durable dedupe record written before a webhook is acknowledged.

A delivery is `received` when recorded and `enqueued` once its job is in the queue. A redelivery
of a `received` one (the enqueue failed, or the process died in between) is enqueued again; one
already `enqueued` is acknowledged as a duplicate and nothing else happens.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from service.store.engine import Database
from service.store.schema import inbound_deliveries, utcnow

Source = Literal["pipedrive", "telegram", "whatsapp", "twilio"]


async def record(
    db: Database,
    *,
    source: Source,
    dedupe_key: str,
    job: str,
    payload: dict[str, Any],
    conversation_key: str | None = None,
    status: str = "received",
) -> bool:
    """Record a delivery; True when it still needs enqueueing (new, or recorded but not queued)."""
    now = utcnow()
    try:
        async with db.engine.begin() as conn:
            await conn.execute(
                inbound_deliveries.insert().values(
                    source=source,
                    dedupe_key=dedupe_key,
                    conversation_key=conversation_key,
                    status=status,
                    job=job,
                    payload=payload,
                    received_at=now,
                    updated_at=now,
                )
            )
        return True
    except IntegrityError:
        async with db.engine.connect() as conn:
            status = (
                await conn.execute(
                    sa.select(inbound_deliveries.c.status).where(
                        inbound_deliveries.c.source == source,
                        inbound_deliveries.c.dedupe_key == dedupe_key,
                    )
                )
            ).scalar_one()
        return bool(status == "received")


async def stuck(
    db: Database, older_than: datetime, queued_before: datetime, limit: int = 500
) -> list[dict[str, Any]]:
    """Deliveries recorded but never enqueued (a crash between the two steps), and ones queued
    long ago but not done (their job ran out of tries during an outage)."""
    query = (
        sa.select(inbound_deliveries)
        .where(
            sa.or_(
                sa.and_(
                    inbound_deliveries.c.status == "received",
                    inbound_deliveries.c.received_at < older_than,
                ),
                sa.and_(
                    inbound_deliveries.c.status == "enqueued",
                    inbound_deliveries.c.updated_at < queued_before,
                ),
            )
        )
        .order_by(inbound_deliveries.c.id)
        .limit(limit)
    )
    async with db.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def count(db: Database, source: Source) -> int:
    query = sa.select(sa.func.count()).where(inbound_deliveries.c.source == source)
    async with db.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def count_by_status(db: Database, source: Source) -> dict[str, int]:
    query = (
        sa.select(inbound_deliveries.c.status, sa.func.count())
        .where(inbound_deliveries.c.source == source)
        .group_by(inbound_deliveries.c.status)
    )
    async with db.engine.connect() as conn:
        return {str(status): int(n) for status, n in await conn.execute(query)}


async def pending_for_conversation(
    db: Database, source: Source, conversation_key: str
) -> list[dict[str, Any]]:
    """Deliveries of one conversation not yet relayed, in the order they arrived."""
    query = (
        sa.select(inbound_deliveries)
        .where(
            inbound_deliveries.c.source == source,
            inbound_deliveries.c.conversation_key == conversation_key,
            inbound_deliveries.c.status.in_(("received", "enqueued")),
        )
        .order_by(inbound_deliveries.c.id)
    )
    async with db.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def set_status(
    db: Database,
    *,
    source: Source,
    dedupe_key: str,
    status: str,
    only_from: tuple[str, ...] | None = None,
) -> None:
    """Move a delivery to `status` (and restart its clock); with `only_from`, only from those."""
    query = inbound_deliveries.update().where(
        inbound_deliveries.c.source == source, inbound_deliveries.c.dedupe_key == dedupe_key
    )
    if only_from is not None:
        query = query.where(inbound_deliveries.c.status.in_(only_from))
    async with db.engine.begin() as conn:
        await conn.execute(query.values(status=status, updated_at=utcnow()))


async def mark_enqueued(db: Database, *, source: Source, dedupe_key: str) -> None:
    """Its job is in the queue (never moves a finished delivery back)."""
    await set_status(
        db, source=source, dedupe_key=dedupe_key, status="enqueued", only_from=("received",)
    )


async def mark_requeued(db: Database, *, source: Source, dedupe_key: str) -> None:
    """The sweeper queued it again: `enqueued`, with its clock restarted."""
    await set_status(
        db,
        source=source,
        dedupe_key=dedupe_key,
        status="enqueued",
        only_from=("received", "enqueued"),
    )


async def mark_done(db: Database, *, source: Source, dedupe_key: str) -> None:
    """The delivery's work finished (written only after its side effects succeeded)."""
    await set_status(db, source=source, dedupe_key=dedupe_key, status="done")
