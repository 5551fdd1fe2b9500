"""The job queue: arq on Redis, behind a small interface (the only module that imports arq).

Every job is declared once below (`JobSpec`: its name, payload type and key). Handlers call
`Queue.enqueue(spec, payload)`; workers are built by `create_worker`.

Chat traffic is grouped: a conversation has at most one queued or running drain job
(`Queue.schedule`). A delivery that arrives while one exists only marks the group dirty, and the
running drain goes on until the group is empty (`Queue.finish`). So a burst in one chat is one job,
never hundreds of jobs waiting on each other, and no job holds a worker slot while blocked.
The retry policy lives here, once: a job function raises, `run_job` asks `service.errors` whether
another try can help, and either schedules one (arq `Retry`, with backoff and jitter or the delay
the other side asked for) or records a dead letter. `Parked` work (a spent daily budget) is queued
again for later without spending a try. Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NotRequired, TypedDict, cast

import msgpack
import structlog
from arq import Retry
from arq.connections import ArqRedis, RedisSettings
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.cron import CronJob, cron
from arq.jobs import SerializationError, serialize_job
from arq.typing import StartupShutdown, WorkerCoroutine
from arq.worker import Function, Worker, func
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry as RedisRetry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import redis_keys
from service.errors import Parked, is_transient, retry_after
from service.logging import get_logger
from service.redis_url import is_sentinel, parse_sentinel_url
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
#: A running job's claim (arq's in-progress key) lasts this long unless its worker renews it, as
#: it does every third of it: a worker killed mid-job frees the job for another worker within
#: this time, not after arq's whole job timeout. A second run is harmless (claims and upserts).
JOB_LEASE_SECONDS = 15.0
#: arq drops a job that has not started by then; ours can be parked for a day's rate budget.
JOB_EXPIRES = timedelta(days=7)
#: Idle workers look for new jobs this often (arq's 0.5 s default would add its own latency).
POLL_DELAY = 0.02
BACKOFF_CAP = 300.0
#: Joins a parked job's original key and its park time in the re-enqueued job's key.
PARKED_MARK = "~parked~"
#: A group's "scheduled" mark outlives any drain; it is only trusted while its job exists.
GROUP_MARK_MS = 24 * 3600 * 1000
#: On a stop signal a worker lets running jobs finish for this long, then cancels the rest (a
#: cancelled drain is simply run again later). A container's stop grace period must exceed it.
SHUTDOWN_WAIT = 20.0
#: A worker writes its health key this often; the key lives one second longer (arq's scheme).
HEALTH_CHECK_INTERVAL = 30


# --- the jobs, declared once -----------------------------------------------------------------


class RelayPayload(TypedDict):
    """Drain one conversation's recorded provider deliveries to Pipedrive."""

    channel_id: int
    conversation_key: str


class SendPayload(TypedDict):
    """Drain one conversation's outgoing messages to the provider."""

    channel_id: int
    conversation_id: int


class NotesPayload(TypedDict):
    """Write a conversation's changed note windows to Pipedrive (the notes sink); `waits`
    counts the times the flush stood back for the conversation's relay."""

    channel_id: int
    conversation_id: int
    waits: NotRequired[int]


class PipedriveEventPayload(TypedDict):
    installation_id: int
    company_id: int
    dedupe_key: str
    event: dict[str, Any]


class InstallationPayload(TypedDict):
    installation_id: int
    company_id: int


