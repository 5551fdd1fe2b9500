"""Inbound deliveries: the durable dedupe record written before a webhook is acknowledged.

A delivery is `received` when recorded and `done` once its work succeeded (`failed` when it was
set aside as a dead letter). Chat deliveries stay `received` while their conversation's relay
drains them; the sweeper schedules any that wait too long. Older Pipedrive-event rows may say
`enqueued` (their job is in the queue); both count as not done.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import Connection

from service.store.engine import Database
from service.store.schema import inbound_deliveries, messages, utcnow

Source = Literal["pipedrive", "telegram", "whatsapp", "twilio"]
#: Not done yet: still to be relayed (or queued, for Pipedrive events).
OPEN = ("received", "enqueued")


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """One delivery to record (see `record_many`)."""

    dedupe_key: str
    job: str
    payload: dict[str, Any]
    conversation_key: str | None = None
    status: str = "received"


#: What `record_many` found for a delivery: recorded now, recorded before and not done yet (a
#: redelivery, perhaps after a failed enqueue: queue it again), or recorded before and done.
Recorded = Literal["new", "open", "done"]


#: `record_many` on PostgreSQL: one prepared statement for any count, rows as arrays, inserted in
#: the order given (the ids are the relay's order).
_RECORD_PG = (
    "INSERT INTO inbound_deliveries (source, dedupe_key, conversation_key, status, job, payload,"
    " received_at, updated_at) SELECT $1, d.k, d.c, d.s, d.j, d.p::json, $2, $2"
    " FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[])"
    " WITH ORDINALITY AS d(k, c, s, j, p, n) ORDER BY d.n"
    " ON CONFLICT DO NOTHING RETURNING dedupe_key"
)
_EARLIER_PG = (
    "SELECT dedupe_key, status FROM inbound_deliveries WHERE source = $1 AND dedupe_key = ANY($2)"
)


async def record_many(db: Database, source: Source, found: Sequence[NewDelivery]) -> list[Recorded]:
    """Record a webhook body's deliveries in one statement, all or nothing (see `Recorded`)."""
    if not found:
        return []
    now = utcnow()
    keys = {item.dedupe_key for item in found}
    if not db.is_sqlite:
        # The web's one statement per webhook, on asyncpg's prepared statement (see
        # `Database.driver`): SQLAlchemy's execution layer was a quarter of the web's CPU.
        async with db.driver() as raw:
            columns = (
                [i.dedupe_key for i in found],
                [i.conversation_key for i in found],
                [i.status for i in found],
                [i.job for i in found],
                [json.dumps(i.payload) for i in found],
            )
            inserted = {str(r[0]) for r in await raw.fetch(_RECORD_PG, source, now, *columns)}
            earlier: dict[str, str] = {}
            if len(inserted) < len(keys):
                rows = await raw.fetch(_EARLIER_PG, source, [i.dedupe_key for i in found])
                earlier = {str(k): str(v) for k, v in rows}
        return _recorded(found, inserted, earlier)
    rows = [
        {
            "source": source,
            "dedupe_key": item.dedupe_key,
            "conversation_key": item.conversation_key,
            "status": item.status,
            "job": item.job,
            "payload": item.payload,
            "received_at": now,
            "updated_at": now,
        }
        for item in found
    ]
    earlier_query = sa.select(inbound_deliveries.c.dedupe_key, inbound_deliveries.c.status).where(
        inbound_deliveries.c.source == source,
        inbound_deliveries.c.dedupe_key.in_([i.dedupe_key for i in found]),
    )
    insert = db.insert_ignoring_duplicates(inbound_deliveries).returning(
        inbound_deliveries.c.dedupe_key
    )

    def record(conn: Connection) -> tuple[set[str], dict[str, str]]:
        # One statement whatever the count (SQLAlchemy's "insertmanyvalues"), compiled once
        # per process: the rows go as parameters, not as part of the statement.
        inserted = set(conn.execute(insert, rows).scalars())
        if len(inserted) == len(keys):
            return inserted, {}
        return inserted, {str(k): str(v) for k, v in conn.execute(earlier_query)}

    inserted, earlier = await db.inline(record, write=True)
    return _recorded(found, inserted, earlier)


def _recorded(
    found: Sequence[NewDelivery], inserted: set[str], earlier: dict[str, str]
) -> list[Recorded]:
    fresh: list[Recorded] = []
    for item in found:
        if item.dedupe_key in inserted:
            fresh.append("new")
            inserted.discard(item.dedupe_key)  # a key twice in one body: new once
        else:
            fresh.append("open" if earlier.get(item.dedupe_key, "received") in OPEN else "done")
    return fresh


