"""The job queue: arq on Redis, behind a small interface (the only module that imports arq).

Handlers call `Queue.enqueue` with an explicit job key; workers are built by `create_worker`.
The retry policy lives here, once: a job function raises, `run_job` asks `service.errors` whether
another try can help, and either schedules one (arq `Retry`, with backoff and jitter or the delay
the other side asked for) or records a dead letter. `Parked` work (a spent daily budget) is queued
again for later without spending a try. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, cast

import msgpack
import structlog
from arq import Retry
from arq.connections import ArqRedis, RedisSettings
from arq.cron import CronJob, cron
from arq.jobs import SerializationError
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.worker import Function, Worker, func
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import redis_keys
from service.errors import Parked, is_transient, retry_after
from service.logging import get_logger
from service.store import Database, dead_letters

log = get_logger(__name__)

JobContext = dict[str, Any]
#: A job function registered with the worker (arq's `Function`), and the worker itself; other
#: modules name them through these aliases so that arq stays behind this module.
RegisteredJob = Function
WorkerProcess = Worker
JobFunction = Callable[[JobContext, dict[str, Any]], Awaitable[Any]]

#: How often a job is tried before it becomes a dead letter.
MAX_TRIES = 8
#: arq's own ceiling sits above ours, so a try spent failing to write the dead letter (database
#: down) is retried rather than dropped by arq's "max retries exceeded".
ARQ_MAX_TRIES = MAX_TRIES + 5
#: A single try may take this long before it counts as a transient failure.
JOB_TIMEOUT = 120.0
#: arq drops a job that has not started by then; ours can be parked for a day's rate budget.
JOB_EXPIRES = timedelta(days=7)
#: Idle workers look for new jobs this often (arq's 0.5 s default would add its own latency).
POLL_DELAY = 0.02
BACKOFF_CAP = 300.0
#: Joins a parked job's original key and its park time in the re-enqueued job's key.
PARKED_MARK = "~parked~"


def serialize(value: Any) -> bytes:
    """msgpack, never pickle: a queue entry must not be able to run code in the worker."""
    packed: bytes = msgpack.packb(value, datetime=True)
    return packed


def deserialize(data: bytes) -> Any:
    return msgpack.unpackb(data, timestamp=3)


def redis_settings(url: str) -> RedisSettings:
    """arq connection settings that ride out a Redis restart instead of killing the worker."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 10
    settings.conn_retry_delay = 1
    settings.retry_on_timeout = True
    settings.retry_on_error = [RedisConnectionError, RedisTimeoutError]
    settings.retry = RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=5)
    return settings


def backoff(job_try: int) -> float:
    """Exponential backoff with jitter: about 1, 2, 4 ... seconds, capped at five minutes."""
    ceiling: float = min(BACKOFF_CAP, 2.0 ** (job_try - 1))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 -- jitter, not cryptography


class Queue:
    """Enqueue jobs and read queue state; one per process, shared by handlers and jobs."""

    def __init__(self, redis: ArqRedis, queue_name: str = redis_keys.QUEUE_DEFAULT) -> None:
        self.redis = redis
        self.queue_name = queue_name

    @classmethod
    async def connect(cls, url: str) -> Queue:
        """A client for `url` that connects on first use, so a process can start (and report
        "not ready") while Redis is away; each command retries a blip with backoff."""
        pool = ConnectionPool.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry_on_timeout=True,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            retry=RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
            health_check_interval=30,
        )
        redis = ArqRedis(
            pool,
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=redis_keys.QUEUE_DEFAULT,
        )
        return cls(redis)

    async def enqueue(
        self,
        function: str,
        payload: dict[str, Any],
        *,
        key: str,
        defer_by: float | None = None,
    ) -> bool:
        """Queue `function(payload)` under job id `key`; False when that key is already queued.

        The key makes a second enqueue of the same work a no-op while arq keeps the job or its
        result; durable dedupe across longer spans belongs to the store (inbound delivery keys).
        """
        try:
            job = await self.redis.enqueue_job(
                function,
                payload,
                _job_id=key,
                _defer_by=defer_by,
                _expires=JOB_EXPIRES,
            )
        except SerializationError as error:
            raise TypeError(
                f"job {function!r} payload is not plain data: {error.__cause__}"
            ) from None
        return job is not None

    async def depth(self) -> int:
        """Jobs waiting (or deferred) in the queue."""
        return int(await self.redis.zcard(self.queue_name))

    async def job_outcomes(self) -> dict[tuple[str, str], int]:
        """Counts of finished tries by (function, outcome), across all workers."""
        pending = cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(redis_keys.JOB_OUTCOMES))
        raw = await pending
        counts: dict[tuple[str, str], int] = {}
        for field, value in raw.items():
            function, _, outcome = field.decode().rpartition(":")
            counts[(function, outcome)] = int(value)
        return counts

    async def ping(self, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)


async def _count(ctx: JobContext, function: str, outcome: str) -> None:
    try:
        await ctx["redis"].hincrby(redis_keys.JOB_OUTCOMES, f"{function}:{outcome}", 1)
    except (RedisConnectionError, RedisTimeoutError):
        log.warning("metrics.outcome_not_counted", function=function, outcome=outcome)


