"""The API client under load and failure: single-flight refresh, shared rate limits, parking,
and the error tree, all against the Pipedrive stand-in with real workers and real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from sandbox.pipedrive import PipedriveStandin
from service.pipedrive import errors
from service.pipedrive.client import estimated_cost
from service.queue import JobContext
from service.store import dead_letters
from service.store.installations import Installation
from service.store.schema import installations as installations_table
from service.store.schema import utcnow
from tests.pipedrive.bridge import Bridge, jobs, running_bridge, standin

pytestmark = pytest.mark.anyio


async def whoami(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """A job making one real API call for an installation (the shape every Pipedrive job has)."""
    from service.store import installations

    inst = await installations.get(ctx["services"].db, payload["installation_id"])
    assert inst is not None
    return await ctx["services"].pipedrive.get(inst, "/users/me")


WHOAMI = jobs(whoami)


@pytest.fixture
def pd() -> Iterator[PipedriveStandin]:
    with standin() as server:
        yield server


@pytest.fixture
async def bridge(stack: tuple[str, str], pd: PipedriveStandin) -> AsyncIterator[Bridge]:
    async with running_bridge(stack, pd) as running:
        yield running


async def enqueue_whoami(bridge: Bridge, inst: Installation, count: int) -> None:
    for n in range(count):
        await bridge.services.queue.enqueue(
            "whoami", {"installation_id": inst.id, "company_id": inst.company_id}, key=f"who-{n}"
        )


async def expire_locally(bridge: Bridge, inst: Installation) -> None:
    async with bridge.services.db.engine.begin() as conn:
        await conn.execute(
            installations_table.update()
            .where(installations_table.c.id == inst.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    # A write behind the store's back: drop the processes' cached copies, as the store does.
    bridge.services.db.invalidate("installation")


async def test_expired_token_is_refreshed_once_for_twenty_concurrent_jobs(bridge: Bridge) -> None:
    """20 jobs on two workers find the token expired; exactly one refresh call is made."""
    inst = await bridge.install()
    bridge.pd.expire_access_tokens()
    await expire_locally(bridge, inst)
    await enqueue_whoami(bridge, inst, 20)
    await bridge.run_worker(*WHOAMI, workers=2)
    assert bridge.pd.refresh_calls == 1
    outcomes = await bridge.services.queue.job_outcomes()
    assert outcomes[("whoami", "complete")] == 20
    assert (await bridge.reload(inst)).token_version == inst.token_version + 1


async def test_token_refused_early_is_refreshed_once_on_401(bridge: Bridge) -> None:
    """When Pipedrive refuses a token we still think valid, 20 jobs share one refresh."""
    inst = await bridge.install()
    bridge.pd.expire_access_tokens()
    await enqueue_whoami(bridge, inst, 20)
    await bridge.run_worker(*WHOAMI, workers=2)
    assert bridge.pd.refresh_calls == 1
    assert (await bridge.services.queue.job_outcomes())[("whoami", "complete")] == 20


async def test_refused_refresh_marks_the_installation_and_stops(bridge: Bridge) -> None:
    """invalid_grant → needs_reauth, the job is a dead letter, and nothing retries the refresh."""
    inst = await bridge.install()
    bridge.pd.uninstall(1001, 2001)
    await expire_locally(bridge, inst)
    await enqueue_whoami(bridge, inst, 3)
    await bridge.run_worker(*WHOAMI)
    assert bridge.pd.refresh_calls == 1
    inst = await bridge.reload(inst)
    assert inst.status == "needs_reauth"
    letters = await dead_letters.list_all(bridge.services.db)
    assert len(letters) == 3
    assert {d.error.split(":")[0] for d in letters} <= {"AuthRevoked", "InstallationInactive"}
    assert all(d.tries == 1 for d in letters)


async def test_burst_limit_is_respected_by_four_workers(bridge: Bridge) -> None:
    """10 per 2 s: 100 calls from 4 workers all succeed, none inside an announced reset window."""
    inst = await bridge.install()
    bridge.pd.set_burst_limit(10, 2.0)
    await enqueue_whoami(bridge, inst, 100)
    await bridge.run_worker(*WHOAMI, workers=4)
    outcomes = await bridge.services.queue.job_outcomes()
    assert outcomes[("whoami", "complete")] == 100
    assert await dead_letters.list_all(bridge.services.db) == []
    assert bridge.pd.requests_inside_reset_window == 0
    refused = [r for r in bridge.pd.requests if r.status == 429]
    assert len(refused) <= 3, "the shared limiter should keep nearly every call under the limit"


async def test_daily_budget_parks_the_work_until_a_probe_succeeds(bridge: Bridge) -> None:
    """A daily-budget 429 parks the job (no retry loop); after the budget returns, a probe
    resumes it and the job completes without being dead-lettered.

    Decided by what was sent, not when: the budget comes back once the job is parked (polled,
    bounded), and however many probes a slow machine let go meanwhile were refused and came
    before the two successes (the probe, then the job's own call)."""
    inst = await bridge.install()
    bridge.pd.exhaust_daily_budget(company_id=1001)
    bridge.pd.clear_requests()
    await enqueue_whoami(bridge, inst, 1)
    worker = asyncio.create_task(bridge.run_worker(*WHOAMI))
    for _ in range(300):  # until the job is parked (bounded: 30 s)
        if (await bridge.services.queue.job_outcomes()).get(("whoami", "parked")):
            break
        await asyncio.sleep(0.1)
    assert [r.status for r in bridge.pd.requests][:1] == [429]
    bridge.pd.restore_daily_budget(company_id=1001)
    await asyncio.wait_for(worker, 30)
    statuses = [r.status for r in bridge.pd.requests]
    assert {r.api_path for r in bridge.pd.requests} == {"/v1/users/me"}
    assert statuses == sorted(statuses, reverse=True), "a refusal after the budget came back"
    assert statuses.count(200) == 2, statuses  # the probe, then the job's own call
    outcomes = await bridge.services.queue.job_outcomes()
    assert outcomes[("whoami", "parked")] >= 1
    assert outcomes[("whoami", "complete")] == 1
    assert await dead_letters.list_all(bridge.services.db) == []


async def test_a_probe_that_is_still_refused_parks_again(bridge: Bridge) -> None:
    """While the budget stays spent, each park ends in one probe and nothing else is sent.

    Decided by counts, not gaps: whatever the machine's load, no more requests may have gone
    out than the jobs' first tries plus one probe per park (1 s here) begun so far."""
    inst = await bridge.install()
    bridge.pd.exhaust_daily_budget(company_id=1001)
    bridge.pd.clear_requests()
    await enqueue_whoami(bridge, inst, 3)
    started = time.monotonic()
    worker = asyncio.create_task(bridge.run_worker(*WHOAMI))
    for _ in range(300):  # until two probes followed the first tries (bounded: 30 s)
        if len(bridge.pd.requests) >= 5:
            break
        await asyncio.sleep(0.1)
    sent = bridge.pd.requests  # read before the clock: a later request cannot inflate the count
    elapsed = time.monotonic() - started
    assert len(sent) >= 5, "the parked work was never probed"
    parks_begun = int(elapsed / bridge.settings.pipedrive_budget_probe_seconds) + 1
    assert len(sent) <= 3 + parks_begun, f"{len(sent)} requests in {elapsed:.1f} s"
    assert {r.status for r in sent} == {429}
    assert {(r.method, r.api_path) for r in sent} == {("GET", "/v1/users/me")}
    bridge.pd.restore_daily_budget(company_id=1001)
    await asyncio.wait_for(worker, 30)
    assert (await bridge.services.queue.job_outcomes())[("whoami", "complete")] == 3


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, None, errors.ServerError),
        (503, None, errors.ServerError),
        (404, None, errors.NotFound),
        (410, None, errors.NotFound),
        (400, {"success": False, "error": "bad field"}, errors.InvalidPayload),
        (422, {"success": False, "error": "limit"}, errors.InvalidPayload),
        (402, None, errors.AccountNotOpen),
        (
            403,
            {"success": False, "error": "Scope and URL mismatch", "errorCode": 403},
            errors.ScopeMissing,
        ),
        (403, {"success": False, "error": "no", "code": "feature_capping_x"}, errors.Forbidden),
    ],
)
async def test_error_responses_map_onto_the_error_tree(
    bridge: Bridge, status: int, body: Any, error: type[Exception]
) -> None:
    """Each documented failure raises its own class of the PipedriveError tree."""
    inst = await bridge.install()
    bridge.pd.fail_next("/v1/users/me", status, body)
    with pytest.raises(error) as caught:
        await bridge.services.pipedrive.get(inst, "/users/me")
    assert isinstance(caught.value, errors.PipedriveError)
    assert caught.value.status == status


