"""End to end, black box: Telegram webhooks in, Pipedrive `receive` calls out, on real processes.

The service runs as operators run it (`python -m service run`: its web and worker children) on a
seeded Telegram channel, an embedded Redis and SQLite or a scratch PostgreSQL database. Pipedrive
is `bench.standin` in its own process; it records when each `receive` arrives. This process only
posts signed updates over HTTP (raw keep-alive connections, one chat's updates one at a time, as
Telegram sends them) and reads the stand-in's record. Each figure comes with a baseline from the
same run, printed as a ratio:

1. relay throughput: N updates over M chats as fast as they are taken, messages/s from the first
   POST to the last `receive`, and the service's CPU (all its processes, by role) per message;
   lost, duplicated and out-of-order messages (per chat). Baseline: the same requests posted
   straight to the stand-in's `receive`, the rate of a bridge that cost nothing.
2. ingest: requests/s and p50/p99 of those POSTs while the worker relays, then p50/p99 paced at
   half that rate. Baseline: the bare Starlette app of bench/apps.py under the same loads.
3. added latency at a fixed rate: from sending the POST to the stand-in's receipt (one clock,
   `time.time()` in both processes). Baseline: the same requests straight to the stand-in.
4. rate-limit use: with the stand-in limiting to 80 requests per rolling 2 s, accepted
   `receive`s per second in the middle of the drain against the 40/s allowed; 429s, and
   requests sent inside a reset window a 429 announced (there should be none).

`--profile` samples each service process with py-spy during 1 (only samples holding the GIL, so
idle waits never count) and prints the functions and packages with the most own time; the folded
stacks (input for flamegraph.pl or speedscope) go to bench/profiles/.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

from bench.common import BENCH_SECRET_KEY, pct, scratch_postgres, seed_channel, serve
from bench.loadgen import Connection, Load, Plans, Target
from service.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "bench" / "profiles"
SECRET = "bench-e2e-webhook-secret"
RECEIVE = "/api/v1/channels/messages/receive"


def update(n: int, chat: int) -> bytes:
    """Telegram's update for message `n` of private chat `chat` (shared/fixtures/telegram)."""
    chat_ = {"id": chat, "type": "private", "first_name": "A"}
    person = {"id": chat, "is_bot": False, "first_name": "A"}
    message = {"message_id": n, "date": int(time.time()), "chat": chat_, "from": person,
               "text": f"hello {n}"}  # fmt: skip
    return json.dumps({"update_id": n, "message": message}).encode()


def receive_body(n: int, chat: int) -> bytes:
    """What the bridge would send for it: the baseline posts this to the stand-in directly."""
    body = {"id": f"direct:{chat}:{n}", "conversation_id": f"direct:{chat}",
            "channel_id": "bench-channel", "message": f"hello {n}"}  # fmt: skip
    return json.dumps(body).encode()


@dataclass
class Outcome:
    arrivals: dict[int, float]
    lost: int
    duplicates: int
    out_of_order: int
    throttled: list[float]

    def line(self, load: Load) -> str:
        return (f"{len(self.arrivals)} relayed, {self.lost} missing at the end of the wait, "
                f"{self.duplicates} duplicates, {self.out_of_order} out of order, "
                f"{load.rejected} POSTs refused")  # fmt: skip


def analyse(load: Load, receipts: list[list[Any]]) -> Outcome:
    """Match the stand-in's receipts to what was sent, by the text `hello N`."""
    arrivals: dict[int, float] = {}
    last: dict[str, int] = {}
    seen: set[str] = set()
    duplicates = out_of_order = 0
    throttled = []
    for at, message_id, conversation, text, status in receipts:
        if status == 429:
            throttled.append(at)
        if status >= 300:
            continue
        n = int(str(text).rsplit(" ", 1)[-1])
        if message_id in seen:
            duplicates += 1
            continue
        seen.add(message_id)
        if n not in load.sent:
            continue  # an earlier phase's straggler
        out_of_order += n < last.get(conversation, 0)
        last[conversation] = max(n, last.get(conversation, 0))
        arrivals[n] = at
    lost = sum(1 for n in load.sent if n not in arrivals)
    return Outcome(arrivals, lost, duplicates, out_of_order, throttled)