class ChannelPayload(TypedDict):
    channel_id: int
    channel: str


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job: the function name workers register, and how a payload names its work.

    `key` gives the arq job id (a second enqueue of the same key is a no-op while arq holds it);
    `group` marks a coalesced job: one queued or running job per group (`Queue.schedule`)."""

    name: str
    key: Callable[[Any], str] | None = None
    group: Callable[[Any], str] | None = None


RELAY_CONVERSATION = JobSpec(
    "relay_conversation", group=lambda p: f"in:{p['channel_id']}:{p['conversation_key']}"
)
SEND_CONVERSATION = JobSpec(
    "send_conversation", group=lambda p: f"out:{p['channel_id']}:{p['conversation_id']}"
)
NOTES_FLUSH = JobSpec(
    "notes_flush", group=lambda p: f"notes:{p['channel_id']}:{p['conversation_id']}"
)
PIPEDRIVE_EVENT = JobSpec("pipedrive_event", key=lambda p: f"in:pipedrive:{p['dedupe_key']}")
SETUP_INSTALLATION = JobSpec("setup_installation")
SETUP_SINGLE_COMPANY = JobSpec("setup_single_company", key=lambda p: "setup-single-company")
RETRY_DELIVERY = JobSpec("retry_delivery")
REMOVE_PROVIDER_WEBHOOK = JobSpec("remove_provider_webhook", key=lambda p: f"unhook:{p['channel']}")
#: Jobs an earlier version queued, still run so that their dead letters can be replayed.
DELIVER_OUTBOUND = JobSpec("deliver_outbound")
#: Every declared job by name (a dead letter names its job by name).
DECLARED = {
    spec.name: spec
    for spec in (
        RELAY_CONVERSATION,
        SEND_CONVERSATION,
        NOTES_FLUSH,
        PIPEDRIVE_EVENT,
        SETUP_INSTALLATION,
        SETUP_SINGLE_COMPANY,
        RETRY_DELIVERY,
        REMOVE_PROVIDER_WEBHOOK,
        DELIVER_OUTBOUND,
    )
}

# KEYS: group mark, dirty flag, new job, queue. ARGV: job id, job bytes, job expiry ms, score,
# mark lifetime ms, force. A group whose mark names a job that still exists is only marked dirty.
_SCHEDULE = """
local current = redis.call('GET', KEYS[1])
if ARGV[6] ~= '1' and current and redis.call('EXISTS', ARGV[7] .. current) == 1 then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[5])
redis.call('PSETEX', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return 1
"""

# KEYS: group mark, dirty flag. ARGV: the finishing job's id. Returns 1 when more work arrived
# (the caller drains again), 0 when the group is released.
_FINISH = """
if redis.call('DEL', KEYS[2]) == 1 then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def serialize(value: Any) -> bytes:
    """msgpack, never pickle: a queue entry must not be able to run code in the worker."""
    packed: bytes = msgpack.packb(value, datetime=True)
    return packed


def deserialize(data: bytes) -> Any:
    return msgpack.unpackb(data, timestamp=3)


def redis_settings(url: str) -> RedisSettings:
    """arq connection settings that ride out a Redis restart instead of killing the worker; a
    `redis+sentinel://` URL becomes arq's own Sentinel settings (it asks the sentinels for the
    master on every new connection, so a failover is followed)."""
    if is_sentinel(url):
        target = parse_sentinel_url(url)
        settings = RedisSettings(
            host=list(target.sentinels),
            sentinel=True,
            sentinel_master=target.master,
            database=target.db,
            username=target.username,
            password=target.password,
        )
    else:
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
        self._schedule = redis.register_script(_SCHEDULE)
        self._finish = redis.register_script(_FINISH)

    @classmethod
    async def connect(cls, url: str) -> Queue:
        """A client for `url` that connects on first use, so a process can start (and report
        "not ready") while Redis is away; each command retries a blip with backoff."""
        options: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "retry_on_timeout": True,
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
            "retry": RedisRetry(ExponentialBackoff(cap=2.0, base=0.05), retries=3),
            "health_check_interval": 30,
        }
        if is_sentinel(url):
            target = parse_sentinel_url(url)
            # redis-py's asyncio Sentinel has no annotations; what it returns is typed below.
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.sentinels),
                sentinel_kwargs={"socket_connect_timeout": 2, "socket_timeout": 5},
                db=target.db,
                username=target.username,
                password=target.password,
                **options,
            )
            redis: ArqRedis = sentinel.master_for(target.master, redis_class=ArqRedis)
            redis.job_serializer = serialize
            redis.job_deserializer = deserialize
            redis.default_queue_name = redis_keys.QUEUE_DEFAULT
            return cls(redis)
        redis = ArqRedis(
            ConnectionPool.from_url(url, **options),
            job_serializer=serialize,
            job_deserializer=deserialize,
            default_queue_name=redis_keys.QUEUE_DEFAULT,
        )
        return cls(redis)

    async def enqueue(
        self,
        job: JobSpec | str,
        payload: Any,
        *,
        key: str | None = None,
        defer_by: float | None = None,
    ) -> bool:
        """Queue `job(payload)` under its job key; False when that key is already queued.

        The key makes a second enqueue of the same work a no-op while arq keeps the job or its
        result; durable dedupe across longer spans belongs to the store (inbound delivery keys).
        A grouped job goes through `schedule` instead.
        """
        if isinstance(job, str) and job in DECLARED:
            job = DECLARED[job]
        if isinstance(job, JobSpec):
            if job.group is not None:
                return await self.schedule(job, payload)
            function = job.name
            key = key or (job.key(payload) if job.key else f"{job.name}:{uuid.uuid4().hex}")
        else:
            function = job
        if key is None:
            raise TypeError(f"job {function!r} needs a key")
        try:
            queued = await self.redis.enqueue_job(
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
        return queued is not None

    async def schedule(
        self, job: JobSpec, payload: Any, *, force: bool = False, defer_by: float | None = None
    ) -> bool:
        """Make sure a drain job for the payload's group is queued or running; True when this
        call queued one. Atomic in Redis: the mark, the job and its place in the queue are
        written together or not at all. `force` queues a fresh job whatever the mark says (a
        drain handing the rest of a long backlog to a new job)."""
        if job.group is None:
            raise TypeError(f"job {job.name!r} is not grouped")
        group = job.group(payload)
        job_id = f"{job.name}:{group}:{uuid.uuid4().hex[:12]}"
        now_ms = int(time.time() * 1000)
        try:
            body = serialize_job(job.name, (payload,), {}, None, now_ms, serializer=serialize)
        except SerializationError as error:
            raise TypeError(
                f"job {job.name!r} payload is not plain data: {error.__cause__}"
            ) from None
        queued = await self._schedule(
            keys=[
                f"{redis_keys.GROUP_MARK}{group}",
                f"{redis_keys.GROUP_DIRTY}{group}",
                f"{job_key_prefix}{job_id}",
                self.queue_name,
            ],
            args=[
                job_id,
                body,
                int(JOB_EXPIRES.total_seconds() * 1000),
                now_ms + int((defer_by or 0) * 1000),
                GROUP_MARK_MS,
                "1" if force else "0",
                job_key_prefix,
            ],
        )
        return bool(queued)

    async def busy(self, job: JobSpec, payload: Any) -> bool:
        """True while the payload's group has a drain queued or running (its mark names a job
        that still exists)."""
        if job.group is None:
            raise TypeError(f"job {job.name!r} is not grouped")
        current = await self.redis.get(f"{redis_keys.GROUP_MARK}{job.group(payload)}")
        if current is None:
            return False
        job_id = current.decode() if isinstance(current, bytes) else str(current)
        return bool(await self.redis.exists(f"{job_key_prefix}{job_id}"))

    async def begin(self, job: JobSpec, payload: Any) -> None:
        """A drain starts a pass: what was marked so far is about to be read, so the mark goes
        (anything marked from now on is seen by `finish`)."""
        if job.group is not None:
            await self.redis.delete(f"{redis_keys.GROUP_DIRTY}{job.group(payload)}")

    async def finish(self, job: JobSpec, payload: Any, job_id: str) -> bool:
        """A drain found its group empty: release the group, unless more work was marked
        meanwhile (then True: drain again)."""
        if job.group is None:
            raise TypeError(f"job {job.name!r} is not grouped")
        group = job.group(payload)
        more = await self._finish(
            keys=[f"{redis_keys.GROUP_MARK}{group}", f"{redis_keys.GROUP_DIRTY}{group}"],
            args=[job_id],
        )
        return bool(more)

    async def release(self, job: JobSpec, payload: Any, job_id: str) -> None:
        """A drain gives up for good (its job is dead-lettered): the next arrival queues anew."""
        if job.group is None:
            return
        group = job.group(payload)
        mark = f"{redis_keys.GROUP_MARK}{group}"
        if await self.redis.get(mark) == job_id.encode():
            await self.redis.delete(mark)

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
        await close_redis(self.redis)


async def close_redis(redis: ArqRedis) -> None:
    """Close a client and its pool, and under Sentinel the clients to the sentinels too (closing
    the master's pool leaves those open)."""
    manager = getattr(redis.connection_pool, "sentinel_manager", None)
    await redis.aclose(close_connection_pool=True)
    for client in getattr(manager, "sentinels", ()):
        await client.aclose()


async def _count(ctx: JobContext, function: str, outcome: str) -> None:
    try:
        await ctx["redis"].hincrby(redis_keys.JOB_OUTCOMES, f"{function}:{outcome}", 1)
    except (RedisConnectionError, RedisTimeoutError):
        log.warning("metrics.outcome_not_counted", function=function, outcome=outcome)


async def run_job(
    spec: JobSpec, fn: Callable[[JobContext, Any], Awaitable[Any]], ctx: JobContext, payload: Any
) -> Any:
    """Run one try of a job and apply the retry policy; see the module docstring."""
    name = spec.name
    tries: int = ctx["job_try"]
    structlog.contextvars.bind_contextvars(job_id=ctx["job_id"], job=name, job_try=tries)
    for field in ("company_id", "channel"):
        if field in payload:
            structlog.contextvars.bind_contextvars(**{field: payload[field]})
    lease = asyncio.create_task(_hold_lease(ctx["redis"], str(ctx["job_id"])))
    try:
        async with asyncio.timeout(JOB_TIMEOUT):
            result = await fn(ctx, payload)
    except Parked as error:
        await _park(ctx, spec, payload, error)
        return None
    except Exception as error:
        if is_transient(error) and tries < MAX_TRIES:
            delay = retry_after(error) or backoff(tries)
            log.warning("job.retry", error=str(error), error_type=type(error).__name__, delay=delay)
            await _count(ctx, name, "retried")
            raise Retry(defer=delay) from error
        await _dead_letter(ctx, name, payload, error, tries)
        await Queue(ctx["redis"]).release(spec, payload, str(ctx["job_id"]))
        raise
    else:
        await _count(ctx, name, "complete")
        return result
    finally:
        lease.cancel()
        structlog.contextvars.unbind_contextvars(
            "job_id", "job", "job_try", "company_id", "channel"
        )


async def _hold_lease(redis: ArqRedis, job_id: str) -> None:
    """Keep the running job's in-progress key alive for `JOB_LEASE_SECONDS` at a time."""
    key = in_progress_key_prefix + job_id
    while True:
        # Redis away: no other worker can take the job meanwhile either. A key arq already
        # removed (the job ended) is not created again: PEXPIRE only touches existing keys.
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            await redis.pexpire(key, int(JOB_LEASE_SECONDS * 1000))
        await asyncio.sleep(JOB_LEASE_SECONDS / 3)


async def _park(ctx: JobContext, spec: JobSpec, payload: dict[str, Any], error: Parked) -> None:
    """Queue the same work again for when the park ends; the new job starts with fresh tries.
    A little jitter keeps parked jobs from all waking in the same instant. A grouped job hands
    its group to the new job, so no second drain of the same conversation starts meanwhile."""
    name = spec.name
    delay = (error.retry_after or BACKOFF_CAP) * random.uniform(1.0, 1.1)  # noqa: S311 -- jitter
    base_key = str(ctx["job_id"]).split(PARKED_MARK)[0]
    key = f"{base_key}{PARKED_MARK}{int(time.time() * 1000)}"
    queue = Queue(ctx["redis"])
    try:
        if spec.group is not None:
            await queue.schedule(spec, payload, force=True, defer_by=delay)
        else:
            await queue.enqueue(name, payload, key=key, defer_by=delay)
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


def job(
    fn: Callable[[JobContext, Any], Awaitable[Any]], spec: JobSpec | None = None
) -> RegisteredJob:
    """Register a job function with the queue's retry policy wrapped around it. Grouped jobs
    keep no result: their ids are single-use, and nothing reads them."""
    declared = spec or JobSpec(fn.__name__)

    @functools.wraps(fn)
    async def wrapper(ctx: JobContext, payload: dict[str, Any]) -> Any:
        return await run_job(declared, fn, ctx, payload)

    return func(
        wrapper,
        name=declared.name,
        max_tries=ARQ_MAX_TRIES,
        timeout=JOB_TIMEOUT + 30,
        keep_result=0 if declared.group is not None else None,
    )


def cron_job(
    fn: Callable[[JobContext], Awaitable[Any]], *, minute: set[int] | None, hour: set[int] | None
) -> CronJob:
    """A periodic job; arq runs each occurrence once across all workers (holding the same
    renewed lease as other jobs)."""

    @functools.wraps(fn)
    async def leased(ctx: JobContext) -> Any:
        lease = asyncio.create_task(_hold_lease(ctx["redis"], str(ctx["job_id"])))
        try:
            return await fn(ctx)
        finally:
            lease.cancel()

    coroutine = cast(WorkerCoroutine, leased)
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
    worker = Worker(
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
        health_check_interval=HEALTH_CHECK_INTERVAL,
        health_check_key=health_check_key(),
        job_completion_wait=int(SHUTDOWN_WAIT),
        keep_result=3600,
        ctx=ctx,
    )
    # arq claims a picked job for its whole timeout (+10 s); ours is the renewed lease from the
    # start, so a worker killed between picking a job and running it frees it just as soon.
    worker.in_progress_timeout_s = JOB_LEASE_SECONDS
    return worker


# --- running a worker -----------------------------------------------------------------------

#: Reconnect attempts after a lost Redis wait this long at first, doubling up to the cap.
RECONNECT_FIRST = 0.2
RECONNECT_CAP = 5.0


async def run_forever(worker: Worker) -> None:
    """Run the worker's poll loop, riding out a lost Redis: one warning per outage, then
    reconnect attempts with capped, jittered backoff. Jobs already running go on (their own
    Redis calls retry, and a failed one is retried by the queue later); a job is never started
    twice at once because arq's in-progress key is in Redis with the job. The worker's startup
    hook runs again on reconnect and finds `ctx["redis_lost_at"]` set. Returns when the worker
    stops (a burst worker that ran dry, or `stop`)."""
    delay = RECONNECT_FIRST
    worker.main_task = asyncio.current_task()
    while True:
        try:
            await worker.main()
            return
        except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as error:
            if worker.ctx.get("redis_lost_at") is None:
                worker.ctx["redis_lost_at"] = time.monotonic()
                delay = RECONNECT_FIRST
                log.warning(
                    "worker.redis_lost",
                    error=str(error),
                    action="reconnecting; recorded work waits in the database",
                )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 -- jitter
            delay = min(RECONNECT_CAP, delay * 2)


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    """Stop picking jobs, let running ones finish (up to `job_completion_wait`), then close."""
    worker.allow_pick_jobs = False
    running = [t for t in worker.tasks.values() if not t.done()]
    if running:
        await asyncio.wait(running, timeout=SHUTDOWN_WAIT)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await worker.close()
    except (RedisConnectionError, RedisTimeoutError, OSError) as error:
        # Redis went first: nothing is left to tidy there (arq's health key expires by itself),
        # but our own shutdown (closing the database pool) still runs.
        log.info("worker.closed_without_redis", error=str(error))
        if worker.on_shutdown is not None:
            await worker.on_shutdown(worker.ctx)


# --- health --------------------------------------------------------------------------------


def health_check_key(host: str | None = None) -> str:
    """The key a worker refreshes every `HEALTH_CHECK_INTERVAL` seconds: one per host (a pod, a
    container), so that `pdbridge worker --check` answers for the worker beside it rather than
    for any worker on the queue (arq's default key is one per queue)."""
    return f"{redis_keys.QUEUE_DEFAULT}:health-check:{host or socket.gethostname()}"


async def worker_is_healthy(url: str, *, host: str | None = None, timeout: float = 5.0) -> bool:
    """True when this host's worker refreshed its health key lately (arq's `check_health`, with
    our key and a bounded wait); False when it did not, or Redis does not answer."""
    queue = await Queue.connect(url)
    try:
        async with asyncio.timeout(timeout):
            found = await queue.redis.get(health_check_key(host))
    except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as error:
        log.warning("worker.check_failed", error=str(error))
        return False
    finally:
        await queue.close()
    if found is None:
        log.warning("worker.check_failed", error="no health key: no worker polling on this host")
        return False
    log.info("worker.check_ok", health=found.decode(errors="replace"))
    return True
