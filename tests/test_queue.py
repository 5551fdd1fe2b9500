"""The queue against real Redis and a real worker: jobs run, retries happen, failures are kept."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from jobs.worker import build_worker
from service import queue as queue_module
from service.config import Settings
from service.context import Services
from service.errors import PermanentError, TransientError
from service.queue import JobContext, Queue
from service.store import dead_letters

pytestmark = pytest.mark.anyio


async def run_burst(settings: Settings, *jobs: queue_module.RegisteredJob) -> Any:
    """Run a real arq worker until the queue is empty; returns the worker for its counters."""
    worker = build_worker(settings, burst=True, extra_functions=jobs, handle_signals=False)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


async def test_enqueued_job_runs_in_a_real_worker(settings: Settings, services: Services) -> None:
    """A job enqueued through `Queue.enqueue` is run by the worker with its payload."""
    seen: list[dict[str, Any]] = []

    async def remember(ctx: JobContext, payload: dict[str, Any]) -> str:
        seen.append(payload)
        return "done"

    assert await services.queue.enqueue("remember", {"n": 1, "text": "héllo 👋"}, key="job-1")
    worker = await run_burst(settings, queue_module.job(remember))

    assert seen == [{"n": 1, "text": "héllo 👋"}]
    assert worker.jobs_complete == 1
    assert await services.queue.job_outcomes() == {("remember", "complete"): 1}


async def test_same_key_is_enqueued_once(settings: Settings, services: Services) -> None:
    """A second enqueue under the same job key is refused while the first is known."""
    calls: list[int] = []

    async def count(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(payload["n"])

    assert await services.queue.enqueue("count", {"n": 1}, key="same")
    assert not await services.queue.enqueue("count", {"n": 2}, key="same")
    assert await services.queue.depth() == 1
    await run_burst(settings, queue_module.job(count))
    assert calls == [1]


async def test_job_that_raises_becomes_a_dead_letter(
    settings: Settings, services: Services
) -> None:
    """A job failing with a bug is recorded as failed with its payload, not lost or retried."""
    tries: list[int] = []

    async def broken(ctx: JobContext, payload: dict[str, Any]) -> None:
        tries.append(ctx["job_try"])
        raise ValueError("cannot parse the thing")

    payload = {"company_id": 42, "channel": "chan-1", "body": "x"}
    await services.queue.enqueue("broken", payload, key="broken-1")
    with capture_logs() as logs:
        worker = await run_burst(settings, queue_module.job(broken))

    assert tries == [1]
    assert worker.jobs_failed == 1
    [letter] = await dead_letters.list_all(services.db)
    assert letter.kind == "broken"
    assert letter.payload == payload
    assert letter.company_id == 42
    assert letter.channel == "chan-1"
    assert letter.error == "ValueError: cannot parse the thing"
    assert letter.job_id == "broken-1"
    event = next(e for e in logs if e["event"] == "job.dead_lettered")
    assert event["log_level"] == "error"
    assert event["dead_letter_id"] == letter.id


async def test_permanent_error_is_not_retried(settings: Settings, services: Services) -> None:
    """A PermanentError goes to the dead letters on its first try."""
    tries: list[int] = []

    async def rejected(ctx: JobContext, payload: dict[str, Any]) -> None:
        tries.append(ctx["job_try"])
        raise PermanentError("payload rejected")

    await services.queue.enqueue("rejected", {}, key="rejected-1")
    await run_burst(settings, queue_module.job(rejected))
    assert tries == [1]
    assert len(await dead_letters.list_all(services.db)) == 1


async def test_transient_error_is_retried_until_it_passes(
    settings: Settings, services: Services
) -> None:
    """A TransientError is retried after the delay it names, and then completes."""
    tries: list[int] = []

    async def flaky(ctx: JobContext, payload: dict[str, Any]) -> str:
        tries.append(ctx["job_try"])
        if len(tries) < 3:
            raise TransientError("upstream 503", retry_after=0.01)
        return "ok"

    await services.queue.enqueue("flaky", {}, key="flaky-1")
    await run_burst(settings, queue_module.job(flaky))

    assert tries == [1, 2, 3]
    assert await dead_letters.list_all(services.db) == []
    outcomes = await services.queue.job_outcomes()
    assert outcomes == {("flaky", "retried"): 2, ("flaky", "complete"): 1}


async def test_transient_error_that_never_passes_is_dead_lettered(
    settings: Settings, services: Services
) -> None:
    """After MAX_TRIES transient failures the job is kept as a dead letter, not dropped."""
    tries: list[int] = []

    async def down(ctx: JobContext, payload: dict[str, Any]) -> None:
        tries.append(ctx["job_try"])
        raise TransientError("still down", retry_after=0.001)

    await services.queue.enqueue("down", {"k": "v"}, key="down-1")
    await run_burst(settings, queue_module.job(down))

    assert tries == list(range(1, queue_module.MAX_TRIES + 1))
    [letter] = await dead_letters.list_all(services.db)
    assert letter.tries == queue_module.MAX_TRIES
    assert letter.payload == {"k": "v"}


async def test_msgpack_refuses_values_pickle_would_take(services: Services) -> None:
    """The queue carries plain data only; an arbitrary object cannot be enqueued."""

    class Thing:
        pass

    with pytest.raises(TypeError):
        await services.queue.enqueue("anything", {"thing": Thing()}, key="thing")


def test_backoff_grows_and_is_capped() -> None:
    """Retry delays grow exponentially, with jitter, up to five minutes."""
    assert 0.5 <= queue_module.backoff(1) <= 1.0
    assert 4.0 <= queue_module.backoff(4) <= 8.0
    assert queue_module.backoff(30) <= queue_module.BACKOFF_CAP


async def test_queue_connects_with_retry_settings(redis_url: str) -> None:
    """The queue's Redis client retries on connection errors instead of failing at once."""
    settings = queue_module.redis_settings(redis_url)
    assert settings.retry_on_timeout
    assert settings.retry is not None
    queue = await Queue.connect(redis_url)
    try:
        await queue.ping()
    finally:
        await queue.close()


