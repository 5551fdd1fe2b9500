"""429 storms from Pipedrive: the burst limit, then a spent daily budget. Nothing is lost or
sent twice, and no call is made inside a window a 429 announced (`x-ratelimit-reset`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.checker import Ledger, size
from tests.faults.processes import running_service, wait_until

pytestmark = pytest.mark.slow

CHATS = [5552001, 5552002, 5552003]
RECEIVE = "/v1/channels/messages/receive"


def test_a_burst_limit_storm(tmp_path: Path, pg_stack: tuple[str, str]) -> None:
    """Pipedrive allows a handful of calls per two seconds while customers in three chats
    write and agents answer (every reply is reported through `receive` too)."""
    database, redis_url = pg_stack
    with running_service(tmp_path, "web+worker", redis_url, database) as service:
        ledger = Ledger(service)
        ledger.open(CHATS)
        service.pd.set_burst_limit(3, 2.0)
        ledger.exchange(CHATS, size(3, 20), "burst")
        ledger.wait_settled(timeout=size(90, 400))
        assert service.pd.requests_inside_reset_window == 0
    ledger.check("429 burst limit")


def test_a_spent_daily_budget(tmp_path: Path, sqlite_stack: tuple[str, str]) -> None:
    """The company's daily budget is spent: the work parks, a probe every few seconds is
    refused, then the budget comes back and everything recorded meanwhile goes through."""
    database, redis_url = sqlite_stack
    probe = {"PIPEDRIVE_BUDGET_PROBE_SECONDS": str(size(2, 5))}
    with running_service(tmp_path, "run", redis_url, database, extra_env=probe) as service:
        ledger = Ledger(service)
        ledger.open(CHATS[:2])
        service.pd.exhaust_daily_budget(company_id=1001)
        ledger.exchange(CHATS[:2], size(3, 20), "daily")

        def daily_429s() -> int:
            return sum(
                r.status == 429 and r.note == "daily token budget exhausted"
                for r in service.pd.requests
            )

        wait_until(lambda: daily_429s() >= 2, "the first call and a probe were refused", 60)
        service.pd.restore_daily_budget(company_id=1001)
        ledger.wait_settled(timeout=size(90, 300))
        assert service.pd.requests_inside_reset_window == 0
    ledger.check("429 daily budget")
