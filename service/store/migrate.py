"""Apply Alembic migrations from inside the service (CLI `pdbridge migrate`, `run`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from service.store.engine import Database

MIGRATIONS = Path(__file__).with_name("migrations")
#: Any constant works; it serialises concurrent `migrate` runs on one PostgreSQL database.
PG_MIGRATION_LOCK = 0x70646272


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    """The newest revision the code ships."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def _upgrade(connection: Connection, revision: str) -> None:
    config = _config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = _config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision`; on PostgreSQL, one process at a time."""
    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
        try:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        finally:
            if not db.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
                await conn.commit()


async def downgrade(db: Database, revision: str) -> None:
    """Step the schema back (used by tests to prove every migration reverses)."""
    async with db.engine.connect() as conn:
        await conn.run_sync(_downgrade, revision)
        await conn.commit()


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)
