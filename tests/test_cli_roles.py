"""What each `pdbridge` role needs to start (the shared SECRET_KEY), and `worker --check`, the
probe an orchestrator runs beside a worker: the real command, as subprocesses."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from redis import Redis

from service import queue
from service.embedded_redis import EmbeddedRedis
from tests.test_cli import PDBRIDGE, _wait_for, env_with

pytestmark = pytest.mark.slow

SECRET = "roles-test-secret-0123456789abcdefghij"


@pytest.mark.parametrize("command", [["web"], ["worker"], ["channels", "list"]])
def test_a_role_that_shares_the_database_refuses_to_start_without_secret_key(
    tmp_path: Path, command: list[str]
) -> None:
    """web, worker and the channel tools stop at once without SECRET_KEY: exit 2, one line
    naming it, and no key of their own written anywhere."""
    result = subprocess.run(
        [*PDBRIDGE, *command],
        cwd=tmp_path,
        env=env_with(REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL="postgresql://db/x"),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pdbridge: invalid configuration: SECRET_KEY: not set")
    assert not (tmp_path / "var" / "secret.key").exists()


def test_migrate_and_manifest_need_no_secret_key(tmp_path: Path) -> None:
    """Neither encrypts nor signs anything, so a release step or a CI job runs them without the
    key; neither writes a key file."""
    env = env_with(PUBLIC_BASE_URL="https://bridge.example.com")
    for command in (["migrate"], ["manifest"]):
        result = subprocess.run(
            [*PDBRIDGE, *command], cwd=tmp_path, env=env, capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "var" / "pdbridge.db").exists()
    assert not (tmp_path / "var" / "secret.key").exists()


def check(tmp_path: Path, redis_url: str) -> int:
    """`pdbridge worker --check` as a probe runs it: no SECRET_KEY needed."""
    return subprocess.run(
        [*PDBRIDGE, "worker", "--check"],
        cwd=tmp_path,
        env=env_with(REDIS_URL=redis_url),
        capture_output=True,
        timeout=60,
    ).returncode


def test_worker_check_follows_the_worker_on_this_host(tmp_path: Path) -> None:
    """`--check` passes once this host's worker polls the queue, and fails once it stopped."""
    with EmbeddedRedis(tmp_path / "redis") as redis:
        env = env_with(REDIS_URL=redis.url, SECRET_KEY=SECRET)
        subprocess.run([*PDBRIDGE, "migrate"], cwd=tmp_path, env=env, check=True, timeout=60)
        worker = subprocess.Popen(
            [*PDBRIDGE, "worker"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = Redis.from_url(redis.url)
            _wait_for(lambda: bool(client.exists(queue.health_check_key())), "a polling worker")
            client.close()
            assert check(tmp_path, redis.url) == 0
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=40) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert check(tmp_path, redis.url) == 1


@pytest.mark.anyio
async def test_worker_check_fails_without_a_worker_or_without_redis(tmp_path: Path) -> None:
    """No health key (no worker ever polled here), or no Redis at all: unhealthy, quickly."""
    with EmbeddedRedis(tmp_path / "redis") as redis:
        assert not await queue.worker_is_healthy(redis.url)
        assert not await queue.worker_is_healthy(redis.url, host="another-pod")
    assert not await queue.worker_is_healthy("redis://127.0.0.1:1/0", timeout=10)
