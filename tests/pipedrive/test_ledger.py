"""The API cost ledger: every Pipedrive call counted per company and day, against the stand-in's
own count of tokens spent; the daily roll-up is idempotent and outlives a Redis flush; the admin
API and /metrics show it; the notes window follows the budget."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from jobs import maintenance
from sandbox.pipedrive import PipedriveStandin
from service.pipedrive import errors
from service.pipedrive.ledger import (
    Ledger,
    budget_left_fraction,
    charged_tokens,
    family,
    notes_window,
    plan_minimum,
)
from service.store import Database, api_usage
from service.store.installations import Installation
from tests.conftest import ADMIN_TOKEN
from tests.pipedrive.bridge import Bridge, running_bridge, standin

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
COMPANY = 1001


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
async def bridge(stack: tuple[str, str], pd: PipedriveStandin) -> AsyncIterator[Bridge]:
    async with running_bridge(stack, pd) as running:
        yield running


def api_calls(pd: PipedriveStandin) -> int:
    """Requests that reached the stand-in's API (OAuth's token endpoint is not the API)."""
    return sum(1 for r in pd.requests if r.api_path.startswith("/v1/"))


async def admin_usage(bridge: Bridge) -> dict[str, object]:
    response = await bridge.http.get("/admin/installations", headers=ADMIN)
    assert response.status_code == 200, response.text
    [installation] = response.json()["data"]
    usage: dict[str, object] = installation["api_usage_today"]
    return usage


async def scrape(bridge: Bridge) -> dict[tuple[str, str], float]:
    """The ledger's samples of /metrics by (name, family or company_id)."""
    response = await bridge.http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, sample.labels.get("family") or sample.labels.get("company_id", "")): (
            sample.value
        )
        for metric in text_string_to_metric_families(response.text)
        if metric.name.startswith("pdbridge_pipedrive_api")
        for sample in metric.samples
    }


async def spend(bridge: Bridge, inst: Installation, *, gets: int, lists: int) -> None:
    """`gets` single-entity reads (2 tokens each) and `lists` webhook lists (10 each)."""
    for _ in range(gets):
        await bridge.services.pipedrive.get(inst, "/users/me")
    for _ in range(lists):
        await bridge.services.pipedrive.get(inst, "/webhooks")


# --- against the stand-in, both stacks -----------------------------------------------------------


async def test_every_call_is_counted_and_shown_in_admin_and_metrics(bridge: Bridge) -> None:
    """N calls → N more calls and their documented cost in the ledger; the totals equal what
    the stand-in charged the company, and the budget is Pipedrive's own header figure."""
    inst = await bridge.install()
    ledger = bridge.services.pipedrive.ledger
    # The install itself (whoami, the webhooks) is counted as well, to the token.
    before = (await ledger.usage(bridge.services.db, [COMPANY]))[COMPANY]
    assert before.calls == api_calls(bridge.pd) > 0
    assert before.tokens == bridge.pd.daily_tokens_spent(COMPANY)

    await spend(bridge, inst, gets=20, lists=3)

    usage = await admin_usage(bridge)
    assert usage["calls"] == before.calls + 23
    assert usage["tokens"] == before.tokens + 20 * 2 + 3 * 10
    assert usage["tokens"] == bridge.pd.daily_tokens_spent(COMPANY)
    assert usage["budget"] == bridge.pd.daily_budget
    assert usage["budget_left"] == bridge.pd.daily_budget - bridge.pd.daily_tokens_spent(COMPANY)
    assert usage["budget_source"] == "pipedrive"

    samples = await scrape(bridge)
    users_calls = sum(1 for r in bridge.pd.requests if r.api_path == "/v1/users/me")
    assert samples[("pdbridge_pipedrive_api_calls_total", "users")] == users_calls
    assert samples[("pdbridge_pipedrive_api_tokens_total", "users")] == users_calls * 2
    assert samples[("pdbridge_pipedrive_api_tokens_total", "webhooks")] > 0
    assert samples[("pdbridge_pipedrive_api_tokens_today", str(COMPANY))] == usage["tokens"]
    assert samples[("pdbridge_pipedrive_api_budget_left", str(COMPANY))] == usage["budget_left"]


async def test_roll_up_is_idempotent_and_survives_a_redis_flush(bridge: Bridge) -> None:
    """The sweeper's roll-up sets the day's row (twice changes nothing); after Redis loses
    everything the admin API still shows the day's spend, and later calls add to it."""
    inst = await bridge.install()
    await spend(bridge, inst, gets=10, lists=1)
    svc = bridge.services
    today = svc.pipedrive.ledger.today()
    spent = bridge.pd.daily_tokens_spent(COMPANY)
    calls = api_calls(bridge.pd)

    for _ in range(2):
        assert await maintenance.sweep_stuck_deliveries({"services": svc}) == 0
        [row] = await api_usage.history(svc.db, COMPANY)
        assert (row.day, row.tokens, row.calls) == (today, spent, calls)
        assert (row.budget, row.budget_left) == (30_000, 30_000 - spent)

    await svc.queue.redis.flushdb()
    usage = await admin_usage(bridge)
    assert (usage["tokens"], usage["calls"]) == (spent, calls)
    assert usage["budget_left"] == 30_000 - spent

    await spend(bridge, inst, gets=5, lists=0)
    usage = await admin_usage(bridge)
    assert (usage["tokens"], usage["calls"]) == (spent + 10, calls + 5)
    for _ in range(2):
        await maintenance.roll_up_api_usage(svc)
        [row] = await api_usage.history(svc.db, COMPANY)
        assert (row.tokens, row.calls) == (spent + 10, calls + 5)
    assert (await admin_usage(bridge))["tokens"] == spent + 10 == bridge.pd.daily_tokens_spent()


