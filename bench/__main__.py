"""`python -m bench`: HTTP overhead and queue latency, each against a baseline from the same run.

- http: requests/s and latency of pdbridge's /healthz (middleware, metrics, access log) against a
  bare Starlette app, both under uvicorn in their own process, loaded from this process.
- queue: enqueue-to-start latency of a job through `service.queue` and a real arq worker, against
  the round trip of a Redis PING on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

from service.embedded_redis import EmbeddedRedis, free_port


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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


def serve(factory: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", factory, "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        try:
            httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            return process, port
        except httpx2.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{factory} did not start")


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


def spread(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1e3:6.2f} ms   p99 {pct(values, 0.99) * 1e3:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        print(f"pdbridge benchmarks on {os.cpu_count()} cores, embedded Redis {redis.url}")
        bench_http(redis.url, Path(tmp), args.requests)
        asyncio.run(bench_queue(redis.url, Path(tmp), args.jobs))


if __name__ == "__main__":
    main()
