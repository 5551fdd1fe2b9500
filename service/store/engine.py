"""The async engine for `DATABASE_URL`, and the few settings each backend needs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DatabaseError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from service.logging import get_logger

T = TypeVar("T")
log = get_logger(__name__)

#: How long a cached channel or installation is trusted without asking the database. Writes in
#: any process invalidate every process's copy at once (service.coordination, through Redis);
#: this bounds how long a change goes unseen when that announcement is lost (Redis away).
CACHE_SECONDS = 2.0
#: A cache that grows past this many entries starts again empty (a bound, not an LRU).
MAX_CACHED = 50_000
#: A pooled PostgreSQL connection that sat idle longer than this is pinged before it is handed
#: out (a restarted server, a proxy's idle cut). One in steady use is not: SQLAlchemy's
#: `pool_pre_ping` would cost a round trip on every use (three outside autocommit: BEGIN, the
#: ping, ROLLBACK), more than the query itself on the relay's hot path.
PING_AFTER_IDLE_SECONDS = 10.0
#: How long `Database.inline` waits for another process's SQLite write lock (as busy_timeout).
INLINE_LOCK_WAIT = 5.0
#: Inline writes between two WAL checkpoints (SQLite's own default is 1,000 pages).
CHECKPOINT_EVERY = 500


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


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Pre-ping only connections idle for `PING_AFTER_IDLE_SECONDS`; a dead one is replaced
    (the pool retries the checkout), so callers never see it."""

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise DisconnectionError(f"idle connection failed its ping: {error}") from error

    event.listen(engine.sync_engine, "checkin", checked_in)
    event.listen(engine.sync_engine, "checkout", checked_out)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, busy_timeout_ms: int = 5000) -> None:
    """WAL lets the web and worker processes read while one writes; busy_timeout waits for locks."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL survives a crash of the process (not of the machine's power) and spares
    # an fsync per commit; PostgreSQL is the production store.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_inline_pragmas(dbapi_connection: Any, record: Any) -> None:
    """The inline connections never wait in SQLite's busy handler, nor run a WAL checkpoint
    (copying pages and two fsyncs): either would stop the event loop. `Database.inline` waits
    for the lock with asyncio, and checkpoints in a thread."""
    _sqlite_pragmas(dbapi_connection, record, busy_timeout_ms=0)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _checkpoint(path: str) -> tuple[int, int, int]:
    """A PASSIVE WAL checkpoint (it never waits for readers or writers), on a connection of its
    own; returns SQLite's (busy, WAL pages, pages checkpointed)."""
    conn = sqlite3.connect(path, timeout=0)
    try:
        busy, log_pages, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(log_pages), int(done)
    finally:
        conn.close()


def _is_locked(error: OperationalError) -> bool:
    text_ = str(error.orig).lower()
    return "database is locked" in text_ or "database table is locked" in text_


@functools.cache
def insert_ignoring(sqlite: bool, table: Any) -> Any:
    if sqlite:
        return sqlite_insert(table).on_conflict_do_nothing()
    return postgresql_insert(table).on_conflict_do_nothing()


class LocalCache:
    """Rows that are read on every request and rarely change (channels, installations, with
    their credentials decrypted), kept in the process for `CACHE_SECONDS`."""

    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._generation = 0
        self._entries: dict[tuple[str, Any], tuple[float, Any]] = {}

    async def get(self, kind: str, key: Any, load: Callable[[], Any]) -> Any:
        """The cached value for (kind, key), or `await load()` stored for next time; a None
        (not found) is not cached, so a row created meanwhile is seen at once."""
        now = time.monotonic()
        hit = self._entries.get((kind, key))
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        value = await load()
        # Not kept when a write invalidated meanwhile: what was read may predate it.
        if value is not None and generation == self._generation:
            self._entries[(kind, key)] = (now + self.seconds, value)
        return value

    def peek(self, kind: str, key: Any) -> Any:
        """The cached value, or None when absent or stale."""
        hit = self._entries.get((kind, key))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def put(self, kind: str, key: Any, value: Any, seconds: float | None = None) -> None:
        """Remember what this process itself just wrote (for `seconds`, default the cache's)."""
        if len(self._entries) > MAX_CACHED:
            self._entries.clear()
        self._entries[(kind, key)] = (time.monotonic() + (seconds or self.seconds), value)

    def invalidate(self, kind: str | None = None) -> None:
        """Forget every entry of `kind` (every entry at all when None)."""
        self._generation += 1
        if kind is None:
            self._entries.clear()
            return
        for entry in [k for k in self._entries if k[0] == kind]:
            del self._entries[entry]


