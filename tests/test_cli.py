"""The `pdbridge` command as operators run it: real subprocesses, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import psutil
import pytest

from service.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.slow

PDBRIDGE = [sys.executable, "-m", "service"]


def env_with(**values: str) -> dict[str, str]:
    """The test process's environment minus every pdbridge variable, plus `values`."""
    from service.config import Settings

    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(values)
    return env


def wait_ready(
    port: int, process: subprocess.Popen[bytes], timeout: float = 60.0
) -> httpx2.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "pdbridge run exited before it was ready"
        try:
            response = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
            if response.status_code == 200:
                return response
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("pdbridge run did not become ready")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_starts_everything_and_stops_cleanly(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """`pdbridge run` with no configuration (SQLite, an embedded Redis) serves /readyz from a
    web process beside a worker process; a signal leaves no process behind."""
    port = free_port()
    process = subprocess.Popen(
        [*PDBRIDGE, "run"],
        cwd=tmp_path,
        env=env_with(PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready = wait_ready(port, process)
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
        children = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any(c.endswith("service web") for c in commands), commands
        assert any(c.endswith("service worker") for c in commands), commands
        assert not any("service together" in c for c in commands)
        assert any("redis-server" in c for c in commands)
        assert (tmp_path / "var" / "pdbridge.db").exists()
        assert (tmp_path / "var" / "secret.key").exists()

        process.send_signal(stop_signal)
        assert process.wait(timeout=40) == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"left running: {alive}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def _children_by_role(process: subprocess.Popen[bytes]) -> dict[str, int]:
    found: dict[str, int] = {}
    for child in psutil.Process(process.pid).children():
        try:
            with_role = [a for a in child.cmdline() if a in ("web", "worker", "together")]
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue  # exited, not yet reaped
        if with_role:
            found[with_role[0]] = child.pid
    return found


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout} s: {what}")


@pytest.mark.parametrize(
    ("database", "roles"),
    [
        ("sqlite", {"web", "worker"}),
        pytest.param("postgresql", {"web", "worker"}, marks=pytest.mark.postgres),
    ],
)
def test_run_restarts_a_child_that_dies(
    request: pytest.FixtureRequest, tmp_path: Path, database: str, roles: set[str]
) -> None:
    """A child of `pdbridge run` that is killed is started again and /readyz answers again;
    `run` itself keeps going, and still stops cleanly on SIGTERM. The web and the worker are
    separate processes on both databases."""
    port = free_port()
    values = {"PORT": str(port)}
    if database == "postgresql":
        values["DATABASE_URL"] = request.getfixturevalue("database_url_postgres")
    process = subprocess.Popen(
        [*PDBRIDGE, "run"],
        cwd=tmp_path,
        env=env_with(**values),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(port, process)
        before = _children_by_role(process)
        assert set(before) == roles
        victim = sorted(roles)[-1]  # the worker
        psutil.Process(before[victim]).kill()
        _wait_for(
            lambda: _children_by_role(process).get(victim) not in (None, before[victim]),
            f"a new {victim} process",
        )
        wait_ready(port, process)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_children_do_not_outlive_a_killed_run(tmp_path: Path) -> None:
    """Even a `pdbridge run` killed with SIGKILL (no chance to clean up) leaves no orphaned
    web or worker serving on its own: the children are told when their parent dies."""
    port = free_port()
    process = subprocess.Popen(
        [*PDBRIDGE, "run"],
        cwd=tmp_path,
        env=env_with(PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        wait_ready(port, process)
        children = psutil.Process(process.pid).children(recursive=True)
        process.kill()
        process.wait()
        _gone, alive = psutil.wait_procs(children, timeout=40)
        assert alive == [], f"left running: {alive}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for child in children:  # only what this `run` started, never the session's own Redis
            with contextlib.suppress(psutil.Error):
                child.kill()


def _web_workers(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """uvicorn's worker processes (spawned by multiprocessing) under `process`."""
    found = []
    for child in psutil.Process(process.pid).children():
        with contextlib.suppress(psutil.Error):
            if "--multiprocessing-fork" in child.cmdline():
                found.append(child)
    return found


def test_web_concurrency_runs_that_many_web_processes(
    tmp_path: Path, embedded_redis: EmbeddedRedis
) -> None:
    """`WEB_CONCURRENCY=2 pdbridge web` serves from two processes on one port and stops on
    SIGTERM."""
    port = free_port()
    env = env_with(
        PORT=str(port),
        WEB_CONCURRENCY="2",
        REDIS_URL=embedded_redis.url,
        SECRET_KEY="web-concurrency-secret-0123456789abcdef",
    )
    subprocess.run([*PDBRIDGE, "migrate"], cwd=tmp_path, env=env, check=True, capture_output=True)
    process = subprocess.Popen(
        [*PDBRIDGE, "web"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_ready(port, process)
        _wait_for(lambda: len(_web_workers(process)) == 2, "two web worker processes")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
    finally:
        if process.poll() is None:
            for child in _web_workers(process):
                child.kill()
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def test_bad_configuration_stops_run_with_exit_2(tmp_path: Path) -> None:
    """PORT=abc stops `pdbridge run` before it starts anything: one line, naming PORT, exit 2."""
    result = subprocess.run(
        [*PDBRIDGE, "run"], cwd=tmp_path, env=env_with(PORT="abc"), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pdbridge: invalid configuration: PORT:")
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://app:hunter2-db-password@db.internal:3306/pdbridge"),
        ("REDIS_URL", "memcached://:hunter2-redis-password@cache.internal:6379/0"),
    ],
)
def test_a_bad_url_is_named_without_its_password(tmp_path: Path, name: str, value: str) -> None:
    """A refused DATABASE_URL or REDIS_URL is named in the one error line, its password not."""
    result = subprocess.run(
        [*PDBRIDGE, "migrate"], cwd=tmp_path, env=env_with(**{name: value}), capture_output=True
    )
    assert result.returncode == 2
    error = result.stderr.decode()
    assert error.startswith(f"pdbridge: invalid configuration: {name}:")
    assert "hunter2" not in error
    assert "***@" in error


def test_migrate_then_dead_letters_list(tmp_path: Path) -> None:
    """`pdbridge migrate` creates the schema; `dead-letters list` then prints an empty JSON list."""
    env = env_with(LOG_FORMAT="json")
    migrated = subprocess.run([*PDBRIDGE, "migrate"], cwd=tmp_path, env=env, capture_output=True)
    assert migrated.returncode == 0, migrated.stderr
    events = [json.loads(line) for line in migrated.stderr.decode().splitlines()]
    assert any(e["event"] == "migrate.done" for e in events)
    listed = subprocess.run(
        [*PDBRIDGE, "dead-letters", "list"], cwd=tmp_path, env=env, capture_output=True
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_replay_needs_an_id_or_all(tmp_path: Path) -> None:
    """`dead-letters replay` without an id or --all is a usage error."""
    env = env_with(REDIS_URL="redis://127.0.0.1:1/0")
    subprocess.run([*PDBRIDGE, "migrate"], cwd=tmp_path, env=env, capture_output=True, check=True)
    result = subprocess.run(
        [*PDBRIDGE, "dead-letters", "replay"], cwd=tmp_path, env=env, capture_output=True
    )
    assert result.returncode == 2
    assert b"give a dead letter ID or --all" in result.stderr


def test_manifest_lists_every_endpoint_on_the_public_url(tmp_path: Path) -> None:
    """`pdbridge manifest` prints the seven endpoints with their :variables on PUBLIC_BASE_URL."""
    env = env_with(PUBLIC_BASE_URL="https://bridge.example.com")
    result = subprocess.run([*PDBRIDGE, "manifest"], cwd=tmp_path, env=env, capture_output=True)
    assert result.returncode == 0
    manifest = json.loads(result.stdout)
    assert manifest["version"] == "v202101"
    endpoints = manifest["endpoints"]
    assert len(endpoints) == 7
    assert all(
        url.startswith("https://bridge.example.com/pipedrive/channels/:providerChannelId")
        for url in endpoints.values()
    )
    assert endpoints["getMessageById"].endswith(
        "/conversations/:sourceConversationId/messages/:sourceMessageId"
    )