GROUPED = queue_module.JobSpec("drain_group", group=lambda p: f"test:{p['g']}")


async def test_a_group_has_one_queued_job_however_much_arrives(
    settings: Settings, services: Services
) -> None:
    """Work for a group that already has a queued drain adds no job, only marks the group;
    the drain sees the mark and goes round again before it lets the group go."""
    runs: list[tuple[str, str]] = []  # (group, job id) of every pass

    async def drain_group(ctx: JobContext, payload: dict[str, Any]) -> None:
        queue = Queue(ctx["redis"])
        while True:
            runs.append((payload["g"], ctx["job_id"]))
            if len([r for r in runs if r[0] == "a"]) == 2:  # work arrives during a later pass
                assert not await queue.schedule(GROUPED, {"g": "a", "n": 99})
            if not await queue.finish(GROUPED, payload, ctx["job_id"]):
                return

    assert await services.queue.schedule(GROUPED, {"g": "a", "n": 1})
    for n in range(2, 50):
        assert not await services.queue.schedule(GROUPED, {"g": "a", "n": n})
    assert await services.queue.schedule(GROUPED, {"g": "b", "n": 1})
    assert await services.queue.depth() == 2
    worker = await run_burst(settings, queue_module.job(drain_group, GROUPED))
    assert worker.jobs_complete == 2, "one job per group"
    # Group a's one job went round for what was marked before it started and again for what
    # arrived while it ran; group b's job made one pass.
    passes_a = [job for group, job in runs if group == "a"]
    assert len(set(passes_a)) == 1
    assert len(passes_a) >= 3
    assert [group for group, _ in runs].count("b") == 1
    assert await services.queue.schedule(GROUPED, {"g": "a", "n": 100}), "released afterwards"


async def test_a_group_mark_without_its_job_is_replaced(
    settings: Settings, services: Services
) -> None:
    """A mark whose job is gone (it gave up, or Redis lost it) does not block the group."""
    assert await services.queue.schedule(GROUPED, {"g": "c", "n": 1})
    await services.queue.redis.delete(*await services.queue.redis.keys("arq:job:drain_group:*"))
    await services.queue.redis.delete(services.queue.queue_name)
    assert await services.queue.schedule(GROUPED, {"g": "c", "n": 2})
    assert await services.queue.depth() == 1


async def test_a_failed_drain_releases_its_group(settings: Settings, services: Services) -> None:
    """A drain that fails for good is dead-lettered and its group is free for the next arrival."""

    async def drain_group(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise PermanentError("this conversation cannot be drained")

    assert await services.queue.schedule(GROUPED, {"g": "d", "n": 1})
    await run_burst(settings, queue_module.job(drain_group, GROUPED))
    assert [d.kind for d in await dead_letters.list_all(services.db)] == ["drain_group"]
    assert await services.queue.schedule(GROUPED, {"g": "d", "n": 2})
