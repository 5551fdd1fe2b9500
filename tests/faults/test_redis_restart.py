"""A Redis restart in the middle of traffic, with real processes: nothing lost, nothing twice.

Redis runs with an append-only file (what production needs: see the README's operations notes)
and is killed with SIGKILL, then started again on the same port. Customers write and agents
answer before, during and after the outage.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx2
import pytest

from service.embedded_redis import EmbeddedRedis
from tests.faults.processes import Running, running_service, wait_until

pytestmark = pytest.mark.slow

CHAT = 5550009


def _conversation_started(service: Running) -> None:
    assert service.customer_says(CHAT, "in 1", message_id=1) == 200
    wait_until(lambda: service.inbound_at_pipedrive() == ["in 1"], "the first message relayed")


@pytest.mark.parametrize("layout", ["run", "web+worker"])
def test_a_redis_restart_loses_nothing_and_sends_nothing_twice(tmp_path: Path, layout: str) -> None:
    """3 messages each way before the outage, 2 during it, 2 after: every one reaches the other
    side exactly once and in order; webhooks and postMessage are answered 2xx while Redis is
    down (they are recorded), and no process of the service exits."""
    redis = EmbeddedRedis(tmp_path / "redis", persistent=True)
    redis.start()
    try:
        with running_service(tmp_path, layout, redis.url) as service:
            _conversation_started(service)
            for n in (2, 3):
                assert service.customer_says(CHAT, f"in {n}", message_id=n) == 200
            for n in (1, 2, 3):
                assert service.agent_says(CHAT, f"out {n}").status_code == 200
            wait_until(
                lambda: (
                    len(service.outbound_at_telegram()) == 3
                    and len(service.inbound_at_pipedrive()) == 3
                ),
                "the traffic before the outage delivered",
            )

            redis.kill()
            for n in (4, 5):
                assert service.customer_says(CHAT, f"in {n}", message_id=n) == 200
                reply = service.agent_says(CHAT, f"out {n}")
                assert reply.status_code == 200, reply.text
            assert httpx2.get(f"{service.url}/readyz", timeout=10).status_code == 503
            assert httpx2.get(f"{service.url}/healthz", timeout=10).status_code == 200
            metrics = httpx2.get(f"{service.url}/metrics", timeout=10)
            assert metrics.status_code == 200
            assert "pdbridge_work_not_queued_total 4.0" in metrics.text
            time.sleep(3)  # the outage lasts a while (nothing is decided by this wait)

            redis.start()
            for n in (6, 7):
                assert service.customer_says(CHAT, f"in {n}", message_id=n) == 200
                assert service.agent_says(CHAT, f"out {n}").status_code == 200
            wait_until(
                lambda: (
                    len(service.outbound_at_telegram()) >= 7
                    and len(service.inbound_at_pipedrive()) >= 7
                ),
                "every message delivered after the outage",
                timeout=150,
            )
            time.sleep(1)  # let any duplicate that would follow arrive before counting
            assert service.inbound_at_pipedrive() == [f"in {n}" for n in range(1, 8)]
            assert service.outbound_at_telegram() == [f"out {n}" for n in range(1, 8)]
            assert all(service.alive().values()), service.alive()
            secrets = service.secrets()
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