def role_of(proc: psutil.Process) -> str:
    """`web`, `worker`, `run` (the supervisor) or whatever else `python -m service X` runs."""
    cmd = proc.cmdline()
    return str(cmd[cmd.index("service") + 1] if "service" in cmd[:-1] else proc.name())


CpuTimes = dict[int, tuple[str, float]]


def cpu(procs: list[tuple[str, psutil.Process]]) -> CpuTimes:
    found = {}
    for label, proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            found[proc.pid] = (label, times.user + times.system)
    return found


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy, every program's."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + t.steal)


def cpu_delta(before: CpuTimes, after: CpuTimes) -> dict[str, float]:
    """CPU seconds by label between two snapshots (a process born in between counts whole)."""
    spent: dict[str, float] = defaultdict(float)
    for pid, (label, seconds) in after.items():
        spent[label] += seconds - before.get(pid, (label, 0.0))[1]
    return spent


async def call(port: int, method: str, path: str) -> Any:
    """One request on a fresh connection; the JSON answer of a 200, else None."""
    conn = Connection(port)
    try:
        status, body = await conn.request(method, path)
        return json.loads(body) if status == 200 else None
    finally:
        conn.close()


@dataclass
class Stack:
    port: int
    standin_port: int
    service: subprocess.Popen[bytes]
    others: dict[str, psutil.Process]
    log: Path
    database: str

    def service_procs(self) -> list[psutil.Process]:
        root = psutil.Process(self.service.pid)
        return [root, *root.children(recursive=True)]

    def all_procs(self) -> list[tuple[str, psutil.Process]]:
        """Every process that works for a relay, labelled: the service's by role, then Redis,
        the stand-in, this load generator and the PostgreSQL backends of our database."""
        found = [(role_of(p), p) for p in self.service_procs()]
        found += [(label, p) for label, p in self.others.items()]
        if self.database.startswith("postgres"):
            name = self.database.rsplit("/", 1)[-1]
            for proc in psutil.process_iter(["name", "cmdline"]):
                if proc.info["name"] == "postgres" and name in " ".join(proc.info["cmdline"]):
                    found.append(("postgres", proc))
        return found

    async def standin(self, method: str, path: str) -> Any:
        return await call(self.standin_port, method, path)

    async def drain(self, expected: int, timeout: float, stall: float = 30.0) -> list[list[Any]]:
        """Wait until the stand-in holds `expected` distinct messages (bounded), return its log."""
        deadline, seen, moved = time.monotonic() + timeout, -1, time.monotonic()
        while time.monotonic() < min(deadline, moved + stall):
            unique = (await self.standin("GET", "/_bench/state"))["unique"]
            if unique >= expected:
                break
            if unique != seen:
                seen, moved = unique, time.monotonic()
            await asyncio.sleep(0.05)
        receipts: list[list[Any]] = await self.standin("GET", "/_bench/receipts")
        return receipts


def stop(proc: subprocess.Popen[bytes], grace: float = 35.0) -> None:
    """SIGTERM, then SIGKILL to it and whatever of its descendants is left, by pid."""
    family: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        family = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError, asyncio.IncompleteReadError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