async def test_spent_budget_is_a_zero_fraction_and_the_longest_window(bridge: Bridge) -> None:
    """When Pipedrive answers the daily-budget 429, the call costs nothing, what is left is 0,
    and the notes window is four times its base."""
    inst = await bridge.install()
    svc = bridge.services
    fraction = await budget_left_fraction(svc, COMPANY)
    assert fraction == pytest.approx((30_000 - bridge.pd.daily_tokens_spent()) / 30_000)
    assert notes_window(600, fraction) == 300

    before = (await svc.pipedrive.ledger.usage(svc.db, [COMPANY]))[COMPANY]
    bridge.pd.exhaust_daily_budget(company_id=COMPANY)
    with pytest.raises(errors.DailyBudgetExhausted):
        await svc.pipedrive.get(inst, "/users/me")
    after = (await svc.pipedrive.ledger.usage(svc.db, [COMPANY]))[COMPANY]
    assert (after.calls, after.tokens) == (before.calls + 1, before.tokens)
    assert after.budget_left == 0
    assert await budget_left_fraction(svc, COMPANY) == 0.0
    assert notes_window(600, await budget_left_fraction(svc, COMPANY)) == 2400


async def test_without_budget_headers_the_plan_minimum_is_the_budget(
    stack: tuple[str, str],
) -> None:
    """Pipedrive may leave out the daily-budget headers: the documented plan figure (from the
    burst limit, one seat) is the budget, less our own spend."""
    with standin() as pd:
        pd.daily_budget_headers = False
        async with running_bridge(stack, pd) as bridge:
            inst = await bridge.install()
            await spend(bridge, inst, gets=4, lists=0)
            usage = await admin_usage(bridge)
            assert usage["budget_source"] == "plan_minimum"
            assert usage["budget"] == 30_000  # burst limit 80 with OAuth: Lite, one seat
            assert usage["budget_left"] == 30_000 - pd.daily_tokens_spent()
            assert usage["tokens"] == pd.daily_tokens_spent()


async def test_a_ledger_that_cannot_reach_redis_loses_no_call(bridge: Bridge) -> None:
    """The call's answer still comes back (the call happened: failing it would send it again),
    the miss is logged, and the admin API answers from the database."""
    inst = await bridge.install()
    svc = bridge.services
    await maintenance.roll_up_api_usage(svc)
    spent = bridge.pd.daily_tokens_spent()
    unreachable = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    working, svc.pipedrive.ledger = svc.pipedrive.ledger, Ledger(unreachable)
    try:
        with capture_logs() as logs:
            me = await svc.pipedrive.get(inst, "/users/me")
            usage = await admin_usage(bridge)
    finally:
        svc.pipedrive.ledger = working
        await unreachable.aclose()
    assert me["company_id"] == COMPANY
    events = [e["event"] for e in logs]
    assert "ledger.not_recorded" in events
    assert "ledger.redis_unavailable" in events
    assert usage["tokens"] == spent  # the rolled-up figure; the unrecorded call is the cost


# --- the ledger on its own, real Redis and both databases ----------------------------------------


async def test_roll_up_after_midnight_closes_yesterday(redis_url: str, db: Database) -> None:
    """A call at 23:59 UTC belongs to that day; the roll-ups of the hour after midnight write
    it, later ones leave the closed day alone. Budget headers that are not numbers are
    ignored, never stored."""
    now = [datetime(2026, 3, 1, 23, 59, tzinfo=UTC)]
    client = aioredis.Redis.from_url(redis_url)
    ledger = Ledger(client, clock=lambda: now[0])
    try:
        await ledger.record(
            company_id=7,
            auth_kind="oauth",
            path="/channels/messages/receive",
            cost=10,
            status=200,
            headers={"x-daily-ratelimit-token-limit": "lots", "x-ratelimit-limit": "160"},
        )
        now[0] += timedelta(minutes=2)
        assert await ledger.roll_up(db) == 1
        [row] = await api_usage.history(db, 7)
        assert (row.day, row.tokens, row.calls) == (date(2026, 3, 1), 10, 1)
        assert (row.budget, row.budget_left) == (None, None)
        yesterday = (await ledger.usage(db, [7], date(2026, 3, 1)))[7]
        assert (yesterday.budget, yesterday.budget_source) == (60_000, "plan_minimum")
        today = (await ledger.usage(db, [7]))[7]
        assert (today.tokens, today.calls, today.fraction_left) == (0, 0, None)
        now[0] += timedelta(hours=2)  # an hour past midnight yesterday is closed
        assert await ledger.roll_up(db) == 0
    finally:
        await client.aclose()


