"""Shared fixtures: real Redis and real databases, each test against every backend that answers.

Redis: the embedded server (always) and the machine's server on 127.0.0.1:6379 in a database
number of its own (when it answers). Database: SQLite (always) and PostgreSQL on 127.0.0.1:5432
(when it answers; skipped otherwise, never faked).
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from service.config import Settings
from service.context import Services
from service.embedded_redis import EmbeddedRedis
from service.queue import Queue
from service.store import Database
from service.store.migrate import upgrade
from service.store.schema import metadata

#: The machine's services (CI runs on this same machine); override for another host.
SERVER_REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TEST_SECRET = "test-secret-key-0123456789-abcdefghijklmnop"
ADMIN_TOKEN = "admin-token-for-tests"


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable of the shell or of CI leaks into a test's settings; ./var is per test."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


# --- Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def server_redis_url() -> Iterator[str]:
    """A database number of the machine's Redis leased to this test session alone, so that two
    test runs on one machine (a developer's and CI's) never flush each other's queues."""
    if not answers("127.0.0.1", 6379) and "TEST_REDIS_URL" not in os.environ:
        pytest.skip("no Redis server answers on 127.0.0.1:6379")
    admin = redis.Redis.from_url(f"{SERVER_REDIS_BASE}/0")
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    try:
        for number in range(15, 0, -1):
            if admin.set(f"pdbridge-tests:lease:{number}", token, nx=True, ex=3 * 3600):
                break
        else:
            pytest.skip("every Redis database number is leased by other test sessions")
        yield f"{SERVER_REDIS_BASE}/{number}"
        if admin.get(f"pdbridge-tests:lease:{number}") == token.encode():
            admin.delete(f"pdbridge-tests:lease:{number}")
    finally:
        admin.close()


@pytest.fixture(params=["embedded-redis", "server-redis"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """A flushed Redis database: the embedded server, then the machine's server if it answers."""
    if request.param == "embedded-redis":
        url = request.getfixturevalue("embedded_redis").url
    else:
        url = request.getfixturevalue("server_redis_url")
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


# --- Databases ---------------------------------------------------------------------------------


async def _pg_admin(statement: str) -> None:
    engine = Database(POSTGRES_ADMIN_URL).engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not answers("127.0.0.1", 5432) and "TEST_POSTGRES_URL" not in os.environ:
        pytest.skip("no PostgreSQL server answers on 127.0.0.1:5432")
    name = f"pdbridge_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL: a SQLite file, then a PostgreSQL database if a server answers."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pdbridge.db'}"
    url: str = request.getfixturevalue("postgres_server_url")
    asyncio.run(_reset_postgres(url))
    return url


@pytest.fixture
def database_url_postgres(postgres_server_url: str) -> str:
    """The session's PostgreSQL database, emptied (for tests that only make sense on it)."""
    asyncio.run(_reset_postgres(postgres_server_url))
    return postgres_server_url


async def _reset_postgres(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
    finally:
        await db.dispose()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A migrated database on each backend."""
    database = Database(database_url)
    await upgrade(database)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture(
    params=[
        "sqlite+embedded-redis",
        pytest.param("postgresql+server-redis", marks=pytest.mark.postgres),
    ]
)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(database URL, Redis URL) for heavier end-to-end tests: the embedded pair always, the
    machine's servers when they answer (two runs instead of four)."""
    if request.param.startswith("sqlite"):
        database = f"sqlite:///{tmp_path / 'pdbridge.db'}"
        redis_url = request.getfixturevalue("embedded_redis").url
    else:
        database = request.getfixturevalue("postgres_server_url")
        asyncio.run(_reset_postgres(database))
        redis_url = request.getfixturevalue("server_redis_url")
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return database, redis_url


# --- The service's objects ---------------------------------------------------------------------


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"secret_key": TEST_SECRET, "admin_token": ADMIN_TOKEN, "port": 8000}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url=database_url, redis_url=redis_url)


@pytest.fixture
async def services(settings: Settings, db: Database) -> AsyncIterator[Services]:
    queue = await Queue.connect(settings.redis_url or "")
    svc = Services.create(settings, db=db, queue=queue)
    try:
        yield svc
    finally:
        await svc.http.aclose()
        await queue.close()


def table_names() -> list[str]:
    return sorted(metadata.tables)