async def run_job(name: str, fn: JobFunction, ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Run one try of a job and apply the retry policy; see the module docstring."""
    tries: int = ctx["job_try"]
    structlog.contextvars.bind_contextvars(job_id=ctx["job_id"], job=name, job_try=tries)
    for field in ("company_id", "channel"):
        if field in payload:
            structlog.contextvars.bind_contextvars(**{field: payload[field]})
    try:
        async with asyncio.timeout(JOB_TIMEOUT):
            result = await fn(ctx, payload)
    except Parked as error:
        await _park(ctx, name, payload, error)
        return None
    except Exception as error:
        if is_transient(error) and tries < MAX_TRIES:
            delay = retry_after(error) or backoff(tries)
            log.warning("job.retry", error=str(error), error_type=type(error).__name__, delay=delay)
            await _count(ctx, name, "retried")
            raise Retry(defer=delay) from error
        await _dead_letter(ctx, name, payload, error, tries)
        raise
    else:
        await _count(ctx, name, "complete")
        return result
    finally:
        structlog.contextvars.unbind_contextvars(
            "job_id", "job", "job_try", "company_id", "channel"
        )


async def _park(ctx: JobContext, name: str, payload: dict[str, Any], error: Parked) -> None:
    """Queue the same work again for when the park ends; the new job starts with fresh tries.
    A little jitter keeps parked jobs from all waking in the same instant."""
    delay = (error.retry_after or BACKOFF_CAP) * random.uniform(1.0, 1.1)  # noqa: S311 -- jitter
    base_key = str(ctx["job_id"]).split(PARKED_MARK)[0]
    key = f"{base_key}{PARKED_MARK}{int(time.time() * 1000)}"
    try:
        await Queue(ctx["redis"]).enqueue(name, payload, key=key, defer_by=delay)
    except Exception as enqueue_error:
        # Not re-queued: keep this job instead (a retry spends a try, but nothing is lost).
        log.error("job.park_failed", error=str(enqueue_error))
        raise Retry(defer=delay) from enqueue_error
    await _count(ctx, name, "parked")
    log.warning("job.parked", reason=str(error), resume_in_seconds=round(delay, 1), parked_key=key)


async def _dead_letter(
    ctx: JobContext, name: str, payload: dict[str, Any], error: Exception, tries: int
) -> None:
    db: Database = ctx["db"]
    try:
        dead_letter_id = await dead_letters.record(
            db,
            kind=name,
            job_id=ctx["job_id"],
            payload=payload,
            error=f"{type(error).__name__}: {error}",
            tries=tries,
            company_id=payload.get("company_id"),
            channel=payload.get("channel"),
        )
    except Exception as store_error:
        # The dead letter could not be written: keep the job in the queue instead of losing it.
        log.error("job.dead_letter_not_recorded", error=str(store_error), cause=str(error))
        raise Retry(defer=backoff(tries)) from store_error
    await _count(ctx, name, "dead_lettered")
    log.error(
        "job.dead_lettered",
        dead_letter_id=dead_letter_id,
        error=str(error),
        error_type=type(error).__name__,
        transient=is_transient(error),
    )


def job(fn: JobFunction, *, name: str | None = None) -> RegisteredJob:
    """Register a job function with the queue's retry policy wrapped around it."""
    job_name = name or fn.__name__

    @functools.wraps(fn)
    async def wrapper(ctx: JobContext, payload: dict[str, Any]) -> Any:
        return await run_job(job_name, fn, ctx, payload)

    return func(wrapper, name=job_name, max_tries=ARQ_MAX_TRIES, timeout=JOB_TIMEOUT + 30)


def cron_job(
    fn: Callable[[JobContext], Awaitable[Any]], *, minute: set[int] | None, hour: set[int] | None
) -> CronJob:
    """A periodic job; arq runs each occurrence once across all workers."""
    coroutine = cast(WorkerCoroutine, fn)
    return cron(coroutine, minute=minute, hour=hour, unique=True, run_at_startup=False)


def create_worker(
    *,
    redis_url: str,
    functions: Sequence[Function],
    cron_jobs: Sequence[CronJob] = (),
    on_startup: Callable[[JobContext], Awaitable[None]] | None = None,
    on_shutdown: Callable[[JobContext], Awaitable[None]] | None = None,
    burst: bool = False,
    max_jobs: int = 50,
    handle_signals: bool = True,
    ctx: JobContext | None = None,
) -> Worker:
    """An arq worker with the settings every pdbridge worker shares (see architecture.md)."""
    return Worker(
        functions=list(functions),
        cron_jobs=list(cron_jobs),
        queue_name=redis_keys.QUEUE_DEFAULT,
        redis_settings=redis_settings(redis_url),
        on_startup=cast("StartupShutdown | None", on_startup),
        on_shutdown=cast("StartupShutdown | None", on_shutdown),
        burst=burst,
        handle_signals=handle_signals,
        job_serializer=serialize,
        job_deserializer=deserialize,
        poll_delay=POLL_DELAY,
        max_jobs=max_jobs,
        max_tries=ARQ_MAX_TRIES,
        job_timeout=JOB_TIMEOUT + 30,
        health_check_interval=30,
        job_completion_wait=20,
        keep_result=3600,
        ctx=ctx,
    )