async def test_a_late_write_never_overwrites_a_newer_budget_reading(
    redis_url: str, db: Database
) -> None:
    """Two processes each hold calls for up to FLUSH_SECONDS: the one that saw Pipedrive's
    budget earlier may write last, and the newer reading must still win; both counts add up."""
    earlier = aioredis.Redis.from_url(redis_url)
    later = aioredis.Redis.from_url(redis_url)
    web, worker = Ledger(earlier), Ledger(later)

    async def answered(ledger: Ledger, remaining: str) -> None:
        headers = {"x-daily-ratelimit-token-limit": "30000",
                   "x-daily-ratelimit-token-remaining": remaining}  # fmt: skip
        await ledger.record(
            company_id=8, auth_kind="oauth", path="/users/me", cost=2, status=200, headers=headers
        )

    try:
        await answered(web, "29000")
        await asyncio.sleep(0.01)  # the worker's answer comes after the web's
        await answered(worker, "28000")
        await worker.flush()
        await web.flush()
        usage = (await web.usage(db, [8]))[8]
        assert (usage.calls, usage.tokens, usage.budget_left) == (2, 4, 28000)
    finally:
        await earlier.aclose()
        await later.aclose()


async def test_counts_wait_in_the_process_while_redis_is_away(redis_url: str, db: Database) -> None:
    """A write that fails keeps the counts (logged): the next write carries them, so a Redis
    blip loses no call from the day's figure."""
    client = aioredis.Redis.from_url(redis_url)
    ledger = Ledger(client)
    real = ledger.redis
    try:
        await ledger.record(company_id=9, auth_kind="oauth", path="/notes", cost=10, status=201,
                            headers={})  # fmt: skip
        ledger.redis = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
        with capture_logs() as logs:
            await ledger.flush()
        await ledger.redis.aclose()
        assert [e["event"] for e in logs] == ["ledger.not_recorded"]
        ledger.redis = real
        await ledger.record(company_id=9, auth_kind="oauth", path="/notes", cost=10, status=201,
                            headers={})  # fmt: skip
        usage = (await ledger.usage(db, [9]))[9]
        assert (usage.calls, usage.tokens) == (2, 20)
    finally:
        await client.aclose()


# --- pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "window"),
    [
        (None, 600.0),  # unknown budget: the base
        (1.0, 300.0),  # plentiful: half
        (0.5, 300.0),
        (0.35, 450.0),  # halfway back to the base
        (0.2, 600.0),  # the base
        (0.1, 1500.0),  # running short: growing
        (0.0, 2400.0),  # spent: four times
        (-0.3, 2400.0),  # clamped
        (7.0, 300.0),  # clamped
        (float("nan"), 600.0),
    ],
)
def test_notes_window_follows_the_budget(fraction: float | None, window: float) -> None:
    assert notes_window(600, fraction) == pytest.approx(window)


def test_notes_window_never_grows_as_the_budget_grows() -> None:
    """More budget left never means a longer window (no step backwards anywhere)."""
    windows = [notes_window(600, f / 100) for f in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(windows))


def test_costs_families_and_plan_figures() -> None:
    """Refused calls cost nothing; labels stay a fixed set; plans follow the documented table."""
    assert charged_tokens(10, 200, {}) == 10
    assert charged_tokens(10, 404, {}) == 10
    assert charged_tokens(10, 429, {}) == 0
    assert charged_tokens(10, 401, {}) == 0
    assert charged_tokens(10, 403, {"content-type": "text/html"}) == 0
    assert family("/channels/messages/receive") == "channels"
    assert family("/persons/search?term=x") == "persons"
    assert family("/dealFields") == "fields"
    assert family("/12345/anything") == "other"
    assert plan_minimum("oauth", 400) == 150_000
    assert plan_minimum("api_token", 20) == 30_000
    assert plan_minimum("oauth", 10) is None  # the search API's own limit says nothing
    assert plan_minimum("oauth", None) is None


def test_counts_go_out_on_their_own_in_a_later_event_loop(redis_url: str) -> None:
    """The write-behind timer belongs to an event loop: a ledger that outlived the loop it
    first counted in (a closed loop's timer never fires) still writes without being read."""
    ledger = Ledger(aioredis.Redis.from_url(redis_url))
    key = f"pdbridge:ledger:{ledger.today().isoformat()}:11"

    async def count() -> None:
        await ledger.record(company_id=11, auth_kind="oauth", path="/notes", cost=10,
                            status=201, headers={})  # fmt: skip

    async def written_on_its_own() -> bytes | None:
        client = aioredis.Redis.from_url(redis_url)  # a client for the new loop
        ledger.redis = client
        try:
            await count()
            for _ in range(500):  # bounded polling (10 s), never calling flush
                calls: bytes | None = await client.hget(key, "calls")
                if calls is not None:
                    return calls
                await asyncio.sleep(0.02)
            return None
        finally:
            await client.aclose()

    asyncio.run(count())  # its timer dies with this loop, the count stays pending
    assert asyncio.run(written_on_its_own()) == b"2"
