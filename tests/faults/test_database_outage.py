"""PostgreSQL is unavailable for a few seconds (this session's database refuses connections
and its open ones are cut; the shared server keeps running). Webhooks and postMessage that
cannot be recorded get a non-2xx, and their senders try again; what was acknowledged arrives
once and in order; relays and sends in flight retry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.checker import Ledger, size
from tests.faults.conftest import DatabaseGate
from tests.faults.processes import running_service

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHATS = [5555001, 5555002]


def test_the_database_away_for_a_few_seconds(
    tmp_path: Path, pg_stack: tuple[str, str], database_gate: DatabaseGate
) -> None:
    database, redis_url = pg_stack
    with running_service(tmp_path, "web+worker", redis_url, database) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        service.tg.send_delay = 0.2
        ledger.exchange(CHATS, size(3, 15), "before outage")
        database_gate.close()
        outage_ends = time.monotonic() + size(3, 10)
        ledger.exchange(CHATS, size(2, 5), "during outage")  # refused: sent again below
        assert ledger.unacknowledged, "the outage refused what it could not record"
        time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage lasts; nothing decided
        database_gate.open()
        ledger.send_again(retry_for=60)
        ledger.exchange(CHATS, size(3, 15), "after outage")
        ledger.wait_settled(timeout=size(90, 300))
        assert all(service.alive().values()), service.alive()
    ledger.check("database outage")
