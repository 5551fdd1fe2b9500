"""One rate limiter per Pipedrive token, shared by every web and worker process through Redis.

Pipedrive allows `x-ratelimit-limit` requests per rolling 2-second window per token and announces
resets. The limiter keeps a sliding log of sends in Redis and, in one atomic script, answers
"send now" or "wait N ms": it never lets a request out while a reset window announced by a 429 (or
by `x-ratelimit-remaining: 0`) is open, nor while the installation is parked for its daily budget.
Time is Redis's own clock, so processes on different hosts agree. Parks (a spent daily budget)
are kept under their own key, so all installations of one company share them: the budget is the
company's.

Each send is logged when it is admitted and stamped again with the time its answer arrived.
Pipedrive counts a request when it arrives, which is between those two instants, so a log entry
never leaves our window before Pipedrive's: our count is never below Pipedrive's, and staying
under the announced limit by our count means staying under it by theirs. The stamp rides on the
process's next `acquire` for the same token (one round trip per call instead of two: the second
script was 4 % of the relay worker's CPU), back-dated by the time since the answer, or goes out on
its own within `STAMP_WITHIN_MS`, long before the entry could leave the window. An answer that
closes the window (`remaining: 0`) is applied at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from redis.asyncio import Redis

from service import redis_keys
from service.logging import get_logger

log = get_logger(__name__)

WINDOW_MS = 2000
#: Used until the first response tells us the real limit (Pipedrive's smallest OAuth figure is 80,
#: API tokens 20): low enough for any plan.
DEFAULT_LIMIT = 20
#: Share of the announced limit we use; what is left absorbs clock skew between the two windows.
TARGET_FRACTION = 0.975
#: When a park ends, one caller probes; if it never reports back (a crash), another may probe
#: after this long. Meanwhile the others look again every PROBE_WAIT_MS.
PROBE_GRACE_MS = 30_000
PROBE_WAIT_MS = 2_000
#: An answer's stamp waits at most this long for the next `acquire` to carry it.
STAMP_WITHIN_MS = 50

# KEYS: the send log, the state, the park state. ARGV 1-6: window, default limit, fraction, the new
# ticket, probe grace, probe wait; then answered sends to stamp, three each: ticket, ms since its
# answer, the limit it announced ('' if none).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 7, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'XX', now - tonumber(ARGV[i + 1]), ARGV[i])
  if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[2], 'limit', ARGV[i + 2]) end
end
local window = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[2], 'limit', 'blocked_until')
local park = redis.call('HMGET', KEYS[3], 'parked_until', 'probe_until')
local parked = tonumber(park[1] or '0')
if parked > now then return {-1, parked - now} end
local probe = 0
if parked > 0 then
  local probing = tonumber(park[2] or '0')
  if probing > now then return {-1, math.min(probing - now, tonumber(ARGV[6]))} end
  redis.call('HSET', KEYS[3], 'probe_until', now + tonumber(ARGV[5]))
  probe = 1
end
local blocked = tonumber(state[2] or '0')
if blocked > now then return {0, blocked - now} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local limit = tonumber(state[1] or ARGV[2])
local allowed = math.max(1, math.floor(limit * tonumber(ARGV[3])))
if redis.call('ZCARD', KEYS[1]) < allowed then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window * 2)
  if probe == 1 then return {2, 0} end
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(oldest[2]) + window - now)}
"""

# KEYS: the send log, the state. ARGV: the announced reset in ms when `remaining` was 0 ('' if
# not), then answered sends to stamp as in _ACQUIRE.
_COMPLETE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV, 3 do
  redis.call('ZADD', KEYS[1], 'XX', now - tonumber(ARGV[i + 1]), ARGV[i])
  if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[2], 'limit', ARGV[i + 2]) end
