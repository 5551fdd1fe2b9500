"""Pipedrive answers 503, or answers too late, for a while, then recovers: customers' messages
(`receive`) and the reports of agents' replies (`receive` with our id and status) both go
through it. Everything acknowledged arrives once, in order; no reply is sent twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.checker import Ledger, size
from tests.faults.processes import running_service

pytestmark = pytest.mark.slow

RECEIVE = "/v1/channels/messages/receive"
CHATS = [5551001, 5551002]


def test_pipedrive_503s_for_a_while(tmp_path: Path, pg_stack: tuple[str, str]) -> None:
    """The next calls to `receive` answer 503 (each conversation's drain meets several in a
    row and retries with backoff), with traffic both ways before and during; then it recovers."""
    database, redis_url = pg_stack
    with running_service(tmp_path, "web+worker", redis_url, database) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        service.pd.fail_next(RECEIVE, 503, count=size(4, 10))
        ledger.exchange(CHATS, size(3, 25), "503")
        ledger.wait_settled(timeout=size(90, 300))
        assert any(r.status == 503 for r in service.pd.requests), "the outage happened"
    ledger.check("pipedrive 503")


def test_pipedrive_times_out_for_a_while(tmp_path: Path, sqlite_stack: tuple[str, str]) -> None:
    """`receive` holds its answer past the service's HTTP timeout (then applies the call, so a
    retry repeats what Pipedrive already has); on SQLite and `pdbridge run`."""
    database, redis_url = sqlite_stack
    stall = size(2, 4)
    timeout = {"HTTP_TIMEOUT_SECONDS": "1"}
    with running_service(tmp_path, "run", redis_url, database, extra_env=timeout) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        service.pd.stall_next(RECEIVE, stall, count=size(3, 8))
        ledger.exchange(CHATS, size(3, 25), "timeout")
        ledger.wait_settled(timeout=size(90, 300))
    ledger.check("pipedrive timeout")
