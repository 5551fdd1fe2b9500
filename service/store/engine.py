"""The async engine for `DATABASE_URL`, and the few settings each backend needs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool


def async_url(database_url: str) -> URL:
    """Map the operator's `sqlite:///` or `postgresql://` URL onto its async driver."""
    url = make_url(database_url.replace("postgres://", "postgresql://", 1))
    if url.drivername in ("sqlite", "sqlite+aiosqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    elif url.drivername.startswith("postgresql"):
        query = dict(url.query)
        # libpq spells TLS `sslmode`; asyncpg takes the same words as `ssl`.
        if "sslmode" in query:
            query["ssl"] = query.pop("sslmode")
        url = url.set(drivername="postgresql+asyncpg", query=query)
    else:
        raise ValueError(f"unsupported database URL scheme {url.drivername!r}")
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets the web and worker processes read while one writes; busy_timeout waits for locks."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL survives a crash of the process (not of the machine's power) and spares
    # an fsync per commit; PostgreSQL is the production store.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """One engine per process; the handlers and jobs share it through the app state or job ctx."""

    def __init__(self, database_url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(database_url)
        kwargs: dict[str, Any] = {}
        if self.is_sqlite and self.url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = NullPool
        elif self.is_sqlite:
            # Opening a SQLite connection (a thread, the file, the pragmas) costs more than the
            # query; keep a few. SQLite serialises writers anyway, so more would only wait.
            kwargs.update(pool_size=4, max_overflow=4)
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        return self.url.drivername.startswith("sqlite")

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the database answers a trivial query within `timeout` seconds."""
        async with asyncio.timeout(timeout), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