@contextlib.contextmanager
def stack(workdir: Path, database: str, tag: str, limit: int | None) -> Iterator[Stack]:
    """Redis, stand-in and `python -m service run` on a freshly seeded database."""
    asyncio.run(seed_channel(database, SECRET))
    with contextlib.ExitStack() as cleanup:
        redis = cleanup.enter_context(EmbeddedRedis(workdir / f"redis-{tag}"))
        standin_port, port = free_port(), free_port()
        cmd = [sys.executable, "-m", "bench.standin", "--port", str(standin_port)]
        standin = subprocess.Popen(cmd + (["--limit", str(limit)] if limit else []), cwd=ROOT)
        cleanup.callback(stop, standin, 5.0)
        local = "http://127.0.0.1"
        env = dict(os.environ, DATABASE_URL=database, REDIS_URL=redis.url, HOST="127.0.0.1",
                   SECRET_KEY=BENCH_SECRET_KEY, PORT=str(port), PUBLIC_BASE_URL=f"{local}:{port}",
                   PIPEDRIVE_API_URL=f"{local}:{standin_port}", PIPEDRIVE_API_TOKEN="bench",
                   TELEGRAM_API_URL=f"{local}:{free_port()}",  # nothing listens there
                   LOG_LEVEL="warning", PYTHONPATH=str(ROOT))  # fmt: skip
        log = workdir / f"service-{tag}.log"
        with log.open("wb") as out:
            cmd = [sys.executable, "-m", "service", "run"]
            service = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=out, stderr=out)
        cleanup.callback(stop, service)
        assert redis.process is not None
        others = {"redis": psutil.Process(redis.process.pid), "load": psutil.Process(),
                  "stand-in": psutil.Process(standin.pid)}  # fmt: skip
        found = Stack(port, standin_port, service, others, log, database)

        def webhooks_made() -> bool:
            calls = asyncio.run(found.standin("GET", "/_bench/state"))["calls"]
            return bool(calls.get("POST /api/v1/webhooks", 0) >= 3)

        try:
            wait_until(lambda: asyncio.run(call(port, "GET", "/healthz")) is not None, 60, "web")
            wait_until(webhooks_made, 60, "single-company setup (users/me, webhooks)")
        except RuntimeError:
            print(log.read_text(errors="replace")[-3000:])
            raise
        yield found


def log_problems(log: Path) -> str:
    """The service logs at warning: count what it said, by level and event."""
    said: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            said[f"{entry.get('level', '?')} {entry.get('event', '?')}"] += 1
        except ValueError:
            if line.startswith(("Traceback", "ERROR", "WARNING")) or "Error" in line[:60]:
                said[line.strip()[:100]] += 1
    return ", ".join(f"{k} x{v}" for k, v in said.most_common(8)) or "nothing"


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(procs: list[psutil.Process], name: str, on: bool) -> Iterator[dict[str, Path]]:
    """py-spy on each service process but an idle supervisor while the block runs; yields
    role -> folded stacks file (bench/profiles/ ignores itself in git)."""
    binary, files, spies = py_spy() if on else None, {}, []
    if on and binary is None:
        print("  (no py-spy next to this Python: pip install py-spy)")
    for proc in [p for p in procs if role_of(p) != "run"] or procs:
        if binary is None:
            break
        PROFILES.mkdir(exist_ok=True)
        (PROFILES / ".gitignore").write_text("*\n")
        files[role_of(proc)] = out = PROFILES / f"{name}-{role_of(proc)}.txt"
        out.unlink(missing_ok=True)
        # --gil: only samples holding the GIL, i.e. Python's own CPU; idle waits never count.
        cmd = [binary, "record", "--nonblocking", "--gil", "--rate", "100", "--format", "raw"]
        cmd += ["--output", str(out), "--pid", str(proc.pid)]
        spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield files
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()


Shares = list[tuple[str, float]]


def top_frames(folded: Path, count: int = 5) -> tuple[int, Shares, Shares]:
    """From py-spy's raw format (`frame;frame;... samples` a line): all samples, and the
    functions and the packages with the most own (leaf) samples, as shares of all samples.
    (Inclusive time would mislead: py-spy's stacks stop where SQLAlchemy switches greenlets.)"""
    own: Counter[str] = Counter()
    package: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1]) or "(no Python frame)"
        own[leaf] += int(samples)
        where = re.search(r"\(([^)]*)\)$", leaf)
        package[where.group(1).split("/")[0].removesuffix(".py") if where else leaf] += int(samples)
    total = sum(own.values()) or 1
    shares = [[(f, k / total) for f, k in c.most_common(count)] for c in (own, package)]
    return total, shares[0], shares[1]


def ms(values: list[float]) -> str:
    """p50 / p99 in milliseconds."""
    return f"{pct(values, 0.5) * 1e3:.1f} / {pct(values, 0.99) * 1e3:.1f}" if values else "-"


def p50_ratio(values: list[float], baseline: list[float]) -> float | None:
    return pct(values, 0.5) / pct(baseline, 0.5) if values and baseline else None


