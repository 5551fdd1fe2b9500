"""Migrations on SQLite and PostgreSQL: they apply, reverse, and match the code's schema."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.store import Database
from service.store.migrate import current_revision, downgrade, head_revision, upgrade
from service.store.schema import metadata

pytestmark = pytest.mark.anyio


async def test_upgrade_reaches_head_and_is_repeatable(database_url: str) -> None:
    """`upgrade` brings an empty database to head; running it again changes nothing."""
    db = Database(database_url)
    try:
        assert await current_revision(db) is None
        await upgrade(db)
        assert await current_revision(db) == head_revision()
        await upgrade(db)
        assert await current_revision(db) == head_revision()
    finally:
        await db.dispose()


async def test_migrated_schema_matches_the_code(database_url: str) -> None:
    """The tables the migrations build are the tables `schema.py` describes."""
    db = Database(database_url)
    try:
        await upgrade(db)

        def diff(connection: sa.Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))

        async with db.engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await db.dispose()


async def test_every_migration_reverses(database_url: str) -> None:
    """Down to base and up again leaves the database at head with all tables."""
    db = Database(database_url)
    try:
        await upgrade(db)
        await downgrade(db, "base")
        assert await current_revision(db) is None

        def tables(connection: sa.Connection) -> set[str]:
            return set(sa.inspect(connection).get_table_names())

        async with db.engine.connect() as conn:
            assert await conn.run_sync(tables) <= {"alembic_version"}
        await upgrade(db)
        async with db.engine.connect() as conn:
            assert set(metadata.tables) <= await conn.run_sync(tables)
    finally:
        await db.dispose()