async def stuck(db: Database, older_than: datetime, limit: int = 500) -> list[dict[str, Any]]:
    """Deliveries not done since `older_than`: their job was never queued (Redis was down, the
    process died), or it ran out of tries during an outage. The sweeper schedules them again;
    a conversation's relay that is still queued or running makes that a no-op."""
    query = (
        sa.select(inbound_deliveries)
        .where(
            inbound_deliveries.c.status.in_(OPEN),
            inbound_deliveries.c.updated_at < older_than,
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


#: `status IN ('received', 'enqueued')` with the words in the SQL: no expanding parameter to
#: rewrite on every execution.
_IS_OPEN = inbound_deliveries.c.status.in_([sa.literal_column(f"'{s}'") for s in OPEN])

# The relay's hot path runs these for every batch: built once (and so compiled and cache-keyed
# once), executed with bound values.
_PENDING = (
    sa.select(
        inbound_deliveries.c.id, inbound_deliveries.c.dedupe_key, inbound_deliveries.c.payload
    )
    .where(
        inbound_deliveries.c.conversation_key == sa.bindparam("conversation_key"),
        _IS_OPEN,
        inbound_deliveries.c.source == sa.bindparam("source"),
    )
    .order_by(inbound_deliveries.c.id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_MARK_TOLD = (
    messages.update()
    .where(messages.c.id == sa.bindparam("message_id"))
    .values(pushed_status=sa.bindparam("pushed"), updated_at=sa.bindparam("now"))
)
_MARK_DONE = (
    inbound_deliveries.update()
    .where(inbound_deliveries.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(status="done", updated_at=sa.bindparam("now"))
)


# The same on PostgreSQL through the driver's own prepared statements (see `Database.driver`).
_PENDING_PG = (
    "SELECT id, dedupe_key, payload FROM inbound_deliveries WHERE conversation_key = $1"
    " AND status IN ('received', 'enqueued') AND source = $2 ORDER BY id LIMIT $3"
)
_MARK_TOLD_PG = "UPDATE messages SET pushed_status = $2, updated_at = $3 WHERE id = $1"
_MARK_DONE_PG = (
    "UPDATE inbound_deliveries SET status = 'done', updated_at = $2 WHERE id = ANY($1::int[])"
)


async def pending_for_conversation(
    db: Database, source: Source, conversation_key: str, *, limit: int = 100
) -> list[dict[str, Any]]:
    """The oldest deliveries of one conversation not yet relayed, in the order they arrived."""
    if not db.is_sqlite:
        async with db.driver() as raw:
            return [dict(r) for r in await raw.fetch(_PENDING_PG, conversation_key, source, limit)]
    params = {"conversation_key": conversation_key, "source": source, "limit": limit}

    def read(conn: Connection) -> list[dict[str, Any]]:
        return [dict(r._mapping) for r in conn.execute(_PENDING, params)]

    return await db.inline(read, write=False)


async def mark_relayed(
    db: Database, delivery_ids: Sequence[int], pushed: Sequence[tuple[int, str]]
) -> None:
    """One batch is through: its deliveries are done and Pipedrive was told each message's
    status (a crash before this re-tells them: `receive` is an upsert)."""
    if not delivery_ids and not pushed:
        return
    now = utcnow()
    # Either order is safe after a crash: a delivery done whose message is not marked told is
    # never read again (it was told); one not done whose message is marked is skipped.
    if not db.is_sqlite:
        async with db.driver() as raw:
            if pushed:
                await raw.executemany(_MARK_TOLD_PG, [(m, status, now) for m, status in pushed])
            if delivery_ids:
                await raw.execute(_MARK_DONE_PG, list(delivery_ids), now)
        return
    told = [{"message_id": m, "pushed": status, "now": now} for m, status in pushed]
    done = {"ids": list(delivery_ids), "now": now}

    def mark(conn: Connection) -> None:
        if told:
            conn.execute(_MARK_TOLD, told)
        if delivery_ids:
            conn.execute(_MARK_DONE, done)

    await db.inline(mark, write=True)


async def drop_pending(db: Database, conversation_key: str) -> int:
    """A conversation whose channel is gone: its waiting deliveries are acknowledged and
    dropped (kept for the record as `dropped`, never relayed, never swept again)."""
    async with db.write() as conn:
        result = await conn.execute(
            inbound_deliveries.update()
            .where(
                inbound_deliveries.c.conversation_key == conversation_key,
                inbound_deliveries.c.status.in_(OPEN),
            )
            .values(status="dropped", updated_at=utcnow())
        )
        return int(result.rowcount)


async def touch(db: Database, source: Source, dedupe_keys: Sequence[str]) -> None:
    """The sweeper scheduled these again: restart their clocks so it waits before the next try."""
    async with db.write() as conn:
        await conn.execute(
            inbound_deliveries.update()
            .where(
                inbound_deliveries.c.source == source,
                inbound_deliveries.c.dedupe_key.in_(dedupe_keys),
                inbound_deliveries.c.status.in_(OPEN),
            )
            .values(updated_at=utcnow())
        )


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
    async with db.write() as conn:
        await conn.execute(query.values(status=status, updated_at=utcnow()))


async def mark_done(db: Database, *, source: Source, dedupe_key: str) -> None:
    """The delivery's work finished (written only after its side effects succeeded)."""
    await set_status(db, source=source, dedupe_key=dedupe_key, status="done")