end
if ARGV[1] ~= '' then
  local until_ms = now + tonumber(ARGV[1])
  local current = tonumber(redis.call('HGET', KEYS[2], 'blocked_until') or '0')
  if until_ms > current then redis.call('HSET', KEYS[2], 'blocked_until', until_ms) end
  redis.call('PEXPIRE', KEYS[2], 172800000)
  return -1
end
return now
"""

_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local field = ARGV[1]
local until_ms = now + tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], field) or '0')
if until_ms > current then redis.call('HSET', KEYS[1], field, until_ms) end
redis.call('PEXPIRE', KEYS[1], 172800000)
return until_ms
"""


class LimiterParked(Exception):
    """The token's installation is parked; `seconds` until the park ends."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"parked for {seconds:.1f} s")
        self.seconds = seconds


class RateLimiter:
    """Shared per-token send budget; `key` names the token (an installation), never holds it."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(_ACQUIRE)
        self._block = redis.register_script(_BLOCK)
        self._complete = redis.register_script(_COMPLETE)
        #: Answered sends not stamped yet, by limiter key: (ticket, monotonic answer time, limit).
        self._answered: dict[str, list[tuple[str, float, str]]] = {}
        self._stampers: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle]] = {}
        self._stamping: set[asyncio.Task[None]] = set()
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]]
        self._turns = weakref.WeakKeyDictionary()

    def _keys(self, key: str) -> tuple[str, str]:
        base = f"{redis_keys.RATE_LIMIT}{key}"
        return f"{base}:log", f"{base}:state"

    async def acquire(self, key: str, park_key: str | None = None) -> tuple[str, bool]:
        """Wait for a send slot; returns its ticket (for `observe`) and whether the caller is
        the one probe after a park ended (it must check with a cheap call and then `unpark`, or
        `park` again). Raises `LimiterParked` while `park_key` (default: `key`) is parked.

        The callers of one process wait their turn here, first come first served, and only the
        first asks Redis: with the window full, fifty drains woken together would each run the
        script to learn that one of them got the slot, and that herd's CPU delayed the sends it
        let out (their answers, and so their stamps, came later): the median rolling window
        held 76 of Pipedrive's 80 calls in the bench, 78 with turns."""
        async with self._turn(key):
            return await self._acquire_now(key, park_key)

    def _turn(self, key: str) -> asyncio.Lock:
        turns = self._turns.setdefault(asyncio.get_running_loop(), {})
        return turns.setdefault(key, asyncio.Lock())

    async def _acquire_now(self, key: str, park_key: str | None) -> tuple[str, bool]:
        log_key, state_key = self._keys(key)
        park_state = self._keys(park_key or key)[1]
        while True:
            member = uuid.uuid4().hex
            answered = self._take_answered(key)
            args: list[Any] = [
                WINDOW_MS, DEFAULT_LIMIT, TARGET_FRACTION, member, PROBE_GRACE_MS, PROBE_WAIT_MS
            ]  # fmt: skip
            try:
                result = cast(
                    "list[int]",
                    await self._acquire(
                        keys=[log_key, state_key, park_state], args=args + _stamps(answered)
                    ),
                )
            except BaseException:
                self._answered.setdefault(key, [])[:0] = answered
                raise
            verdict, wait_ms = int(result[0]), int(result[1])
            if verdict in (1, 2):
                return member, verdict == 2
            if verdict == -1:
                raise LimiterParked(wait_ms / 1000)
            await asyncio.sleep(wait_ms / 1000)

    async def observe(self, key: str, ticket: str, headers: Any) -> None:
        """Note the send's answer: its stamp and the limit it announced go with this process's
        next `acquire` (or within STAMP_WITHIN_MS); `remaining: 0` closes the window at once,
        until its reset."""
        limit = _int(headers.get("x-ratelimit-limit"))
        self._answered.setdefault(key, []).append(
            (ticket, time.monotonic(), str(limit) if limit is not None and limit > 0 else "")
        )
        if _int(headers.get("x-ratelimit-remaining")) == 0:
            block_ms = int((reset_seconds(headers) or WINDOW_MS / 1000) * 1000) + 1
            await self.stamp(key, block_ms)
            log.info("ratelimit.blocked", limiter=key, seconds=block_ms / 1000)
        else:
            loop = asyncio.get_running_loop()
            if self._stampers.get(key, (None,))[0] is not loop:  # (a closed loop's never fires)
                timer = loop.call_later(STAMP_WITHIN_MS / 1000, self._stamp_soon, key)
                self._stampers[key] = (loop, timer)

    async def stamp(self, key: str, block_ms: int | None = None) -> None:
        """Stamp the answered sends of `key` now (and close the window for `block_ms`)."""
        log_key, state_key = self._keys(key)
        answered = self._take_answered(key)
        if not answered and block_ms is None:
            return
        args = ["" if block_ms is None else str(block_ms), *_stamps(answered)]
        try:
            await self._complete(keys=[log_key, state_key], args=args)
        except BaseException:
            self._answered.setdefault(key, [])[:0] = answered
            raise

    def _take_answered(self, key: str) -> list[tuple[str, float, str]]:
        stamper = self._stampers.pop(key, None)
        if stamper is not None:
            stamper[1].cancel()
        return self._answered.pop(key, [])

    def _stamp_soon(self, key: str) -> None:
        self._stampers.pop(key, None)
        task = asyncio.ensure_future(self._stamp_quietly(key))
        self._stamping.add(task)
        task.add_done_callback(self._stamping.discard)

    async def close(self) -> None:
        """Stamp every answered send now (on shutdown)."""
        for key in list(self._answered):
            await self._stamp_quietly(key)

    async def _stamp_quietly(self, key: str) -> None:
        try:
            await self.stamp(key)
        except Exception as error:  # noqa: BLE001 -- the next acquire carries the stamps
            log.warning("ratelimit.stamp_failed", limiter=key, error=type(error).__name__)

    async def block(self, key: str, seconds: float) -> None:
        """No request for this token for `seconds` (a 429's announced reset window)."""
        _, state_key = self._keys(key)
        await self._block(keys=[state_key], args=["blocked_until", int(seconds * 1000) + 1])
        log.info("ratelimit.blocked", limiter=key, seconds=seconds)

    async def park(self, key: str, seconds: float) -> None:
        """Hold all of this token's work for `seconds` (daily budget, Cloudflare block)."""
        _, state_key = self._keys(key)
        await _done(self.redis.hdel(state_key, "probe_until"))
        await self._block(keys=[state_key], args=["parked_until", int(seconds * 1000)])
        log.warning("ratelimit.parked", limiter=key, seconds=seconds)

    async def unpark(self, key: str) -> None:
        _, state_key = self._keys(key)
        await _done(self.redis.hdel(state_key, "parked_until", "probe_until"))
        log.info("ratelimit.unparked", limiter=key)

    async def parked_for(self, key: str) -> float:
        """Seconds left in the park, 0 when not parked."""
        _, state_key = self._keys(key)
        raw = await _done(self.redis.hget(state_key, "parked_until"))
        if raw is None:
            return 0.0
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return max(0.0, (int(raw) - now_ms) / 1000)


T = TypeVar("T")


def _stamps(answered: list[tuple[str, float, str]]) -> list[str]:
    """Script arguments for answered sends: ticket, whole ms since the answer (rounded down, so
    the stamp is never earlier than the answer), limit."""
    now = time.monotonic()
    out: list[str] = []
    for ticket, at, limit in answered:
        out += [ticket, str(max(0, int((now - at) * 1000))), limit]
    return out


async def _done(result: Awaitable[T] | T) -> T:
    """redis-py types its commands for both clients; on the async one they are awaitables."""
    return await cast("Awaitable[T]", result)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def reset_seconds(headers: Any) -> float | None:
    """The wait a response announced: `Retry-After`, else `x-ratelimit-reset` (seconds)."""
    for name in ("retry-after", "x-ratelimit-reset"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            continue
    return None
