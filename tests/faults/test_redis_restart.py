"""A Redis restart in the middle of traffic, with real processes: nothing lost, nothing twice.

Redis runs with an append-only file (`appendfsync always`; what production needs: see the
README's operations notes) and is killed with SIGKILL, then started again on the same port.
Customers write and agents answer before, during and after the outage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import pytest

from service.embedded_redis import EmbeddedRedis
from tests.faults.checker import Ledger, size
from tests.faults.processes import running_service

pytestmark = pytest.mark.slow

CHATS = [5550009, 5550010]


@pytest.mark.parametrize("layout", ["run", "web+worker"])
def test_a_redis_restart_loses_nothing_and_sends_nothing_twice(tmp_path: Path, layout: str) -> None:
    """Messages each way before, during and after the outage: every one reaches the other side
    exactly once and in order; webhooks and postMessage are answered 2xx while Redis is down
    (they are recorded), and no process of the service exits."""
    redis = EmbeddedRedis(tmp_path / "redis", persistent=True)
    redis.start()
    try:
        with running_service(tmp_path, layout, redis.url) as service:
            ledger = Ledger(service)
            ledger.open(CHATS)
            ledger.exchange(CHATS, size(2, 15), "before")
            ledger.wait_settled()

            redis.kill()
            during = size(1, 5)
            ledger.exchange(CHATS, during, "during")
            assert ledger.unacknowledged == [], "recorded and answered 2xx while Redis is away"
            assert httpx2.get(f"{service.url}/readyz", timeout=10).status_code == 503
            assert httpx2.get(f"{service.url}/healthz", timeout=10).status_code == 200
            metrics = httpx2.get(f"{service.url}/metrics", timeout=10)
            assert metrics.status_code == 200
            not_queued = 2 * len(CHATS) * during
            assert f"pdbridge_work_not_queued_total {not_queued}.0" in metrics.text
            time.sleep(size(3, 10))  # the outage lasts a while (nothing is decided by this wait)

            redis.start()
            ledger.exchange(CHATS, size(2, 15), "after")
            ledger.wait_settled(timeout=150)
            assert all(service.alive().values()), service.alive()
            secrets = service.secrets()
        ledger.check(f"Redis restart ({layout})")
        logs = {f.name: f.read_text() for f in service.logs.iterdir()}
        for name, text in logs.items():  # a full run at info level: no secret in any line
            leaked = [s[:6] + "…" for s in secrets if s in text]
            assert leaked == [], f"{name} logs secrets: {leaked}"
        worker_log = logs["run.log" if layout == "run" else "worker.log"]
        events = [json.loads(line)["event"] for line in worker_log.splitlines() if line[:1] == "{"]
        assert events.count("worker.redis_lost") == 1, "one warning per outage"
        assert events.count("worker.redis_back") == 1
        assert "Traceback" not in worker_log
    finally:
        redis.stop()
