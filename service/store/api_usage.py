"""The durable side of the API cost ledger: one row per (company, UTC day).

Redis counts every call (service.pipedrive.ledger); the sweeper copies each day's figures here.
The copy sets, never adds, so running it twice changes nothing, and it never lowers a figure
(two sweeps racing with a stale read cannot undo a newer one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from service.store.engine import Database
from service.store.schema import installation_api_usage as usage_table
from service.store.schema import utcnow


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One company's spend on one day as last rolled up."""

    company_id: int
    day: date
    tokens: int
    calls: int
    budget: int | None
    budget_left: int | None


def _row(row: sa.Row[Any]) -> DayUsage:
    m = row._mapping
    return DayUsage(
        company_id=int(m["company_id"]),
        day=m["day"],
        tokens=int(m["tokens"]),
        calls=int(m["calls"]),
        budget=m["budget"],
        budget_left=m["budget_left"],
    )


async def for_day(db: Database, day: date, company_ids: Iterable[int]) -> dict[int, DayUsage]:
    """The rows of `day` for these companies, by company."""
    ids = sorted(set(company_ids))
    if not ids:
        return {}
    query = sa.select(usage_table).where(
        usage_table.c.day == day, usage_table.c.company_id.in_(ids)
    )
    async with db.engine.connect() as conn:
        return {u.company_id: u for u in map(_row, await conn.execute(query))}


async def history(db: Database, company_id: int, *, days: int = 31) -> list[DayUsage]:
    """The company's most recent `days` rows, newest first."""
    query = (
        sa.select(usage_table)
        .where(usage_table.c.company_id == company_id)
        .order_by(usage_table.c.day.desc())
        .limit(days)
    )
    async with db.engine.connect() as conn:
        return [_row(r) for r in await conn.execute(query)]


async def save(db: Database, rows: Iterable[DayUsage]) -> int:
    """Upsert the figures (set, not add; a figure never goes down). Returns the rows written."""
    values = [
        {
            "company_id": u.company_id,
            "day": u.day,
            "tokens": u.tokens,
            "calls": u.calls,
            "budget": u.budget,
            "budget_left": u.budget_left,
            "updated_at": utcnow(),
        }
        for u in rows
    ]
    if not values:
        return 0
    insert = sqlite_insert(usage_table) if db.is_sqlite else postgresql_insert(usage_table)
    new = insert.excluded
    current = usage_table.c

    def highest(column: str) -> Any:
        return sa.case((new[column] > current[column], new[column]), else_=current[column])

    statement = insert.on_conflict_do_update(
        index_elements=[current.company_id, current.day],
        set_={
            "tokens": highest("tokens"),
            "calls": highest("calls"),
            # The budget figures are a reading, not a count: the latest one wins, and a day
            # without a reading keeps the one it had.
            "budget": sa.func.coalesce(new.budget, current.budget),
            "budget_left": sa.case(
                (new.budget_left.is_(None), current.budget_left), else_=new.budget_left
            ),
            "updated_at": new.updated_at,
        },
    )
    async with db.write() as conn:
        await conn.execute(statement, values)
    return len(values)
