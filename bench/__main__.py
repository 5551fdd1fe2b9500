"""`python -m bench`: HTTP, queue and end-to-end costs, each against a baseline from the same run.

- http: requests/s and latency of pdbridge's /healthz (middleware, metrics, access log) against a
  bare Starlette app, both under uvicorn in their own process, loaded from this process.
- ingest: Telegram webhooks through pdbridge (verify the secret, record the delivery durably,
  enqueue the relay, answer) against a bare app that only reads, checks and parses them.
- queue: enqueue-to-start latency of a job through `service.queue` and a real arq worker, against
  the round trip of a Redis PING on the same server.
- e2e: the whole service (`python -m service run`) as a black box, webhooks in and Pipedrive
  `receive` calls out to a stand-in: relay rate, CPU per message, latency, rate-limit use (see
  bench/e2e.py).

`--only NAME` (repeatable) runs some of them: `python -m bench --only e2e`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from bench import e2e
from bench.common import BENCH_SECRET_KEY, pct, scratch_postgres, seed_channel, serve, spread
from service.embedded_redis import EmbeddedRedis

BENCHES = ("http", "ingest", "queue", "e2e")


async def load(port: int, total: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
        for _ in range(50):  # warm-up
            await client.get("/healthz")
        remaining = total

        async def user() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await client.get("/healthz")
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return total / (time.perf_counter() - started), latencies


def bench_http(redis_url: str, workdir: Path, total: int) -> None:
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{workdir}/bench.db",
               SECRET_KEY="bench-secret-0123456789-abcdefghijklmnop")  # fmt: skip
    results: dict[str, tuple[float, list[float]]] = {}
    for name, factory in (
        ("bare starlette", "bench.apps:bare"),
        ("pdbridge", "bench.apps:pdbridge"),
    ):
        process, port = serve(factory, env)
        try:
            results[name] = asyncio.run(load(port, total, concurrency=16))
        finally:
            process.terminate()
            process.wait()
    print(f"\nhttp GET /healthz, {total} requests, 16 concurrent (uvicorn, 1 process each)")
    for name, (rate, lat) in results.items():
        print(f"  {name:15} {rate:8.0f} req/s   p50 {pct(lat, .5) * 1e3:6.2f} ms"
              f"   p99 {pct(lat, .99) * 1e3:6.2f} ms")  # fmt: skip
    ratio = results["pdbridge"][0] / results["bare starlette"][0]
    print(f"  ratio pdbridge / bare: {ratio:.2f} of the baseline request rate")
    print("  (the load generator is Python on the same 2 cores: equal rates mean it is the limit)")


async def post_updates(
    port: int, path: str, secret: str, total: int, concurrency: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret, "Content-Type": "application/json"}
    counter = iter(range(1, total + 1))
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:

        async def user() -> None:
            for n in counter:
                update = {
                    "update_id": n,
                    "message": {
                        "message_id": n,
                        "date": 1_700_000_000,
                        "chat": {"id": 1000 + n % 100, "type": "private", "first_name": "B"},
                        "from": {"id": 1000 + n % 100, "is_bot": False, "first_name": "B"},
                        "text": f"message {n}",
                    },
                }
                started = time.perf_counter()
                response = await client.post(path, content=json.dumps(update), headers=headers)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return total / (time.perf_counter() - started), latencies


def bench_ingest(redis_url: str, database_url: str, total: int) -> None:
    secret = "bench-webhook-secret"
    pcid = asyncio.run(seed_channel(database_url, secret))
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=database_url,
               SECRET_KEY=BENCH_SECRET_KEY, BENCH_SECRET=secret)  # fmt: skip
    results: dict[str, tuple[float, list[float]]] = {}
    for name, factory in (
        ("bare starlette", "bench.apps:bare"),
        ("pdbridge", "bench.apps:pdbridge"),
    ):
        process, port = serve(factory, env)
        try:
            results[name] = asyncio.run(
                post_updates(port, f"/webhooks/telegram/{pcid}", secret, total, concurrency=16)
            )
        finally:
            process.terminate()
            process.wait()
    store = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
    print(f"\ningest POST /webhooks/telegram, {total} updates, 16 concurrent ({store}, 1 process)")
    for name, (rate, lat) in results.items():
        print(f"  {name:15} {rate:8.0f} req/s   {spread(lat)}")
    ratio = results["pdbridge"][0] / results["bare starlette"][0]
    print(f"  ratio pdbridge / bare: {ratio:.2f} of the baseline request rate")


async def bench_queue(redis_url: str, workdir: Path, jobs: int) -> None:
    from jobs.worker import build_worker
    from service import queue as queue_module
    from service.config import Settings
    from service.store import Database
    from service.store.migrate import upgrade

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_url=redis_url,
        database_url=f"sqlite:///{workdir}/queue.db",
        secret_key="bench-secret-0123456789-abcdefghijklmnop",
        log_level="warning",
    )
    db = Database(settings.database_url)
    await upgrade(db)
    await db.dispose()
    queue = await queue_module.Queue.connect(redis_url)
    await queue.redis.flushdb()  # the ingest run left its relay jobs queued
    pings = []
    for _ in range(jobs):
        started = time.perf_counter()
        await queue.ping()
        pings.append(time.perf_counter() - started)

    delays: list[float] = []
    done = asyncio.Event()

    async def stamp(ctx: Any, payload: dict[str, Any]) -> None:
        delays.append(time.time() - payload["t"])
        if len(delays) == jobs:
            done.set()

    worker = build_worker(settings, extra_functions=[queue_module.job(stamp)], handle_signals=False)
    task = asyncio.create_task(worker.async_run())
    await asyncio.sleep(0.3)
    for i in range(jobs):
        await queue.enqueue("stamp", {"t": time.time()}, key=f"bench-{i}-{time.time_ns()}")
        await asyncio.sleep(0.002)
    await asyncio.wait_for(done.wait(), 60)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with contextlib.suppress(asyncio.CancelledError):
        await worker.close()
    await queue.close()
    print(f"\nqueue: {jobs} jobs, enqueue to job start (one worker, poll delay "
          f"{queue_module.POLL_DELAY * 1e3:.0f} ms)")  # fmt: skip
    print(f"  redis PING round trip  {spread(pings)}")
    print(f"  enqueue -> job start   {spread(delays)}")
    ratio = statistics.median(delays) / statistics.median(pings)
    print(f"  ratio job start / PING (p50): {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="also measure ingest and e2e on PostgreSQL, in a scratch database created through "
        "URL (e.g. postgresql://postgres@127.0.0.1:5432/test)",
    )
    parser.add_argument(
        "--only", action="append", choices=BENCHES, help="run only this bench (repeatable)"
    )
    e2e.add_arguments(parser)
    args = parser.parse_args()
    only = set(args.only or BENCHES)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"pdbridge benchmarks on {os.cpu_count()} cores: {', '.join(sorted(only))}")
        if only & {"http", "ingest", "queue"}:
            with EmbeddedRedis(Path(tmp) / "redis") as redis:
                if "http" in only:
                    bench_http(redis.url, Path(tmp), args.requests)
                if "ingest" in only:
                    bench_ingest(redis.url, f"sqlite:///{tmp}/ingest.db", args.requests // 2)
                    if args.postgres:
                        with scratch_postgres(args.postgres) as database_url:
                            bench_ingest(redis.url, database_url, args.requests // 2)
                if "queue" in only:
                    asyncio.run(bench_queue(redis.url, Path(tmp), args.jobs))
        if "e2e" in only:
            e2e.run(args, Path(tmp))


if __name__ == "__main__":
    main()
