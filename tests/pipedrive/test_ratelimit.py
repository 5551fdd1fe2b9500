"""The shared rate limiter's send log on real Redis: a send's entry ends up stamped with its
answer's time (never earlier), whether the next `acquire` carries the stamp or it goes out on its
own; `remaining: 0` closes the window at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from service.pipedrive import ratelimit
from service.pipedrive.ratelimit import RateLimiter

pytestmark = pytest.mark.anyio

KEY = "installation:1"


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[RateLimiter]:
    client = aioredis.Redis.from_url(redis_url)
    made = RateLimiter(client)
    try:
        yield made
    finally:
        await made.close()
        await client.aclose()


async def server_ms(limiter: RateLimiter) -> int:
    seconds, micros = await limiter.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def stamp_of(limiter: RateLimiter, ticket: str) -> float:
    score = await limiter.redis.zscore(limiter._keys(KEY)[0], ticket)
    assert score is not None
    return float(score)


async def test_the_next_acquire_stamps_the_answer_time(limiter: RateLimiter) -> None:
    first, _ = await limiter.acquire(KEY)
    admitted = await stamp_of(limiter, first)
    await asyncio.sleep(0.02)  # the call takes a while
    answered = await server_ms(limiter)
    await limiter.observe(KEY, first, {"x-ratelimit-limit": "80"})
    await limiter.acquire(KEY)
    stamped = await stamp_of(limiter, first)
    assert stamped >= answered > admitted
    assert await limiter.redis.hget(limiter._keys(KEY)[1], "limit") == b"80"


async def test_without_another_acquire_the_stamp_goes_out_on_its_own(
    limiter: RateLimiter,
) -> None:
    ticket, _ = await limiter.acquire(KEY)
    admitted = await stamp_of(limiter, ticket)
    await asyncio.sleep(0.02)
    answered = await server_ms(limiter)
    await limiter.observe(KEY, ticket, {})
    for _ in range(1000):  # bounded polling: up to 10 s on a busy machine
        if await stamp_of(limiter, ticket) != admitted:
            break
        await asyncio.sleep(0.01)
    assert await stamp_of(limiter, ticket) >= answered


async def test_remaining_zero_closes_the_window_at_once(limiter: RateLimiter) -> None:
    ticket, _ = await limiter.acquire(KEY)
    await limiter.observe(KEY, ticket, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"})
    blocked = await limiter.redis.hget(limiter._keys(KEY)[1], "blocked_until")
    assert blocked is not None
    assert int(blocked) > await server_ms(limiter) + 500


async def evalsha_calls(limiter: RateLimiter) -> int:
    stats = await limiter.redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_waiters_take_turns_in_order_without_a_herd_of_calls(
    limiter: RateLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten sends queue for a full window (one slot per 100 ms here): they get their slots in
    the order they asked, and only the first in line asks Redis each time, so the scripts run
    stay near one or two per send instead of every waiter polling at every turn."""
    monkeypatch.setattr(ratelimit, "WINDOW_MS", 100)
    first, _ = await limiter.acquire(KEY)
    await limiter.observe(KEY, first, {"x-ratelimit-limit": "1"})  # one send per window
    before = await evalsha_calls(limiter)
    order: list[int] = []

    async def send(n: int) -> None:
        ticket, _ = await limiter.acquire(KEY)
        order.append(n)
        await limiter.observe(KEY, ticket, {})

    await asyncio.gather(*(send(n) for n in range(10)))
    assert order == list(range(10))
    assert await evalsha_calls(limiter) - before <= 3 * 10
