"""What the benches share: percentiles, a uvicorn server, the seeded channel, a scratch database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import sqlalchemy as sa

from service.embedded_redis import free_port

BENCH_SECRET_KEY = "bench-secret-0123456789-abcdefghijklmnop"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def serve(factory: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return process, port
        except httpx2.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{factory} did not start")


async def seed_channel(database_url: str, secret: str) -> str:
    """An installation and a Telegram channel to post to; returns its provider_channel_id."""
    from service.crypto import Crypto
    from service.store import Database, channels, installations
    from service.store.migrate import upgrade

    db = Database(database_url)
    await upgrade(db)
    inst = await installations.ensure_api_token_install(
        db, company_id=1, user_id=1, api_domain="http://127.0.0.1:9", company_domain=None
    )
    channel = await channels.create(
        db,
        Crypto([BENCH_SECRET_KEY]),
        provider_channel_id="bench-channel",
        provider="telegram",
        installation_id=inst.id,
        name="bench",
        credentials={"bot_token": "1:bench"},
        webhook_secret=secret,
        account_id="1",
        account_name="bench",
    )
    await db.dispose()
    return channel.provider_channel_id


@contextlib.contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A throwaway database next to `admin_url`'s, dropped afterwards."""
    from service.store import Database

    name = f"pdbridge_bench_{os.getpid()}"

    async def admin(statement: str) -> None:
        engine = Database(admin_url).engine.execution_options(isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.execute(sa.text(statement))
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def spread(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1e3:6.2f} ms   p99 {pct(values, 0.99) * 1e3:6.2f} ms"
