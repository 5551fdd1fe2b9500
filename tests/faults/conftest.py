"""The fault suite's stack and its table: one row per fault and direction, printed at the end of
the run, and a failing exit status if any row lost, doubled, reordered or moved back a message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from service.embedded_redis import EmbeddedRedis
from service.store import Database
from tests.faults.checker import FULL, RESULTS, table


@pytest.fixture
def pg_stack(database_url_postgres: str, server_redis_url: str) -> tuple[str, str]:
    """(database URL, Redis URL): the machine's PostgreSQL (this session's own database,
    emptied) and the machine's Redis (this session's leased database number, flushed)."""
    client = redis.Redis.from_url(server_redis_url)
    client.flushdb()
    client.close()
    return database_url_postgres, server_redis_url


@pytest.fixture
def sqlite_stack(embedded_redis: EmbeddedRedis, tmp_path: Path) -> tuple[str, str]:
    """(database URL, Redis URL): a SQLite file and the session's embedded Redis, flushed."""
    client = redis.Redis.from_url(embedded_redis.url)
    client.flushdb()
    client.close()
    return f"sqlite:///{tmp_path / 'pdbridge.db'}", embedded_redis.url


@pytest.fixture
def database_gate(database_url_postgres: str) -> Iterator[DatabaseGate]:
    """Takes this session's PostgreSQL database away and gives it back; always gives it back."""
    gate = DatabaseGate(database_url_postgres)
    try:
        yield gate
    finally:
        gate.open()


class DatabaseGate:
    """A database outage without touching the shared server: new connections to this session's
    database are refused (`ALLOW_CONNECTIONS false`) and its open ones are terminated."""

    def __init__(self, url: str) -> None:
        self.name = url.rsplit("/", 1)[1]
        # Any other database of the server will do for the admin connection.
        self.admin_url = url.rsplit("/", 1)[0] + "/postgres"

    def _run(self, *statements: str) -> None:
        async def run() -> None:
            db = Database(self.admin_url)
            engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as conn:
                    for statement in statements:
                        await conn.execute(sa.text(statement), {"name": self.name})
            finally:
                await db.dispose()

        asyncio.run(run())

    def close(self) -> None:
        self._run(
            f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()",
        )

    def open(self) -> None:
        self._run(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    mode = "full" if FULL else "short"
    terminalreporter.section(f"fault suite ({mode}): one row per fault and direction")
    terminalreporter.write_line(table(RESULTS))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A row with a loss (or a duplicate, a reordering, a status moved back) fails the run even
    if its test was skipped over by an -x or marked otherwise."""
    if any(row.problems() for row in RESULTS) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
