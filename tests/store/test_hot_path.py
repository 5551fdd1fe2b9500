"""The relay's hot-path statements: what they read and mark, and how they ride out a
PostgreSQL connection the server dropped (they skip SQLAlchemy's per-use pre-ping)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.exc import SQLAlchemyError

from service.errors import is_transient
from service.store import Database, deliveries, engine
from service.store.migrate import upgrade

pytestmark = pytest.mark.anyio

GROUP = "tg:1:42"


async def _record(db: Database, *keys: str, group: str = GROUP) -> None:
    await deliveries.record_many(
        db,
        "telegram",
        [
            deliveries.NewDelivery(
                k, "relay_conversation", {"raw": {"n": k}}, conversation_key=group
            )
            for k in keys
        ],
    )


async def test_pending_reads_one_conversation_in_order_until_marked_done(db: Database) -> None:
    """The pending read gives a conversation's open deliveries oldest first, with their
    payloads, and nothing of another conversation; once marked done they are gone."""
    await _record(db, "u1", "u2", "u3")
    await _record(db, "other", group="tg:1:43")
    rows = await deliveries.pending_for_conversation(db, "telegram", GROUP, limit=2)
    assert [(r["dedupe_key"], r["payload"]) for r in rows] == [
        ("u1", {"raw": {"n": "u1"}}),
        ("u2", {"raw": {"n": "u2"}}),
    ]
    await deliveries.mark_relayed(db, [r["id"] for r in rows], [])
    rest = await deliveries.pending_for_conversation(db, "telegram", GROUP)
    assert [r["dedupe_key"] for r in rest] == ["u3"]
    assert await deliveries.count_by_status(db, "telegram") == {"done": 2, "received": 2}


async def _drop_every_connection(url: str) -> None:
    """What a PostgreSQL restart does to the pool: the server ends every session."""
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()


async def test_an_idle_connection_the_server_dropped_is_replaced_unseen(
    database_url_postgres: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection idle past the ping threshold is pinged, found dead and replaced:
    the caller never sees the drop."""
    monkeypatch.setattr(engine, "PING_AFTER_IDLE_SECONDS", 0.0)
    db = Database(database_url_postgres)
    try:
        await upgrade(db)
        await _record(db, "u1")
        assert len(await deliveries.pending_for_conversation(db, "telegram", GROUP)) == 1
        await _drop_every_connection(database_url_postgres)
        assert len(await deliveries.pending_for_conversation(db, "telegram", GROUP)) == 1
        await deliveries.mark_relayed(db, [1], [])
        assert await deliveries.pending_for_conversation(db, "telegram", GROUP) == []
    finally:
        await db.dispose()


async def test_a_busy_connection_the_server_dropped_fails_once_as_transient(
    database_url_postgres: str,
) -> None:
    """A connection in steady use is not pinged: when the server drops it, one call fails with
    an error the queue retries, the connection leaves the pool, and the next call works."""
    db = Database(database_url_postgres)
    try:
        await upgrade(db)
        await _record(db, "u1")
        assert len(await deliveries.pending_for_conversation(db, "telegram", GROUP)) == 1
        await _drop_every_connection(database_url_postgres)
        with pytest.raises(Exception) as caught:  # noqa: PT011 -- checked below
            await deliveries.pending_for_conversation(db, "telegram", GROUP)
        assert is_transient(caught.value), repr(caught.value)
        assert len(await deliveries.pending_for_conversation(db, "telegram", GROUP)) == 1
    finally:
        await db.dispose()


async def test_a_webhook_recorded_on_a_dropped_connection_fails_as_transient(
    database_url_postgres: str,
) -> None:
    """The web's insert runs on the driver too: after a server restart the one webhook in
    flight gets an error the handler answers 503 to (SQLAlchemy's transient family, never a raw
    asyncpg error and a 500), and the provider's resend is recorded once."""
    db = Database(database_url_postgres)
    try:
        await upgrade(db)
        await _record(db, "u1")
        await _drop_every_connection(database_url_postgres)
        with pytest.raises(SQLAlchemyError) as caught:
            await _record(db, "u2")
        assert is_transient(caught.value), repr(caught.value)
        await _record(db, "u2")
        await _record(db, "u2")  # the provider's resend
        rows = await deliveries.pending_for_conversation(db, "telegram", GROUP)
        assert [r["dedupe_key"] for r in rows] == ["u1", "u2"]
    finally:
        await db.dispose()