#: One writer lock per SQLite file and event loop, shared by every Database of the process (the
#: web app and the worker side by side in `pdbridge run`).
_WRITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _writer_lock(url: URL) -> asyncio.Lock:
    locks = _WRITERS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(str(url), asyncio.Lock())


#: Every open Database of this process, so a write through one invalidates the caches of all
#: the others on the same URL (a test runs the web and the worker side by side in one process).
_OPEN: weakref.WeakSet[Database] = weakref.WeakSet()


class Database:
    """One engine per process; the handlers and jobs share it through the app state or job ctx.

    On SQLite, writes go through `write()`, which lets one transaction of the process at a time
    take SQLite's write lock: writers queue on an asyncio lock instead of spinning in SQLite's
    busy handler (which sleeps in steps of up to 100 ms). Readers are never held up (WAL). The
    hot path's statements (every webhook, every relay batch) run through `inline` (SQLite on
    the loop's thread) or `driver` (asyncpg's prepared statements)."""

    def __init__(self, database_url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(database_url)
        self.cache = LocalCache()
        #: Called with the kind after `invalidate`, to reach the other processes.
        self.on_invalidate: Callable[[str], None] | None = None
        _OPEN.add(self)
        kwargs: dict[str, Any] = {}
        if self.is_sqlite and self.url.database in (None, "", ":memory:"):
            kwargs["poolclass"] = NullPool
        elif self.is_sqlite:
            # Opening a SQLite connection (a thread, the file, the pragmas) costs more than the
            # query; keep a few. SQLite serialises writers anyway, so more would only wait.
            kwargs.update(pool_size=4, max_overflow=4)
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        # Its own pool, so no connection has its isolation level set and reset on every use.
        # It carries the hot path (every webhook, every relay batch): on PostgreSQL it keeps
        # twice as many idle connections, since one opened past `pool_size` is closed again on
        # return, and under 32 concurrent webhooks that churn (TCP, TLS probe, auth, type
        # codecs) was 18 % of the web process's CPU.
        hot = dict(kwargs)
        if not self.is_sqlite:
            hot.update(pool_size=2 * pool_size, max_overflow=pool_size)
        self._autocommit_engine: AsyncEngine = create_async_engine(
            self.url, isolation_level="AUTOCOMMIT", **hot
        )
        if self.is_sqlite:
            event.listen(self._autocommit_engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            _ping_when_idle(self.engine)
            _ping_when_idle(self._autocommit_engine)
        # SQLite's hot path runs on the event loop's own thread (see `inline`).
        self._inline_engine: Engine | None = None
        self._inline_writes = 0
        self._checkpointing: asyncio.Future[tuple[int, int, int]] | None = None
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            self._inline_engine = create_engine(
                self.url.set(drivername="sqlite+pysqlite"),
                isolation_level="AUTOCOMMIT",
                pool_size=2,
                max_overflow=2,
                # sqlite3's own 5 s busy wait would apply to the pragmas run on connect.
                connect_args={"timeout": 0},
            )
            event.listen(self._inline_engine, "connect", _sqlite_inline_pragmas)

    @property
    def is_sqlite(self) -> bool:
        return self.url.drivername.startswith("sqlite")

    @asynccontextmanager
    async def write(self, *, invalidates: str | None = None) -> AsyncIterator[AsyncConnection]:
        """A write transaction (committed on success, rolled back on error); `invalidates`
        names the cached kind of row it changes."""
        try:
            if not self.is_sqlite:
                async with self.engine.begin() as conn:
                    yield conn
                return
            async with _writer_lock(self.url), self.engine.begin() as conn:
                yield conn
        finally:
            if invalidates is not None:
                self.invalidate(invalidates)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement commits on its own: no BEGIN and COMMIT round
        trips. For the hot path's writes that are each idempotent and correct in any order
        after a crash (the relay's); SQLite's single writer applies all the same."""
        if not self.is_sqlite:
            async with self._autocommit_engine.connect() as conn:
                yield conn
            return
        async with _writer_lock(self.url), self._autocommit_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that need no snapshot across statements: each runs on its
        own, with no BEGIN and ROLLBACK round trips around it (the relay's hot path), and on
        SQLite without waiting for the writer."""
        async with self._autocommit_engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """PostgreSQL only: the asyncpg connection under a pooled autocommit connection, for the
        relay's few statements per batch where SQLAlchemy's execution layer costs more than the
        round trip (about 0.23 ms of CPU per statement over asyncpg's own prepared statements).
        A connection lost meanwhile leaves the pool and is raised as SQLAlchemy's (transient)
        OperationalError, as through SQLAlchemy."""
        if self.is_sqlite:
            raise TypeError("driver() is for PostgreSQL")
        async with self._autocommit_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                yield raw.driver_connection
            except (
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
                # A drop seen mid-operation can leave the protocol in a state asyncpg calls an
                # internal error ("cannot switch to state ..."): the connection is as lost.
                asyncpg.InternalClientError,
            ) as error:
                await conn.invalidate()
                raise OperationalError("(asyncpg)", None, error) from error
            except asyncpg.PostgresError as error:
                # As SQLAlchemy would raise them, so callers catch one family: the server going
                # away or short of resources (SQLSTATE classes 08, 53, 57: a restart ends every
                # session with 57P01) may pass; anything else is the statement's own failure.
                state = str(getattr(error, "sqlstate", "") or "")
                if state[:2] in ("08", "53", "57"):
                    if state[:2] != "53":
                        await conn.invalidate()
                    raise OperationalError("(asyncpg)", None, error) from error
                raise DatabaseError("(asyncpg)", None, error) from error

    async def inline(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """Run `work` (a few statements, each idempotent and committed on its own) on a
        synchronous connection: on a SQLite file on the event loop's own thread, elsewhere
        through the async layer (`autocommit` or `read`).

        Through aiosqlite every statement crosses to its thread and back, and with SQLAlchemy's
        async layer an INSERT that commits cost 0.8 ms of CPU; here about 0.2 ms, most of it
        SQLite's own commit (WAL, no fsync per commit; `python -m bench.floors`). Writers take
        the process's writer lock first, so they never meet another writer of this process; a
        writer of another process (a CLI command) makes SQLite answer "locked" at once, and the
        wait happens here, in asyncio, for up to `INLINE_LOCK_WAIT` seconds before the
        (transient) OperationalError."""
        if self._inline_engine is None:  # PostgreSQL, or SQLite in memory: the async layer
            async with self.autocommit() if write else self.read() as conn:
                return await conn.run_sync(work)
        deadline = time.monotonic() + INLINE_LOCK_WAIT
        pause = 0.001
        while True:
            async with _writer_lock(self.url) if write else contextlib.nullcontext():
                try:
                    with self._inline_engine.connect() as conn:
                        done = work(conn)
                    if write:
                        self._after_inline_write()
                    return done
                except OperationalError as error:
                    if not _is_locked(error) or time.monotonic() > deadline:
                        raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _after_inline_write(self) -> None:
        """Every CHECKPOINT_EVERY inline writes, a checkpoint in a thread (one at a time)."""
        self._inline_writes += 1
        if self._inline_writes < CHECKPOINT_EVERY or self._checkpointing is not None:
            return
        self._inline_writes = 0
        assert self.url.database is not None
        task = asyncio.ensure_future(asyncio.to_thread(_checkpoint, self.url.database))
        self._checkpointing = task
        task.add_done_callback(self._checkpointed)

    def _checkpointed(self, task: asyncio.Future[tuple[int, int, int]]) -> None:
        self._checkpointing = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("sqlite.checkpoint_failed", error=str(task.exception()))

    def insert_ignoring_duplicates(self, table: Any) -> Any:
        """`INSERT ... ON CONFLICT DO NOTHING` in this backend's dialect (both support
        RETURNING, so the caller learns which rows were new in the same round trip). Built once
        per table and backend: the hot path's inserts reuse it (and its cache key)."""
        return insert_ignoring(self.is_sqlite, table)

    def invalidate(self, kind: str) -> None:
        """A row of `kind` changed: drop cached copies in every Database of this process, and
        tell the other processes (`on_invalidate`, set by service.coordination)."""
        self.invalidate_here(kind)
        if self.on_invalidate is not None:
            self.on_invalidate(kind)

    def invalidate_here(self, kind: str | None) -> None:
        """Drop cached copies of `kind` (of everything when None) in every Database of this
        process."""
        for db in list(_OPEN):
            if db.url == self.url:
                db.cache.invalidate(kind)

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the database answers a trivial query within `timeout` seconds."""
        async with asyncio.timeout(timeout), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self._autocommit_engine.dispose()
        if self._inline_engine is not None:
            self._inline_engine.dispose()
