"""Housekeeping jobs: nothing recorded is lost to a crash, and old replayed dead letters go."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobs import maintenance
from service import ingest, retention
from service import queue as queue_module
from service.context import Services
from service.media import LocalMediaStore
from service.queue import JobContext
from service.store import dead_letters, deliveries
from service.store.schema import dead_letters as dead_letters_table
from service.store.schema import inbound_deliveries, utcnow
from tests.test_queue import run_burst

pytestmark = pytest.mark.anyio


async def test_a_delivery_recorded_before_a_crash_is_enqueued_by_the_sweeper(
    settings: Any, services: Services
) -> None:
    """A delivery stored but never queued (the process died in between) is queued and run."""
    ran: list[dict[str, Any]] = []

    async def pipedrive_event(ctx: JobContext, payload: dict[str, Any]) -> None:
        ran.append(payload)

    await deliveries.record_many(
        services.db, "pipedrive", [deliveries.NewDelivery("k1", "pipedrive_event", {"n": 1})]
    )
    async with services.db.engine.begin() as conn:
        await conn.execute(
            inbound_deliveries.update().values(updated_at=utcnow() - timedelta(minutes=5))
        )
    assert await maintenance.sweep_stuck_deliveries({"services": services}) == 1
    assert await maintenance.sweep_stuck_deliveries({"services": services}) == 0
    await run_burst(settings, queue_module.job(pipedrive_event))
    assert ran == [{"n": 1}]


async def test_a_fresh_delivery_is_left_to_its_own_job(services: Services) -> None:
    """The sweeper does not touch a delivery recorded moments ago (its job is on the way)."""
    await deliveries.record_many(
        services.db, "pipedrive", [deliveries.NewDelivery("k2", "pipedrive_event", {})]
    )
    assert await maintenance.sweep_stuck_deliveries({"services": services}) == 0
    assert ingest.job_key("pipedrive", "k2") == "in:pipedrive:k2"


async def test_old_replayed_dead_letters_are_pruned_and_others_kept(
    services: Services, tmp_path: Path
) -> None:
    """Dead letters replayed over 30 days ago go; unreplayed ones stay whatever their age."""
    for kind in ("old-replayed", "recent-replayed", "never-replayed"):
        await dead_letters.record(
            services.db, kind=kind, job_id=None, payload={}, error="x", tries=1
        )
    async with services.db.engine.begin() as conn:
        await conn.execute(
            dead_letters_table.update()
            .where(dead_letters_table.c.kind == "old-replayed")
            .values(replayed_at=utcnow() - timedelta(days=40))
        )
        await conn.execute(
            dead_letters_table.update()
            .where(dead_letters_table.c.kind == "recent-replayed")
            .values(replayed_at=utcnow() - timedelta(days=2))
        )
        await conn.execute(
            dead_letters_table.update()
            .where(dead_letters_table.c.kind == "never-replayed")
            .values(created_at=utcnow() - timedelta(days=400))
        )
    policy = retention.Policy.from_settings(services.settings)
    assert policy.dead_letters == timedelta(days=30)
    pruned = await retention.prune(services.db, LocalMediaStore(tmp_path), policy)
    assert pruned.dead_letters == 1
    async with services.db.engine.connect() as conn:
        kinds = set((await conn.execute(sa.select(dead_letters_table.c.kind))).scalars())
    assert kinds == {"recent-replayed", "never-replayed"}