async def test_cloudflare_html_block_parks_the_token(bridge: Bridge) -> None:
    """An HTML 403 is not parsed as JSON; the token is parked and no further call goes out."""
    inst = await bridge.install()
    bridge.pd.fail_next("/v1/users/me", 403)
    with pytest.raises(errors.CloudflareBlocked):
        await bridge.services.pipedrive.get(inst, "/users/me")
    sent = len(bridge.pd.requests)
    with pytest.raises(errors.DailyBudgetExhausted):
        await bridge.services.pipedrive.get(inst, "/users/me")
    assert len(bridge.pd.requests) == sent


async def test_burst_429_is_waited_out_and_resent(bridge: Bridge) -> None:
    """One burst 429 blocks the token for its reset, then the call goes through."""
    inst = await bridge.install()
    bridge.pd.fail_next("/v1/users/me", 429)
    user = await bridge.services.pipedrive.get(inst, "/users/me")
    assert user["id"] == 2001
    assert bridge.pd.requests_inside_reset_window == 0


async def test_every_call_is_logged_without_the_token(bridge: Bridge) -> None:
    """The call log has method, path, status, cost and rate-limit headers, and no secret."""
    inst = await bridge.install()
    token = bridge.services.crypto.decrypt((await bridge.reload(inst)).access_token_encrypted or "")
    with capture_logs() as logs:
        await bridge.services.pipedrive.get(inst, "/users/me")
    [call] = [e for e in logs if e["event"] == "pipedrive.call"]
    assert (call["method"], call["path"], call["status"], call["cost"]) == (
        "GET",
        "/users/me",
        200,
        2,
    )
    assert call["x_ratelimit_limit"] == "80"
    assert "x_ratelimit_remaining" in call
    assert token not in repr(logs)


