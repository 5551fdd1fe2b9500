"""Queries on the dead-letter table: record, list, fetch and mark replayed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service.store.engine import Database
from service.store.schema import dead_letters, utcnow


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One piece of work that failed for good, with what is needed to run it again."""

    id: int
    kind: str
    job_id: str | None
    company_id: int | None
    channel: str | None
    payload: dict[str, Any]
    error: str
    tries: int
    created_at: datetime
    replayed_at: datetime | None
    replay_count: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "job_id": self.job_id,
            "company_id": self.company_id,
            "channel": self.channel,
            "payload": self.payload,
            "error": self.error,
            "tries": self.tries,
            "created_at": self.created_at.isoformat(),
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_count": self.replay_count,
        }


def _row(row: sa.Row[Any]) -> DeadLetter:
    return DeadLetter(**row._mapping)


async def record(
    db: Database,
    *,
    kind: str,
    job_id: str | None,
    payload: dict[str, Any],
    error: str,
    tries: int,
    company_id: int | None = None,
    channel: str | None = None,
) -> int:
    """Store a failed job; returns the dead letter's id."""
    async with db.write() as conn:
        result = await conn.execute(
            dead_letters.insert()
            .values(
                kind=kind,
                job_id=job_id,
                payload=payload,
                error=error[:4000],
                tries=tries,
                company_id=company_id,
                channel=channel,
                created_at=utcnow(),
            )
            .returning(dead_letters.c.id)
        )
        return int(result.scalar_one())


async def list_all(
    db: Database, *, limit: int = 100, pending_only: bool = False
) -> list[DeadLetter]:
    """Newest first; `pending_only` leaves out the ones already replayed."""
    query = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    if pending_only:
        query = query.where(dead_letters.c.replayed_at.is_(None))
    async with db.engine.connect() as conn:
        return [_row(r) for r in await conn.execute(query)]


async def get(db: Database, dead_letter_id: int) -> DeadLetter | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(dead_letters).where(dead_letters.c.id == dead_letter_id))
        ).first()
    return _row(row) if row else None


async def mark_replayed(db: Database, dead_letter_id: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            dead_letters.update()
            .where(dead_letters.c.id == dead_letter_id)
            .values(replayed_at=utcnow(), replay_count=dead_letters.c.replay_count + 1)
        )


async def prune_replayed(db: Database, older_than: datetime) -> int:
    """Delete dead letters that were replayed before `older_than`; unreplayed ones stay."""
    async with db.write() as conn:
        result = await conn.execute(
            dead_letters.delete().where(
                dead_letters.c.replayed_at.is_not(None), dead_letters.c.replayed_at < older_than
            )
        )
        return int(result.rowcount)
