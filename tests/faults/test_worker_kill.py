"""A worker gets SIGKILL in the middle of jobs (relays waiting on Pipedrive, replies being
handed to Telegram) and another worker finishes its work: nothing lost, nothing twice; a reply
caught mid-send may end `failed` (reported), never sent again.

A killed worker's running jobs keep arq's in-progress lease until it times out (job timeout +
10 s, 160 s), so that a job never runs twice at once. The full run waits that out with two
workers running from the start; the short run starts the second worker after the kill and
moves the lease clock forward (the leases' TTL set to now), which is what 160 s would do.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from tests.faults.checker import FULL, Ledger, size
from tests.faults.processes import running_service, wait_until

pytestmark = pytest.mark.slow

CHATS = [5554001, 5554002, 5554003]
RECEIVE = "/v1/channels/messages/receive"


def test_a_worker_killed_mid_jobs(tmp_path: Path, pg_stack: tuple[str, str]) -> None:
    database, redis_url = pg_stack
    workers = 2 if FULL else 1
    with running_service(tmp_path, "web+worker", redis_url, database, workers=workers) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        service.tg.send_delay = 0.5  # replies are in flight when the kill comes
        service.pd.stall_next(RECEIVE, 5.0, count=len(CHATS))  # and so are relays
        ledger.exchange(CHATS, size(3, 20), "kill")
        wait_until(lambda: len(service.tg.sent) >= 1, "a reply went out", 60)
        r = redis.Redis.from_url(redis_url)
        try:
            wait_until(lambda: bool(r.keys("arq:in-progress:*")), "jobs are running", 60)
            service.signal("worker", signal.SIGKILL)
            assert service.wait_exited("worker") == -signal.SIGKILL
            if not FULL:
                for key in r.keys("arq:in-progress:*"):  # the lease clock moves on (see above)
                    r.pexpire(key, 1)
                service.start("worker2")
        finally:
            r.close()
        ledger.exchange(CHATS, size(2, 10), "after kill")
        ledger.wait_settled(timeout=size(90, 400))
        assert service.alive()["worker2"]
    ledger.check("worker SIGKILL")
