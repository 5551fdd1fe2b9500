"""Floors of the relay's per-message costs: process CPU per call of a bare loop of each.

`python -m bench.floors [N] [REDIS_URL] [POSTGRES_URL]`: an httpx2 POST (on anyio, as httpx2
ships, and on service.http_transport), an aiohttp POST and a raw asyncio POST to the bench's
Pipedrive stand-in, a Redis EVALSHA, an asyncpg prepared statement round trip, a SQLAlchemy Core
SELECT with its connection checkout (autocommit), and a SQLite INSERT through SQLAlchemy's async
layer against one on the loop's own thread (`Database.inline`).
"""

import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import uvloop

from service.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
REDIS = sys.argv[2] if len(sys.argv) > 2 else "redis://127.0.0.1:6379/15"
PG = sys.argv[3] if len(sys.argv) > 3 else "postgresql://postgres@127.0.0.1:5432/test"


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def httpx_loop(port, n, ours=False):
    from service.http_transport import transport

    body = {"id": "x", "conversation_id": "c", "channel_id": "bench-channel", "message": "hello 1"}
    limits = httpx2.Limits(max_connections=100, max_keepalive_connections=100)
    made = transport(limits) if ours else None
    async with httpx2.AsyncClient(headers={"User-Agent": "b"}, transport=made) as c:
        for _ in range(50):
            await c.post(
                f"http://127.0.0.1:{port}/api/v1/channels/messages/receive",
                json=body,
                headers={"x-api-token": "bench"},
            )
        c0 = cpu()
        for _i in range(n):
            r = await c.post(
                f"http://127.0.0.1:{port}/api/v1/channels/messages/receive",
                json=body,
                headers={"x-api-token": "bench"},
            )
            r.json()
        return (cpu() - c0) / n


async def aio_loop(port, n):
    import aiohttp

    body = {"id": "x", "conversation_id": "c", "channel_id": "bench-channel", "message": "hello 1"}
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{port}/api/v1/channels/messages/receive"
        for _ in range(50):
            async with s.post(url, json=body, headers={"x-api-token": "bench"}) as r:
                await r.read()
        c0 = cpu()
        for _i in range(n):
            async with s.post(url, json=body, headers={"x-api-token": "bench"}) as r:
                json.loads(await r.read())
        return (cpu() - c0) / n


async def raw_loop(port, n):
    from bench.loadgen import Connection

    conn = Connection(port)
    body = json.dumps(
        {"id": "x", "conversation_id": "c", "channel_id": "bench-channel", "message": "hello 1"}
    ).encode()
    for _ in range(50):
        await conn.request(
            "POST", "/api/v1/channels/messages/receive", body, {"x-api-token": "bench"}
        )
    c0 = cpu()
    for _i in range(n):
        _st, b = await conn.request(
            "POST", "/api/v1/channels/messages/receive", body, {"x-api-token": "bench"}
        )
        json.loads(b)
    return (cpu() - c0) / n


async def redis_loop(url, n):
    from redis.asyncio import Redis

    r = Redis.from_url(url)
    s = r.register_script("return redis.call('TIME')")
    for _ in range(50):
        await s()
    c0 = cpu()
    for _ in range(n):
        await s()
    t = (cpu() - c0) / n
    await r.aclose()
    return t


async def pg_loop(n):
    import asyncpg

    c = await asyncpg.connect(PG)
    st = await c.prepare("SELECT $1::int")
    for _ in range(50):
        await st.fetch(1)
    c0 = cpu()
    for i in range(n):
        await st.fetch(i)
    t = (cpu() - c0) / n
    await c.close()
    return t


async def sa_loop(n):
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    e = create_async_engine(
        PG.replace("postgresql://", "postgresql+asyncpg://"), isolation_level="AUTOCOMMIT"
    )
    q = sa.select(sa.bindparam("x", type_=sa.Integer))
    async with e.connect() as conn:
        for _ in range(50):
            await conn.execute(q, {"x": 1})
    c0 = cpu()
    for i in range(n):
        async with e.connect() as conn:
            (await conn.execute(q, {"x": i})).all()
    t = (cpu() - c0) / n
    await e.dispose()
    return t


async def sqlite_loops(n):
    """One INSERT ... RETURNING per call on a SQLite file (WAL): through SQLAlchemy's async
    layer and aiosqlite's thread, and on a synchronous connection on the loop's own thread (what
    `Database.inline` does)."""
    import tempfile

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/floor.db"
        sync = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with sync.connect() as conn:
            conn.execute(sa.text("PRAGMA journal_mode=WAL"))
            conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT UNIQUE)"))
        q = sa.text("INSERT INTO t (k) VALUES (:k) ON CONFLICT DO NOTHING RETURNING id")
        e = create_async_engine(url.replace("sqlite:", "sqlite+aiosqlite:"),
                                isolation_level="AUTOCOMMIT")  # fmt: skip
        for i in range(50):  # warm-up: the pool, the statement cache
            async with e.connect() as conn:
                (await conn.execute(q, {"k": f"w{i}"})).all()
            with sync.connect() as conn:
                conn.execute(q, {"k": f"v{i}"}).all()
        c0 = cpu()
        for i in range(n):
            async with e.connect() as conn:
                (await conn.execute(q, {"k": f"a{i}"})).all()
        aio = (cpu() - c0) / n
        await e.dispose()
        c0 = cpu()
        for i in range(n):
            with sync.connect() as conn:
                conn.execute(q, {"k": f"s{i}"}).all()
            await asyncio.sleep(0)
        inline = (cpu() - c0) / n
        sync.dispose()
    return aio, inline


def main():
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "bench.standin", "--port", str(port)], cwd=ROOT)
    time.sleep(1.5)
    try:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
        uvloop.install()
        print(f"httpx2 POST  {asyncio.run(httpx_loop(port, n)) * 1e6:.0f} us CPU/call")
        ours = asyncio.run(httpx_loop(port, n, ours=True)) * 1e6
        print(f"httpx2 POST on service.http_transport (asyncio streams) {ours:.0f} us CPU/call")
        try:
            print(f"aiohttp POST {asyncio.run(aio_loop(port, n)) * 1e6:.0f} us CPU/call")
        except ImportError:
            print("aiohttp POST (not installed: pip install aiohttp to compare)")
        print(f"raw POST     {asyncio.run(raw_loop(port, n)) * 1e6:.0f} us CPU/call")
        print(f"redis EVALSHA {asyncio.run(redis_loop(REDIS, n)) * 1e6:.0f} us CPU/call")
        print(f"asyncpg prepared fetch {asyncio.run(pg_loop(n)) * 1e6:.0f} us CPU/call")
        print(f"SQLAlchemy SELECT + checkout {asyncio.run(sa_loop(n)) * 1e6:.0f} us CPU/call")
        aio, inline = asyncio.run(sqlite_loops(n))
        print(f"SQLite INSERT, SQLAlchemy async on aiosqlite {aio * 1e6:.0f} us CPU/call")
        print(f"SQLite INSERT, SQLAlchemy sync on the loop's thread {inline * 1e6:.0f} us CPU/call")
    finally:
        p.terminate()


if __name__ == "__main__":
    main()
