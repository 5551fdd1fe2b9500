"""Cached channels and installations across processes: a change made by one process (the web's
admin API moving a channel's sink) reaches the other's cache (the worker's) through Redis at
once, not after the cache's own expiry. Two Database objects on one SQLite file stand for the
two processes (spelled differently, so the in-process registry does not link them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from service.coordination import Coordination
from service.store import Database
from service.store.migrate import upgrade

pytestmark = pytest.mark.anyio


async def test_a_change_in_one_process_empties_the_others_cache(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "sub").mkdir()
    web = Database(f"sqlite:///{tmp_path / 'pd.db'}")
    worker = Database(f"sqlite:///{tmp_path / 'sub' / '..' / 'pd.db'}")
    assert web.url != worker.url
    web_redis, worker_redis = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    web.on_invalidate = Coordination(web_redis).announce_invalidation
    following = asyncio.ensure_future(Coordination(worker_redis).follow_invalidations(worker))
    try:
        await upgrade(web)
        worker.cache.put("channel", 7, "the old sink", seconds=300)
        for _ in range(200):  # bounded: until the follower has subscribed
            if (await web_redis.pubsub_numsub("pdbridge:cache-invalidated"))[0][1] >= 1:
                break
            await asyncio.sleep(0.01)
        web.invalidate("channel")
        for _ in range(500):  # bounded polling (5 s)
            if worker.cache.peek("channel", 7) is None:
                break
            await asyncio.sleep(0.01)
        assert worker.cache.peek("channel", 7) is None
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await web_redis.aclose()
        await worker_redis.aclose()
        await web.dispose()
        await worker.dispose()
