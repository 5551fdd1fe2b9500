"""The API cost ledger: Pipedrive tokens spent per company and UTC day, and what is left.

A company's daily token budget is shared by every app it uses, and a Marketplace app draws on
the customer's budget (doc §3.5 of pipedrive-webhooks-oauth-api.md, which also asks for "a
per-installation daily token ledger"). Every call the client sends is counted here, in Redis:
calls are summed in the process and written as one pipeline at most `FLUSH_SECONDS` later (a
round trip per call was 8 % of the relay worker's CPU), and every read of this process writes
its pending counts first. A crash loses at most that much of an estimate; a Redis failure keeps
the counts for the next write. The sweeper rolls each day up into the database
(`service.store.api_usage`), so a day's figure survives a Redis flush.

What Pipedrive tells us, and what the ledger does with it:

- **Cost of a call.** Documented per endpoint (the API reference's "Cost", `x-token-cost` in the
  OpenAPI file); no response header carries it. `client.estimated_cost` holds that table, and
  the ledger charges it for every answer Pipedrive processed. A 401, a 429 and Cloudflare's HTML
  403 are refused before any work and are counted as calls costing nothing (our reading; the
  docs do not say).
- **Daily budget.** `x-daily-ratelimit-token-limit` and `x-daily-ratelimit-token-remaining` are
  observed but undocumented, and may be missing after idle periods. When present they are the
  truth (they include every other integration's spend), and the last seen pair is kept for the
  day. `x-daily-requests-left` is a legacy count of POST/PUT requests for API-token calls, not
  tokens, and is not used.
- **Otherwise the documented figure:** 30,000 x plan multiplier x seats. The plan follows from
  the burst limit `x-ratelimit-limit` (documented per auth kind), the seats cannot be known, so
  one seat gives a floor: `budget_source: "plan_minimum"`, and what is left is that floor minus
  our own spend.

Days are UTC days. Pipedrive resets the budget at midnight of an unnamed server timezone, so
near our midnight the header figures may belong to Pipedrive's other day; the last reading wins.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service import redis_keys
from service.logging import get_logger
from service.store import Database, api_usage
from service.store.api_usage import DayUsage
from service.store.schema import utcnow

if TYPE_CHECKING:
    from service.context import Services

log = get_logger(__name__)

#: Redis keeps a day's counts this long; the database keeps them for good.
KEEP_SECONDS = 4 * 86_400
#: The documented daily budget of one seat on the smallest plan (doc §3.5).
BASE_DAILY_BUDGET = 30_000
#: Plan multiplier by burst limit per 2 s (doc §3.5; current and legacy plan names agree).
PLAN_MULTIPLIERS: Mapping[str, Mapping[int, int]] = {
    "oauth": {80: 1, 160: 2, 320: 3, 400: 5, 480: 7},
    "api_token": {20: 1, 40: 2, 80: 3, 100: 5, 120: 7},
}
#: Endpoint families the metrics name; anything else is "other", so labels stay bounded.
FAMILIES = frozenset(
    {
        "activities",
        "channels",
        "deals",
        "itemSearch",
        "leads",
        "notes",
        "organizations",
        "persons",
        "users",
        "webhooks",
    }
)

BudgetSource = Literal["pipedrive", "plan_minimum"]
#: Counts wait in the process at most this long before they are written to Redis.
FLUSH_SECONDS = 0.5

# KEYS: the day's hash of one company. ARGV: the database's tokens and calls, the TTL. Once per
# day and key, and again after Redis lost the key: add what the database already holds, so the
# Redis count is the whole day's again; `rolled` marks it done. Returns the hash.
_SEED = """
if redis.call('HEXISTS', KEYS[1], 'rolled') == 0 then
  if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1]) end
  if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], 'calls', ARGV[2]) end
  redis.call('HSET', KEYS[1], 'rolled', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: the day's hash of one company. ARGV: tokens, calls, TTL, the plan figure ('' if none),
# then the daily-budget reading ('' if none): budget, remaining, and when it was seen (epoch ms).
# Processes write their counts up to FLUSH_SECONDS late, so an older reading never overwrites a
# newer one.
_ADD = """
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'calls', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'plan_budget', ARGV[4]) end
if ARGV[5] ~= '' and tonumber(ARGV[7]) >= tonumber(redis.call('HGET', KEYS[1], 'seen') or '0') then
  redis.call('HSET', KEYS[1], 'budget', ARGV[5], 'remaining', ARGV[6], 'seen', ARGV[7])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


def family(path: str) -> str:
    """The endpoint family of an API path, for metric labels: its first segment when known."""
    first = next((p for p in path.split("?")[0].split("/") if p), "")
    if first.endswith("Fields"):
        return "fields"
    return first if first in FAMILIES else "other"


def charged_tokens(cost: int, status: int, headers: Mapping[str, str]) -> int:
    """What a call cost: its documented cost, unless Pipedrive refused it before any work."""
    if status in (401, 429):
        return 0
    if status == 403 and "html" in headers.get("content-type", ""):
        return 0
    return cost


def plan_minimum(auth_kind: str, burst_limit: int | None) -> int | None:
    """The documented daily budget of one seat on the plan this burst limit belongs to."""
    multiplier = PLAN_MULTIPLIERS.get(auth_kind, {}).get(burst_limit or 0)
    return BASE_DAILY_BUDGET * multiplier if multiplier else None


@dataclass(frozen=True, slots=True)
class Usage:
    """A company's spend on one day, with the budget when known."""

    tokens: int
    calls: int
    budget: int | None
    budget_left: int | None
    budget_source: BudgetSource | None

    @property
    def fraction_left(self) -> float | None:
        """Share of the daily budget still unspent, in [0, 1]; None when the budget is unknown."""
        if self.budget is None or self.budget_left is None or self.budget <= 0:
            return None
        return min(1.0, max(0.0, self.budget_left / self.budget))

    def as_json(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "calls": self.calls,
            "budget": self.budget,
            "budget_left": self.budget_left,
            "budget_source": self.budget_source,
        }


@dataclass(slots=True)
class _Pending:
    """One company's day of calls not yet written to Redis."""

    tokens: int = 0
    calls: int = 0
    plan_budget: int | None = None
    #: The last daily-budget headers: (budget, remaining, epoch ms when seen).
    reading: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What /metrics shows: all-time counts by endpoint family, today's figures by company."""

    family_tokens: dict[str, int]
    family_calls: dict[str, int]
    today: dict[int, Usage]


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = float(value.decode() if isinstance(value, bytes) else value)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


def _decode(raw: Mapping[Any, Any] | Sequence[Any]) -> dict[str, str]:
    """A hash as HGETALL gives it (a mapping, or a flat list from a script), as text."""
    if not isinstance(raw, Mapping):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def _combine(raw: Mapping[str, str], stored: DayUsage | None) -> Usage:
    """Redis's count, plus the database's when Redis lost the day since the last roll-up."""
    rolled = "rolled" in raw
    tokens = _int(raw.get("tokens")) or 0
    calls = _int(raw.get("calls")) or 0
    if stored is not None and not rolled:
        tokens, calls = tokens + stored.tokens, calls + stored.calls
    budget, left = _int(raw.get("budget")), _int(raw.get("remaining"))
    if budget is not None and left is not None:
        return Usage(tokens, calls, budget, min(left, budget), "pipedrive")
    if stored is not None and stored.budget is not None and stored.budget_left is not None:
        return Usage(tokens, calls, stored.budget, stored.budget_left, "pipedrive")
    floor = _int(raw.get("plan_budget"))
    if floor:
        return Usage(tokens, calls, floor, max(0, floor - tokens), "plan_minimum")
    return Usage(tokens, calls, None, None, None)


class Ledger:
    """Counts calls in Redis and reads them back with the database's roll-up (module docstring)."""

    def __init__(self, redis: Redis, clock: Callable[[], datetime] = utcnow) -> None:
        self.redis = redis
        self.clock = clock
        self._seed = redis.register_script(_SEED)
        self._add = redis.register_script(_ADD)
        self._pending: dict[tuple[date, int], _Pending] = {}
        self._families: dict[str, list[int]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._flushing: set[asyncio.Task[None]] = set()

    def today(self) -> date:
        return self.clock().date()

    @staticmethod
    def _key(day: date, company_id: int) -> str:
        return f"{redis_keys.API_LEDGER}{day.isoformat()}:{company_id}"

    @staticmethod
    def _companies_key(day: date) -> str:
        return f"{redis_keys.API_LEDGER}{day.isoformat()}:companies"

    async def record(
        self,
        *,
        company_id: int,
        auth_kind: str,
        path: str,
        cost: int,
        status: int,
        headers: Mapping[str, str],
    ) -> None:
        """Count one answered call, in the process; written to Redis within `FLUSH_SECONDS`."""
        tokens = charged_tokens(cost, status, headers)
        pending = self._pending.setdefault((self.today(), company_id), _Pending())
        pending.tokens += tokens
        pending.calls += 1
        budget = _int(headers.get("x-daily-ratelimit-token-limit"))
        remaining = _int(headers.get("x-daily-ratelimit-token-remaining"))
        if budget is not None and remaining is not None and budget > 0:
            pending.reading = (budget, remaining, int(time.time() * 1000))
        floor = plan_minimum(auth_kind, _int(headers.get("x-ratelimit-limit")))
        if floor is not None:
            pending.plan_budget = floor
        counts = self._families.setdefault(family(path), [0, 0])
        counts[0] += tokens
        counts[1] += 1
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer_loop is not loop:  # (a closed loop's never fires)
            self._timer = loop.call_later(FLUSH_SECONDS, self._flush_soon)
            self._timer_loop = loop

    def _flush_soon(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self.flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def flush(self) -> None:
        """Write the pending counts in one pipeline. A Redis failure is logged and the counts
        are kept for the next write: the calls happened, and failing them would resend them."""
        if not self._pending and not self._families:
            return
        pending, self._pending = self._pending, {}
        families, self._families = self._families, {}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (day, company_id), counts in pending.items():
                    companies = self._companies_key(day)
                    reading = counts.reading or ("", "", "")
                    plan = "" if counts.plan_budget is None else counts.plan_budget
                    args = [counts.tokens, counts.calls, KEEP_SECONDS, plan, *reading]
                    await self._add(keys=[self._key(day, company_id)], args=args, client=pipe)
                    pipe.sadd(companies, str(company_id))
                    pipe.expire(companies, KEEP_SECONDS)
                for name, (tokens, calls) in families.items():
                    pipe.hincrby(redis_keys.API_LEDGER_FAMILY_TOKENS, name, tokens)
                    pipe.hincrby(redis_keys.API_LEDGER_FAMILY_CALLS, name, calls)
                await pipe.execute()
        except (RedisError, OSError) as error:
            self._restore(pending, families)
            log.warning(
                "ledger.not_recorded",
                companies=sorted({company for _, company in pending}),
                tokens=sum(p.tokens for p in pending.values()),
                error=type(error).__name__,
                action="kept in the process; written with the next calls",
            )

    def _restore(
        self, pending: dict[tuple[date, int], _Pending], families: dict[str, list[int]]
    ) -> None:
        for where, counts in pending.items():
            kept = self._pending.setdefault(where, _Pending())
            kept.tokens += counts.tokens
            kept.calls += counts.calls
            kept.plan_budget = kept.plan_budget or counts.plan_budget
            if counts.reading and (not kept.reading or kept.reading[2] < counts.reading[2]):
                kept.reading = counts.reading
        for name, (tokens, calls) in families.items():
            kept_family = self._families.setdefault(name, [0, 0])
            kept_family[0] += tokens
            kept_family[1] += calls

    async def close(self) -> None:
        """Write what is pending (on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()

    async def usage(
        self, db: Database, company_ids: Iterable[int], day: date | None = None
    ) -> dict[int, Usage]:
        """Each company's spend on `day` (default today). Redis when it answers, plus the
        database's roll-up when Redis lost the day; the database alone when Redis is away."""
        await self.flush()
        day = day or self.today()
        ids = sorted(set(company_ids))
        raws: list[dict[str, str]] = [{} for _ in ids]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for company_id in ids:
                    pipe.hgetall(self._key(day, company_id))
                raws = [_decode(r) for r in await pipe.execute()]
        except (RedisError, OSError) as error:
            log.warning("ledger.redis_unavailable", error=type(error).__name__)
        unrolled = [c for c, raw in zip(ids, raws, strict=True) if "rolled" not in raw]
        stored = await api_usage.for_day(db, day, unrolled)
        return {c: _combine(raw, stored.get(c)) for c, raw in zip(ids, raws, strict=True)}

    async def companies(self, day: date | None = None) -> list[int]:
        """The companies that called Pipedrive on `day` (default today), by Redis's record."""
        await self.flush()
        members = await cast("Any", self.redis.smembers(self._companies_key(day or self.today())))
        return sorted(c for c in (_int(m) for m in members) if c is not None)

    async def snapshot(self, db: Database) -> Snapshot:
        """The figures /metrics exposes (see service.metrics for the label choices)."""
        await self.flush()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(redis_keys.API_LEDGER_FAMILY_TOKENS)
            pipe.hgetall(redis_keys.API_LEDGER_FAMILY_CALLS)
            tokens_raw, calls_raw = await pipe.execute()
        family_tokens = {k: _int(v) or 0 for k, v in _decode(tokens_raw).items()}
        family_calls = {k: _int(v) or 0 for k, v in _decode(calls_raw).items()}
        today = await self.usage(db, await self.companies())
        return Snapshot(family_tokens, family_calls, today)

    async def roll_up(self, db: Database, days: Sequence[date] | None = None) -> int:
        """Copy each company's figures of `days` into the database; idempotent (sets, never
        adds). By default today, and yesterday too in the first hour after midnight (its last
        calls). Returns the rows written."""
        await self.flush()
        now = self.clock()
        if days is None:
            today = now.date()
            recent = now - timedelta(hours=1)
            days = (today,) if recent.date() == today else (recent.date(), today)
        written = 0
        for day in days:
            ids = await self.companies(day)
            if not ids:
                continue
            stored = await api_usage.for_day(db, day, ids)
            async with self.redis.pipeline(transaction=False) as pipe:
                for company_id in ids:
                    before = stored.get(company_id)
                    await self._seed(
                        keys=[self._key(day, company_id)],
                        args=[
                            before.tokens if before else 0,
                            before.calls if before else 0,
                            KEEP_SECONDS,
                        ],
                        client=pipe,
                    )
                hashes = [_decode(r) for r in await pipe.execute()]
            rows = []
            for company_id, raw in zip(ids, hashes, strict=True):
                budget, left = _int(raw.get("budget")), _int(raw.get("remaining"))
                rows.append(
                    DayUsage(
                        company_id=company_id,
                        day=day,
                        tokens=_int(raw.get("tokens")) or 0,
                        calls=_int(raw.get("calls")) or 0,
                        budget=budget if left is not None else None,
                        budget_left=left if budget is not None else None,
                    )
                )
            written += await api_usage.save(db, rows)
        return written


async def budget_left_fraction(svc: Services, company_id: int) -> float | None:
    """Share of the company's daily Pipedrive budget still unspent today, in [0, 1]; None
    when the budget is unknown (no budget headers and no plan figure yet)."""
    found = await svc.pipedrive.ledger.usage(svc.db, [company_id])
    return found[company_id].fraction_left


#: (fraction of the budget left, window factor) points of `notes_window`, highest first.
WINDOW_CURVE: tuple[tuple[float, float], ...] = ((1.0, 0.5), (0.5, 0.5), (0.2, 1.0), (0.0, 4.0))


def notes_window(base_seconds: float, fraction: float | None) -> float:
    """How long a notes batch stays open, given the share of the daily budget left.

    Plentiful budget (over half left) halves the window, so notes appear sooner; from 50% down
    to 20% it grows back to the base; below 20% it grows up to 4 times the base at 0, so fewer
    writes stretch what is left. Linear between those points, so the window never jumps.
    Unknown budget (None) keeps the base.
    """
    if fraction is None or math.isnan(fraction):
        return base_seconds
    fraction = min(1.0, max(0.0, fraction))
    for (high_f, high_x), (low_f, low_x) in itertools.pairwise(WINDOW_CURVE):
        if fraction >= low_f:
            share = (fraction - low_f) / (high_f - low_f)
            return base_seconds * (low_x + (high_x - low_x) * share)
    return base_seconds * WINDOW_CURVE[-1][1]