def per_message(spent: dict[str, float], labels: list[str], messages: int) -> str:
    parts = [f"{label} {spent[label] / max(1, messages) * 1e3:.2f}" for label in labels]
    return ", ".join(parts) + " ms"


def window_use(times: list[float], window: float = 2.0) -> float:
    """How full Pipedrive's rolling window was mid-drain: the median count of arrivals in the
    `window` seconds from each arrival between the 20th and the 80th percentile. A limiter that
    refills each window as it frees sends in bursts; counting per window, as Pipedrive does,
    is not skewed by where a percentile falls within a burst, as a rate over the span is."""
    times = sorted(times)
    lo, hi = len(times) // 5, len(times) * 4 // 5
    ahead = (bisect.bisect_right(times, t + window) - i for i, t in enumerate(times[lo:hi], lo))
    counts = sorted(ahead)
    return float(counts[len(counts) // 2]) if counts else 0.0


def steady_rate(times: list[float]) -> float:
    """Arrivals per second between the 20th and the 80th percentile of arrival times."""
    times = sorted(times)
    lo, hi = len(times) // 5, len(times) * 4 // 5
    return (hi - lo) / (times[hi] - times[lo]) if hi > lo and times[hi] > times[lo] else 0.0


Row = tuple[str, str, str, float | None]


@dataclass
class Burst:
    """Figure 5: the other chats' added latency while one chat takes a burst, and alone."""

    count: int
    posted_in: float
    alone: list[float]
    during: list[float]
    outcome: Outcome
    load: Load

    def rows(self) -> list[Row]:
        return [(f"5 others' added latency, {self.count} in one chat, p50 / p99 ms",
                 ms(self.during), f"{ms(self.alone)} without the burst",
                 p50_ratio(self.during, self.alone))]  # fmt: skip

    def delay_ms(self, q: float) -> float:
        return (pct(self.during, q) - pct(self.alone, q)) * 1e3 if self.during else float("nan")

    def line(self) -> str:
        return (f"the burst's {self.count} updates posted in {self.posted_in:.2f} s "
                f"({self.outcome.line(self.load)}); it delayed the other chats' messages by "
                f"{self.delay_ms(0.5):.0f} ms at p50 and {self.delay_ms(0.99):.0f} ms at p99 "
                f"(target: at most 100 ms)")  # fmt: skip


async def burst_delay(s: Stack, service: Target, plans: Plans, count: int, chats: int) -> Burst:
    """`count` updates to one new chat as fast as taken (one at a time, as Telegram sends a
    chat's updates), and meanwhile the other chats' updates at 20/s; the others' added latency
    (POST to `receive`) against the same paced updates without the burst, just before."""
    others, rate = 30, 20.0

    async def paced() -> tuple[Load, Outcome]:
        load = await service.paced(plans.make(others, chats), rate)
        return load, analyse(load, await s.drain(len(load.sent), 30))

    def added(load: Load, out: Outcome) -> list[float]:
        return [out.arrivals[k] - t for k, t in load.sent.items() if k in out.arrivals]

    await s.standin("POST", "/_bench/reset")
    alone = added(*await paced())
    await s.standin("POST", "/_bench/reset")
    blast = asyncio.ensure_future(service.blast(plans.make(count, 1, first_chat=5_000_000), 1))
    await asyncio.sleep(0.05)
    during_load = await service.paced(plans.make(others, chats), rate)
    burst = await blast
    receipts = await s.drain(len(burst.sent) + len(during_load.sent), 60)
    during = added(during_load, analyse(during_load, receipts))
    return Burst(count, burst.finished - burst.started, alone, during, analyse(burst, receipts),
                 burst)  # fmt: skip


def run_backend(args: argparse.Namespace, workdir: Path, store: str, dbs: Iterator[str]) -> None:
    plans, n, chats, conc = Plans(), args.e2e_messages, args.e2e_conversations, args.e2e_concurrency
    headers = {"x-telegram-bot-api-secret-token": SECRET}
    path = "/webhooks/telegram/bench-channel"
    m = int(args.latency_rate * args.latency_seconds)
    print(
        f"\ne2e on {store}: {conc} connections, {chats} chats; Pipedrive stand-in answers in 1 ms"
    )
    with stack(workdir, next(dbs), f"{store}-a", None) as s:
        service = Target(s.port, path, update, headers)
        direct = Target(s.standin_port, RECEIVE, receive_body, {"x-api-token": "bench"})
        print(
            "  service processes: " + ", ".join(f"{role_of(p)} {p.pid}" for p in s.service_procs())
        )
        asyncio.run(service.blast(plans.make(20, 5, first_chat=900), 8))  # warm-up
        asyncio.run(s.drain(20, args.wait))
        asyncio.run(s.standin("POST", "/_bench/reset"))
        direct1 = asyncio.run(direct.blast(plans.make(n, chats), conc))
        asyncio.run(s.standin("POST", "/_bench/reset"))

        # 1 and 2: as fast as taken; the CPU of every process from the first POST to the drain.
        service_roles = sorted({role_of(p) for p in s.service_procs()})
        before, busy, t0 = cpu(s.all_procs()), machine_busy(), time.monotonic()
        with profiled(s.service_procs(), store.lower(), args.profile) as profiles:
            load1 = asyncio.run(service.blast(plans.make(n, chats), conc))
            out1 = analyse(load1, asyncio.run(s.drain(len(load1.sent), args.wait)))
            spent = cpu_delta(before, cpu(s.all_procs()))
            elsewhere = (machine_busy() - busy - sum(spent.values())) / (time.monotonic() - t0)
        relayed = len(out1.arrivals)
        end = max(out1.arrivals.values(), default=load1.finished)
        relay_rate = relayed / max(1e-9, end - load1.started)
        others = [label for label in spent if label not in service_roles]

        # 5: one chat's burst, and the other chats' messages meanwhile.
        burst = asyncio.run(burst_delay(s, service, plans, args.burst_messages, chats))
        problems = [f"relay stack: {log_problems(s.log)}"]
        rows: list[Row] = [
            ("1 relay msg/s, first POST to last receive", f"{relay_rate:.1f}",
             f"{direct1.rate:.0f} straight to the stand-in", relay_rate / direct1.rate),
            *burst.rows(),
        ]  # fmt: skip
        if args.relay_only:
            report(rows, problems, profiles)
            report_relay(
                spent, service_roles, others, elsewhere, relayed, n, end, load1, out1, profiles
            )
            print(f"  5: {burst.line()}")
            return

        # 3: a fixed rate, straight to the stand-in and then through the service.
        asyncio.run(s.standin("POST", "/_bench/reset"))
        direct3 = asyncio.run(direct.paced(plans.make(m, chats), args.latency_rate))
        ref = analyse(direct3, asyncio.run(s.drain(len(direct3.sent), 10)))
        floor = [ref.arrivals[k] - t for k, t in direct3.sent.items() if k in ref.arrivals]
        asyncio.run(s.standin("POST", "/_bench/reset"))
        load3 = asyncio.run(service.paced(plans.make(m, chats), args.latency_rate))
        out3 = analyse(load3, asyncio.run(s.drain(len(load3.sent), args.wait)))
        added = [out3.arrivals[k] - t for k, t in load3.sent.items() if k in out3.arrivals]

        # 2, paced at half the rate the service took updates at in 1.
        asyncio.run(s.standin("POST", "/_bench/reset"))
        half = max(1.0, load1.rate / 2)
        load2 = asyncio.run(service.paced(plans.make(int(half * args.paced_seconds), chats), half))
        out2 = analyse(load2, asyncio.run(s.drain(len(load2.sent), args.wait)))
        problems = [f"relay stack: {log_problems(s.log)}"]

    env = dict(os.environ, BENCH_SECRET=SECRET, PYTHONPATH=str(ROOT))
    bare, bare_port = serve("bench.apps:bare", env)
    try:
        bare_target = Target(bare_port, path, update, headers)
        bare1 = asyncio.run(bare_target.blast(plans.make(n, chats), conc))
        bare2 = asyncio.run(bare_target.paced(plans.make(max(1, len(load2.sent)), chats), half))
    finally:
        stop(bare, 5.0)

    # 4: the stand-in limits to 80 per rolling 2 s, as a Pipedrive OAuth Lite token.
    with stack(workdir, next(dbs), f"{store}-b", 80) as s:
        service = Target(s.port, path, update, headers)
        asyncio.run(s.standin("POST", "/_bench/reset"))
        load4 = asyncio.run(service.blast(plans.make(args.ratelimit_messages, chats), conc))
        out4 = analyse(load4, asyncio.run(s.drain(len(load4.sent), args.wait)))
        inside = asyncio.run(s.standin("GET", "/_bench/state"))["inside_window"]
        problems.append(f"rate-limit stack: {log_problems(s.log)}")
    steady = steady_rate(list(out4.arrivals.values()))
    filled = window_use(list(out4.arrivals.values()))

    rows[1:1] = [
        ("2 ingest req/s, while relaying (in 1)", f"{load1.rate:.0f}",
         f"{bare1.rate:.0f} bare Starlette", load1.rate / bare1.rate),
        ("  its POSTs, p50 / p99 ms", ms(load1.latencies), ms(bare1.latencies),
         p50_ratio(load1.latencies, bare1.latencies)),
        (f"  paced at {half:.0f} req/s, p50 / p99 ms", ms(load2.latencies), ms(bare2.latencies),
         p50_ratio(load2.latencies, bare2.latencies)),
        (f"3 added latency at {args.latency_rate:.0f}/s, p50 / p99 ms", ms(added),
         f"{ms(floor)} straight to the stand-in", p50_ratio(added, floor)),
        ("4 receive 2xx per rolling 2 s mid-drain (median)", f"{filled:.0f}", "80 allowed",
         filled / 80),
    ]  # fmt: skip
    report(rows, problems, profiles)
    report_relay(spent, service_roles, others, elsewhere, relayed, n, end, load1, out1, profiles)
    print(
        f"  2: paced {len(load2.sent)} updates for {args.paced_seconds:.0f} s: {out2.line(load2)}"
    )
    print(f"  3: {m} updates for {args.latency_seconds:.0f} s: {out3.line(load3)}")
    print(f"  4: {args.ratelimit_messages} updates: {out4.line(load4)}; {len(out4.throttled)} "
          f"answered 429, {inside} sent inside a reset window a 429 announced; {steady:.1f} 2xx/s "
          f"between the 20th and 80th percentile of arrivals (40 allowed)")  # fmt: skip
    print(f"  5: {burst.line()}")


def report(rows: list[Row], problems: list[str], profiles: dict[str, Path]) -> None:
    """The table of figures against their baselines, the service's complaints, the profiles."""
    print(f"  {'ratio = pdbridge / baseline':46} {'pdbridge':>16}   {'baseline':34} {'ratio':>7}")
    for name, value, baseline, ratio in rows:
        shown = f"{ratio:.3f}" if ratio is not None else ""
        print(f"  {name:46} {value:>16}   {baseline:34} {shown:>7}")
    for line in problems:
        print(f"  service log (warning and up), {line}")
    for role, folded in profiles.items():
        if not folded.exists():
            print(f"  py-spy wrote no profile of {role} (it needs ptrace: root or CAP_SYS_PTRACE)")
        else:
            total, own, inclusive = top_frames(folded)
            print(f"  py-spy {role}, {total} samples with the GIL at 100 Hz in "
                  f"{folded.relative_to(ROOT)}:")  # fmt: skip
            print(f"    {'most own time, by function':63} by package")
            for (frame, share), (mine, under) in zip(own, inclusive, strict=False):
                print(f"    {share * 100:5.1f}%  {frame:56} {under * 100:5.1f}%  {mine}")


#: Code only the worker runs (the relay, its sinks, the Pipedrive client, the jobs, arq), and
#: code only the web runs. py-spy often sees a coroutine's stack from where it was resumed, not
#: from its task's root, so a sample is placed by any of its frames.
WORKER_CODE = ("service/relay.py", "service/outbox.py", "service/sinks/", "service/pipedrive/",
               "service/queue.py", "jobs/", "arq/", "httpx2/", "httpcore2/",
               "service/http_transport.py")  # fmt: skip
WEB_CODE = ("uvicorn/", "starlette/", "handlers/", "service/ingest.py", "service/middleware.py")


def by_side(folded: Path) -> list[tuple[str, float]]:
    """The one-process `together` split into its web and worker sides by the code in each
    sample's stack (WORKER_CODE, WEB_CODE); the rest is the shared event loop, and stacks that
    name neither (a statement's rows, Redis's socket)."""
    sides: Counter[str] = Counter()
    for line in folded.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if any(f"({where}" in stack for where in WORKER_CODE):
            sides["worker"] += int(samples)
        elif any(f"({where}" in stack for where in WEB_CODE):
            sides["web"] += int(samples)
        else:
            sides["loop and other"] += int(samples)
    total = sum(sides.values()) or 1
    return [(side, sides[side] / total) for side in ("worker", "web", "loop and other")]


def report_relay(
    spent: dict[str, float],
    service_roles: list[str],
    others: list[str],
    elsewhere: float,
    relayed: int,
    n: int,
    end: float,
    load1: Load,
    out1: Outcome,
    profiles: dict[str, Path],
) -> None:
    """Figure 1's CPU lines: the service's CPU per relayed message, by role."""
    print(
        f"  1: other programs on the machine used {elsewhere:.2f} of "
        f"{os.cpu_count()} cores meanwhile (py-spy counts there); load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    cpu_each = sum(spent[role] for role in service_roles) / max(1, relayed) * 1e3
    print(
        f"  1: service CPU per relayed message {cpu_each:.2f} ms, by role "
        f"{per_message(spent, service_roles, relayed)}; also {per_message(spent, others, relayed)}"
    )
    print(f"  1: {n} updates in {end - load1.started:.1f} s: {out1.line(load1)}")
    folded = profiles.get("together")
    if folded is not None and folded.exists() and "together" in spent:
        shares = dict(by_side(folded))
        placed = shares["worker"] + shares["web"] or 1.0
        worker_ms = spent["together"] / max(1, relayed) * 1e3 * shares["worker"] / placed
        print(f"  1: together's worker side ~ {worker_ms:.2f} ms per relayed message (its share "
              f"of the samples placed by py-spy: worker {shares['worker'] * 100:.0f} %, web "
              f"{shares['web'] * 100:.0f} %, the shared loop and other "
              f"{shares['loop and other'] * 100:.0f} % divided pro rata)")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("e2e (the whole service as subprocesses)")
    add = group.add_argument
    add("--e2e-messages", type=int, default=3000, metavar="N", help="updates for 1 (3000)")
    add("--e2e-conversations", type=int, default=50, metavar="M", help="chats (50)")
    add("--e2e-concurrency", type=int, default=32, metavar="C", help="connections in 1 (32)")
    add("--latency-rate", type=float, default=100.0, metavar="PER_S", help="3's rate (100)")
    add("--latency-seconds", type=float, default=10.0, metavar="S", help="3's length (10)")
    add("--paced-seconds", type=float, default=5.0, metavar="S", help="2's paced length (5)")
    add("--ratelimit-messages", type=int, default=600, metavar="N", help="updates for 4 (600)")
    add("--wait", type=float, default=120.0, metavar="S", help="longest wait for a drain (120)")
    add("--burst-messages", type=int, default=300, metavar="N", help="one chat's burst in 5 (300)")
    add("--profile", action="store_true", help="py-spy the service's processes during 1")
    add("--relay-only", action="store_true", help="only 1 (relay, CPU, profile) and 5 (burst)")
    add("--postgres-only", action="store_true", help="skip SQLite (needs --postgres)")


def run(args: argparse.Namespace, workdir: Path) -> None:
    """The e2e figures on SQLite, and on PostgreSQL when `args.postgres` is set."""
    # This process's own log lines (embedded Redis started/stopped) would break up the tables.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    def sqlite() -> Iterator[str]:
        for i in range(2):
            yield f"sqlite:///{workdir}/e2e-{i}.db"

    def postgres() -> Generator[str, None, None]:
        for _ in range(2):
            with scratch_postgres(args.postgres) as url:
                yield url

    if not (args.postgres_only and args.postgres):
        run_backend(args, workdir, "SQLite", sqlite())
    if args.postgres:
        databases = postgres()
        try:
            run_backend(args, workdir, "PostgreSQL", databases)
        finally:
            databases.close()