async def test_driver_errors_come_as_sqlalchemys_with_the_right_verdict(
    database_url_postgres: str,
) -> None:
    """The server ending the session (SQLSTATE 57P01, as a restart does) is transient and the
    connection leaves the pool; a statement's own failure is a plain database error, no retry."""
    db = Database(database_url_postgres)
    try:
        with pytest.raises(SQLAlchemyError) as ended:
            async with db.driver() as raw:
                await raw.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        assert is_transient(ended.value), repr(ended.value)
        with pytest.raises(SQLAlchemyError) as refused:
            async with db.driver() as raw:
                await raw.execute("SELECT 1 / 0")
        assert not is_transient(refused.value), repr(refused.value)
        async with db.driver() as raw:
            assert await raw.fetchval("SELECT 2") == 2
    finally:
        await db.dispose()


async def test_on_sqlite_a_write_waits_for_another_process_without_stopping_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path runs SQLite on the event loop's thread, so SQLite's own busy wait would
    freeze every request: while another process (a CLI command) holds the write lock, the
    write waits in asyncio (other tasks run meanwhile) and goes through once the lock is free;
    a lock held past the wait is a transient error, and nothing was half-written."""
    url = f"sqlite:///{tmp_path / 'hot.db'}"
    db = Database(url)
    other = sqlite3.connect(tmp_path / "hot.db", isolation_level=None)
    try:
        await upgrade(db)
        other.execute("BEGIN IMMEDIATE")  # the other process's write transaction
        writer = asyncio.ensure_future(_record(db, "u1"))
        await asyncio.sleep(0)  # the writer's first try meets the lock
        for _ in range(5):  # the loop keeps serving other tasks while the writer waits
            await asyncio.sleep(0.01)
        assert not writer.done()
        other.execute("COMMIT")
        await writer
        rows = await deliveries.pending_for_conversation(db, "telegram", GROUP)
        assert [r["dedupe_key"] for r in rows] == ["u1"]

        monkeypatch.setattr(engine, "INLINE_LOCK_WAIT", 0.2)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(SQLAlchemyError) as caught:
            await _record(db, "u2")
        assert is_transient(caught.value), repr(caught.value)
        other.execute("ROLLBACK")
        rows = await deliveries.pending_for_conversation(db, "telegram", GROUP)
        assert [r["dedupe_key"] for r in rows] == ["u1"]
        await _record(db, "u2")  # the provider's resend
        rows = await deliveries.pending_for_conversation(db, "telegram", GROUP)
        assert [r["dedupe_key"] for r in rows] == ["u1", "u2"]
    finally:
        other.close()
        await db.dispose()


async def _wal_size_after_writes(path: Path, every: int, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY", every)
    db = Database(f"sqlite:///{path}")
    try:
        await upgrade(db)
        for n in range(300):
            await _record(db, f"u{n}")
            for _ in range(200):  # bounded: let a checkpoint in its thread finish
                if db._checkpointing is None:
                    break
                await asyncio.sleep(0.005)
        return await asyncio.to_thread(os.path.getsize, f"{path}-wal")
    finally:
        await db.dispose()


async def test_on_sqlite_checkpoints_keep_the_wal_small_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline connections never checkpoint (it would block the event loop on the copy and
    its fsyncs); the database checkpoints in a thread every so many writes instead, so the
    write-ahead log is reused rather than growing with every webhook."""
    without = await _wal_size_after_writes(tmp_path / "never.db", 10**9, monkeypatch)
    checkpointed = await _wal_size_after_writes(tmp_path / "often.db", 25, monkeypatch)
    assert checkpointed * 4 < without, (checkpointed, without)