async def test_transport_failure_is_transient(bridge: Bridge) -> None:
    """An unreachable Pipedrive raises a transport error the queue treats as retryable."""
    from service.errors import is_transient

    inst = await bridge.install()
    bridge.pd.stop()
    with pytest.raises(Exception) as caught:  # noqa: PT011 -- the class is httpx2's; checked below
        await bridge.services.pipedrive.get(inst, "/users/me")
    assert is_transient(caught.value)


def test_estimated_costs_follow_the_documented_table() -> None:
    """Single reads cost 2, lists 20, writes 10, deletes 6, webhook calls 10/10/6."""
    assert estimated_cost("GET", "/users/me") == 2
    assert estimated_cost("GET", "/persons/12") == 2
    assert estimated_cost("GET", "/persons") == 20
    assert estimated_cost("POST", "/channels/messages/receive") == 10
    assert estimated_cost("DELETE", "/channels/abc") == 6
    assert estimated_cost("GET", "/webhooks") == 10
    assert estimated_cost("DELETE", "/webhooks/3") == 6


async def test_single_flight_refresh_persists_the_rotated_refresh_token(bridge: Bridge) -> None:
    """After a refresh the new refresh token is stored: a second refresh later still works."""
    inst = await bridge.install()
    for _ in range(2):
        await expire_locally(bridge, await bridge.reload(inst))
        await bridge.services.pipedrive.get(await bridge.reload(inst), "/users/me")
    assert bridge.pd.refresh_calls == 2
    async with bridge.services.db.engine.connect() as conn:
        status = (await conn.execute(sa.select(installations_table.c.status))).scalar_one()
    assert status == "active"


async def test_refresh_refusal_in_another_body_shape_still_marks(bridge: Bridge) -> None:
    """A 400 to a refresh whose body only says "Invalid grant" in `error` is still a refusal."""
    inst = await bridge.install()
    await expire_locally(bridge, inst)
    bridge.pd.fail_next("/oauth/token", 400, {"error": "Invalid grant: refresh_token is invalid"})
    with pytest.raises(errors.AuthRevoked):
        await bridge.services.pipedrive.get(await bridge.reload(inst), "/users/me")
    assert (await bridge.reload(inst)).status == "needs_reauth"


async def test_spent_budget_without_the_daily_header_is_parked(bridge: Bridge) -> None:
    """429s that go on for more than ten seconds park the work even without the daily header."""
    inst = await bridge.install()
    bridge.pd.fail_next("/v1/users/me", 429, {"success": False, "error": "limit"}, count=50)
    with pytest.raises(errors.DailyBudgetExhausted):
        await bridge.services.pipedrive.get(inst, "/users/me")
    refused = [r for r in bridge.pd.requests if r.status == 429]
    assert 3 <= len(refused) <= 5
    assert bridge.pd.requests_inside_reset_window == 0


async def test_a_spent_budget_parks_every_installation_of_the_company(bridge: Bridge) -> None:
    """The daily budget is the company's: once one installation meets it, its siblings wait
    too instead of each sending into the same 429."""
    first = await bridge.install(1001, 2001)
    sibling = await bridge.install(1001, 2002)
    bridge.pd.exhaust_daily_budget(company_id=1001)
    with pytest.raises(errors.DailyBudgetExhausted):
        await bridge.services.pipedrive.get(first, "/users/me")
    sent = len(bridge.pd.requests)
    with pytest.raises(errors.DailyBudgetExhausted):
        await bridge.services.pipedrive.get(sibling, "/users/me")
    assert len(bridge.pd.requests) == sent
