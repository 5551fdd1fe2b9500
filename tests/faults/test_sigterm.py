"""SIGTERM under load, both directions: the processes stop while relays and sends are in
flight, and are started again (a deploy). Senders whose requests went unanswered meanwhile try
again. Nothing is lost or sent twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.faults.checker import FULL, Ledger, size
from tests.faults.processes import running_service, wait_until

pytestmark = pytest.mark.slow

CHATS = [5556001, 5556002, 5556003]
RECEIVE = "/v1/channels/messages/receive"

LAYOUTS = ["web+worker", "run"] if FULL else ["web+worker"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sigterm_under_load_then_restart(
    tmp_path: Path, layout: str, pg_stack: tuple[str, str]
) -> None:
    database, redis_url = pg_stack
    with running_service(tmp_path, layout, redis_url, database) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        service.tg.send_delay = 0.3
        service.pd.stall_next(RECEIVE, 1.0, count=len(CHATS))
        ledger.exchange(CHATS, size(4, 25), "before sigterm")
        wait_until(lambda: len(service.tg.sent) >= 1, "replies are going out", 60)
        roles = list(service.processes)
        for role in roles:
            service.signal(role, signal.SIGTERM)
        ledger.exchange(CHATS, 1, "while stopping")  # answered or refused: both are fine
        for role in roles:  # uvicorn re-raises the signal it stopped on: -SIGTERM is clean
            code = service.wait_exited(role, timeout=60)
            assert code in (0, -signal.SIGTERM), f"{role} exited with {code}"
        ledger.exchange(CHATS, size(1, 3), "while down")  # refused: sent again below
        for role in roles:
            service.start(role)
        wait_until(service.ready, "the service is back", 60)
        ledger.send_again(retry_for=60)
        ledger.exchange(CHATS, size(2, 10), "after restart")
        ledger.wait_settled(timeout=size(90, 300))
    for log in service.logs.iterdir():
        assert "Traceback" not in log.read_text(), f"{log.name} has a traceback"
    ledger.check(f"SIGTERM ({layout})")
