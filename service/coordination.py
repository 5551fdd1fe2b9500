"""Short-lived state that processes share through Redis, apart from the queue itself.

Each helper owns one key family from `service.redis_keys` and says what is lost if Redis forgets
it: nothing here is the only record of a message (that is the database's job).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import redis_keys
from service.logging import get_logger
from service.store import Database

T = TypeVar("T")
log = get_logger(__name__)

#: How long a provider status for a message we do not know yet is kept for its sender to find.
EARLY_STATUS_SECONDS = 600
#: Approved templates are asked for often by Pipedrive and change rarely.
TEMPLATES_TTL_SECONDS = 600


async def _done(result: Awaitable[T] | T) -> T:
    """redis-py types its commands for both clients; on the async one they are awaitables."""
    return await cast("Awaitable[T]", result)


class Coordination:
    """The shared short-lived state of one Redis (see the module docstring)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._announcing: set[asyncio.Task[Any]] = set()

    # --- cache invalidation across processes ---------------------------------------------------

    def announce_invalidation(self, kind: str) -> None:
        """Tell every process that rows of `kind` changed (`Database.on_invalidate`). Sent in
        the background; lost if Redis is away, and then each process's cache still forgets the
        row within its CACHE_SECONDS."""
        task = asyncio.ensure_future(self._publish(kind))
        self._announcing.add(task)
        task.add_done_callback(self._announcing.discard)

    async def _publish(self, kind: str) -> None:
        try:
            await _done(self.redis.publish(redis_keys.CACHE_INVALIDATED, kind))
        except (RedisError, OSError) as error:
            log.warning("cache.invalidation_not_sent", kind=kind, error=type(error).__name__)

    async def follow_invalidations(self, db: Database) -> None:
        """Drop this process's cached rows whenever any process announces a change (runs until
        cancelled; resubscribes after a Redis outage, the caches' own expiry covering the gap)."""
        lost = False
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(redis_keys.CACHE_INVALIDATED)
                    if lost:
                        db.invalidate_here(None)  # whatever was announced meanwhile
                        log.info("cache.invalidations_followed_again")
                        lost = False
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            kind = message["data"]
                            db.invalidate_here(kind.decode() if isinstance(kind, bytes) else kind)
            except (RedisError, OSError) as error:
                if not lost:
                    log.warning(
                        "cache.invalidations_lost",
                        error=type(error).__name__,
                        action="retrying every second; cached rows expire on their own meanwhile",
                    )
                lost = True
                await asyncio.sleep(1.0)

    async def keep_early_status(
        self, channel_id: int, provider_message_id: str, status: str, error: str | None
    ) -> None:
        """A status that overtook its own send (its message id is not stored yet). Lost if
        Redis forgets it: the message then stays at `sent` until the next status."""
        key = f"{redis_keys.EARLY_STATUS}{channel_id}:{provider_message_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps([status, error]))
            pipe.expire(key, EARLY_STATUS_SECONDS)
            await pipe.execute()

    async def take_early_statuses(
        self, channel_id: int, provider_message_id: str
    ) -> list[tuple[str, str | None]]:
        """The statuses kept for this provider id, oldest first, removed as they are read."""
        key = f"{redis_keys.EARLY_STATUS}{channel_id}:{provider_message_id}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(key, 0, -1)
            pipe.delete(key)
            found, _ = await pipe.execute()
        return [(str(s), e) for s, e in (json.loads(raw) for raw in found)]

    async def cached_templates(
        self, channel_id: int, fetch: Callable[[], Awaitable[list[dict[str, str]]]]
    ) -> list[dict[str, str]]:
        """The channel's templates from the cache, else fetched and cached a few minutes."""
        key = f"{redis_keys.TEMPLATES}{channel_id}"
        cached = await self.redis.get(key)
        if cached is not None:
            found: list[dict[str, str]] = json.loads(cached)
            return found
        fresh = await fetch()
        await self.redis.set(key, json.dumps(fresh), ex=TEMPLATES_TTL_SECONDS)
        return fresh

    def code_exchange(self, code_hash: str) -> Any:
        """One exchange at a time per OAuth code (a double-submitted callback waits for the
        first and then finds its installation). Lost if Redis forgets it: a second exchange,
        which Pipedrive refuses (codes are single use)."""
        return self.redis.lock(f"{redis_keys.CODE_LOCK}{code_hash}", timeout=120)

    async def claim_install_state(self, nonce: str, code_hash: str, ttl_seconds: int) -> bool:
        """True when this install `state` is new, or was used before with this same code (the
        browser repeating its callback); False when another code already used it (a replay).
        Lost if Redis forgets it: a state could be used twice within its signed lifetime."""
        key = f"{redis_keys.OAUTH_STATE_USED}{nonce}"
        if await self.redis.set(key, code_hash, nx=True, ex=ttl_seconds):
            return True
        used = await self.redis.get(key)
        return used is not None and used.decode() == code_hash

    async def count_code_exchange(self, client: str, per_minute: int) -> bool:
        """Count one token exchange for a client; False once it made `per_minute` this minute.
        Lost if Redis forgets it: the client's count starts again."""
        key = f"{redis_keys.OAUTH_EXCHANGES}{client}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=60, nx=True)  # the window opens with the first exchange
            pipe.incr(key)
            _, count = await pipe.execute()
        return int(count) <= per_minute

    async def backfill_mark(self, channel_id: int) -> datetime | None:
        """When the channel's last backfill ran; None (look back the most) if Redis forgot."""
        mark = await self.redis.get(f"{redis_keys.BACKFILL_MARK}{channel_id}")
        return datetime.fromisoformat(mark.decode()) if mark else None

    async def set_backfill_mark(self, channel_id: int, at: datetime) -> None:
        await self.redis.set(f"{redis_keys.BACKFILL_MARK}{channel_id}", at.isoformat())
