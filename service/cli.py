"""The `pdbridge` command: run, web, worker, migrate and the operators' shell tools.

`run` is a small supervisor: it migrates, starts an embedded Redis when `REDIS_URL` is unset, and
runs the service as child processes, `web` and `worker`, on SQLite as on PostgreSQL: the hot
path's SQLite writes are short and wait for another process's lock in asyncio
(`Database.inline`), so two processes no longer take turns at SQLite's busy handler, and the
relay gets the second core (`together`, both in one process, is kept as a command; the bench
compares them in bench/RESULTS.md). A child that exits unexpectedly is restarted with backoff;
SIGINT/SIGTERM, or a child that keeps failing, stops them all.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from service.children import die_with_parent
from service.config import (
    NO_SHARED_KEY,
    VAR_DIR,
    ConfigError,
    Settings,
    ensure_secret_key_file,
    exit_on_config_error,
    load_settings,
)
from service.logging import configure_logging, get_logger

log = get_logger("pdbridge.cli")

#: How long `run` waits for its children after asking them to stop (the worker finishes jobs).
STOP_GRACE_SECONDS = 25.0
#: A child that exits is restarted after this long, doubling per quick failure up to the cap...
RESTART_FIRST_SECONDS = 0.5
RESTART_CAP_SECONDS = 10.0
#: ...unless it failed this often within the window: then `run` gives up and stops.
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 60.0
#: Allocations between two young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000
#: Roles that run beside other processes and encrypt, decrypt or sign: each needs the one shared
#: SECRET_KEY and never makes up its own. `run` generates ./var/secret.key and hands it to its
#: children; `migrate`, `manifest` and `dead-letters` read and write no secret, so need none.
KEYED_ROLES = frozenset({"web", "worker", "together"})


def _migrate(settings: Settings) -> None:
    from service.store import Database
    from service.store.migrate import current_revision, upgrade

    async def go() -> None:
        db = Database(settings.database_url)
        try:
            await upgrade(db)
            log.info("migrate.done", revision=await current_revision(db))
        finally:
            await db.dispose()

    asyncio.run(go())


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _migrate(settings)
    return 0


def _uvicorn_config(app: Any, settings: Settings, **extra: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
        server_header=False,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        **extra,
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    """The HTTP service; `WEB_CONCURRENCY` processes share the port (uvicorn's own manager)."""
    import uvicorn

    from service.app import create_app
    from service.media_stores import with_role_default

    settings = with_role_default(settings, "web")
    if settings.web_concurrency > 1:
        config = _uvicorn_config(
            "service.app:from_environment", settings, factory=True, workers=settings.web_concurrency
        )
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    app = create_app(settings)
    _tune_gc()
    uvicorn.Server(_uvicorn_config(app, settings)).run()
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from jobs.worker import build_worker
    from service import queue
    from service.media_stores import with_role_default

    settings = with_role_default(settings, "worker")

    if args.check:
        if settings.redis_url is None:
            raise ConfigError("REDIS_URL: the health check reads the Redis the worker uses")
        return 0 if asyncio.run(queue.worker_is_healthy(settings.redis_url)) else 1

    async def go() -> None:
        worker = build_worker(settings, handle_signals=False)
        task = asyncio.create_task(queue.run_forever(worker))
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await asyncio.wait(
            [task, asyncio.create_task(stopping.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        log.info("worker.stopping")
        await queue.stop(worker, task)

    _event_loop_run(go())
    return 0


def cmd_together(settings: Settings, args: argparse.Namespace) -> int:
    """The web app and one worker in one process and one event loop (one core's worth: `run`
    starts `web` and `worker` instead; see the module docstring)."""
    import uvicorn

    from jobs.worker import build_worker
    from service import queue
    from service.app import create_app

    async def go() -> None:
        server = uvicorn.Server(_uvicorn_config(create_app(settings), settings))
        worker = build_worker(settings, handle_signals=False)
        task = asyncio.create_task(queue.run_forever(worker))

        def worker_ended(done: asyncio.Task[None]) -> None:
            # A worker that stops on its own (a bug) takes the web down with it, so that `run`
            # sees the exit and restarts the whole process rather than serving without a worker.
            if not server.should_exit and not done.cancelled():
                log.error("together.worker_ended", error=repr(done.exception()))
                server.should_exit = True

        task.add_done_callback(worker_ended)
        # uvicorn re-raises the signal it stopped on once it is done; these handlers take it
        # (the worker is stopped gracefully below instead of the process dying on the spot).
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)
        try:
            await server.serve()
        finally:
            log.info("worker.stopping")
            await queue.stop(worker, task)

    _event_loop_run(go())
    return 0


def _tune_gc() -> None:
    """What the imports built lives as long as the process: frozen out of the collector's scans,
    and young collections run less often. A service allocates many short-lived objects per
    request, and the default thresholds ran a collection every 700 allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 100)


def _event_loop_run(main: Any) -> None:
    """Run on uvloop when it is installed (it is, except on Windows)."""
    _tune_gc()
    if _has("uvloop"):
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from service.embedded_redis import EmbeddedRedis
    from service.media_stores import with_role_default

    keys = settings.secret_keys if settings.secret_key is not None else [ensure_secret_key_file()]
    settings = with_role_default(settings, "run")  # its children share ./var/media
    _migrate(settings)
    env = dict(os.environ)
    env["SECRET_KEY"] = ",".join(keys)  # the children share this one key (they never make one)
    redis: EmbeddedRedis | None = None
    if settings.redis_url is None:
        redis = EmbeddedRedis(VAR_DIR / "redis")
        env["REDIS_URL"] = redis.start()
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    roles = ("web", "worker")
    supervisor = _Supervisor(roles, env)
    exit_code = 0
    try:
        supervisor.start_all()
        while not stopping:
            if not supervisor.check():
                exit_code = 1
                break
            time.sleep(0.2)
        else:
            log.info("run.stopping", signal=signal.Signals(stopping[0]).name)
    finally:
        _stop_children(supervisor.children)
        if redis is not None:
            redis.stop()
    return exit_code


def cmd_sandbox(settings: Settings, args: argparse.Namespace) -> int:
    """The service wired to the local Pipedrive emulator and Telegram simulator (sandbox/)."""
    return _cmd_sandbox(settings.port)


def _cmd_sandbox(port: int) -> int:
    # The one place the service touches the sandbox package, lazily: production never loads it.
    try:
        from sandbox.runner import run_sandbox
    except ImportError as error:  # an install without the dev extras (jsonschema)
        log.error("sandbox.unavailable", reason=str(error), fix="pip install -e '.[dev]'")
        return 2

    return run_sandbox(port)


def _stop_children(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for role, child in children.items():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("run.child_killed", role=role, pid=child.pid)
            child.kill()
            child.wait()


class _Supervisor:
    """`run`'s children: started, watched, restarted with backoff when they exit unasked."""

    def __init__(self, roles: Sequence[str], env: dict[str, str]) -> None:
        self.roles = roles
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.failures: dict[str, list[float]] = {role: [] for role in roles}
        self.restart_at: dict[str, float] = {}

    def start(self, role: str) -> None:
        self.children[role] = subprocess.Popen(  # noqa: S603 -- our own interpreter and module
            [sys.executable, "-m", "service", role], env=self.env, preexec_fn=die_with_parent
        )
        log.info("run.child_started", role=role, pid=self.children[role].pid)

    def start_all(self) -> None:
        for role in self.roles:
            self.start(role)

    def check(self) -> bool:
        """Restart what exited (after its backoff); False when a child keeps failing."""
        now = time.monotonic()
        for role in self.roles:
            if role in self.restart_at:
                if now >= self.restart_at[role]:
                    del self.restart_at[role]
                    self.start(role)
                continue
            child = self.children[role]
            if child.poll() is None:
                continue
            recent = [t for t in self.failures[role] if now - t < RESTART_WINDOW_SECONDS]
            recent.append(now)
            self.failures[role] = recent
            if len(recent) >= RESTART_LIMIT:
                log.error(
                    "run.child_keeps_failing",
                    role=role,
                    exit_code=child.returncode,
                    failures=len(recent),
                    window_seconds=RESTART_WINDOW_SECONDS,
                    action="stopping; see the child's log lines above",
                )
                return False
            delay = min(RESTART_CAP_SECONDS, RESTART_FIRST_SECONDS * 2 ** (len(recent) - 1))
            log.warning(
                "run.child_exited",
                role=role,
                exit_code=child.returncode,
                restart_in_seconds=delay,
            )
            self.restart_at[role] = now + delay
        return True


def cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from service import replay
    from service.queue import Queue
    from service.store import Database, dead_letters

    async def go() -> int:
        db = Database(settings.database_url)
        try:
            if args.action == "list":
                found = await dead_letters.list_all(db, limit=args.limit)
                _print_json([d.as_json() for d in found])
                return 0
            if settings.redis_url is None:
                raise ConfigError("REDIS_URL: replay needs the Redis the workers use")
            queue = await Queue.connect(settings.redis_url)
            try:
                if args.all:
                    _print_json({"replayed": await replay.replay_pending(db, queue)})
                    return 0
                if args.id is None:
                    sys.stderr.write("pdbridge: give a dead letter ID or --all\n")
                    return 2
                try:
                    await replay.replay_one(db, queue, args.id)
                except replay.UnknownDeadLetter:
                    sys.stderr.write(f"pdbridge: no dead letter {args.id}\n")
                    return 1
                _print_json({"id": args.id, "status": "enqueued"})
                return 0
            finally:
                await queue.close()
        finally:
            await db.dispose()

    return asyncio.run(go())


def cmd_manifest(settings: Settings, args: argparse.Namespace) -> int:
    from service.pipedrive.manifest import manifest

    _print_json(manifest(settings.base_url))
    return 0


def cmd_channels(settings: Settings, args: argparse.Namespace) -> int:
    """The admin API's channel operations, run in this process against the same state."""
    from service import channel_lifecycle, sinks
    from service.context import Services
    from service.models import Channel
    from service.store import channels

    def shown(services: Services, channel: Channel) -> dict[str, Any]:
        answer = channel.as_json(channel_lifecycle.webhook_url(services, channel))
        answer.update(sinks.describe(services.settings, channel))
        return answer

    async def go() -> int:
        services = await Services.start(settings)
        try:
            if args.action == "list":
                found = await channels.list_active(services.db, services.crypto)
                _print_json([shown(services, c) for c in found])
                return 0
            if args.action == "set-sink":
                channel = await channels.get(services.db, services.crypto, args.id)
                if channel is None:
                    sys.stderr.write(f"pdbridge: no channel {args.id}\n")
                    return 1
                sink = None if args.sink == "default" else args.sink
                _print_json(
                    shown(services, await channel_lifecycle.set_sink(services, channel, sink))
                )
                return 0
            if args.action == "remove":
                channel = await channels.get(services.db, services.crypto, args.id)
                if channel is None:
                    sys.stderr.write(f"pdbridge: no channel {args.id}\n")
                    return 1
                await channel_lifecycle.remove(services, channel, at_pipedrive=True)
                _print_json({"provider_channel_id": args.id, "status": "deleted"})
                return 0
            credentials = dict(pair.split("=", 1) for pair in args.credential)
            channel = await channel_lifecycle.add(
                services,
                provider=args.provider,
                name=args.name,
                credentials=credentials,
                company_id=args.company_id,
                user_id=args.user_id,
                sink=args.sink,
            )
            _print_json(shown(services, channel))
            return 0
        except channel_lifecycle.ChannelError as error:
            sys.stderr.write(f"pdbridge: {error.code}: {error.message}\n")
            return 1
        finally:
            await services.close()

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL: channel commands need the Redis the service uses")
    return asyncio.run(go())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


Command = Callable[[Settings, argparse.Namespace], int]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pdbridge", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Command, str]] = {
        "run": (cmd_run, "migrate, then run web + one worker (+ embedded Redis if needed)"),
        "web": (cmd_web, "the HTTP service only"),
        "worker": (cmd_worker, "one queue worker only"),
        "together": (cmd_together, "web and one worker in one process and one event loop"),
        "migrate": (cmd_migrate, "apply database migrations and exit"),
        "manifest": (cmd_manifest, "print the Messaging manifest JSON for PUBLIC_BASE_URL"),
        "sandbox": (cmd_sandbox, "run with a local Pipedrive and Telegram; prints the inbox URL"),
    }
    for name, (function, help_text) in commands.items():
        sub.add_parser(name, help=help_text).set_defaults(func=function)
    sub.choices["worker"].add_argument(
        "--check",
        action="store_true",
        help="exit 0 if this host's worker refreshed its health key lately, else 1 (a probe)",
    )
    chans = sub.add_parser("channels", help="add, list and remove channels")
    chans.set_defaults(func=cmd_channels)
    chan_actions = chans.add_subparsers(dest="action", required=True)
    adding = chan_actions.add_parser("add", help="connect a provider account as a channel")
    adding.add_argument("provider", choices=["telegram", "whatsapp", "twilio"])
    adding.add_argument("--name", required=True)
    adding.add_argument(
        "--credential",
        "-c",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a provider credential, e.g. -c bot_token=123:ABC (repeat for more)",
    )
    adding.add_argument("--company-id", type=int)
    adding.add_argument("--user-id", type=int)
    adding.add_argument(
        "--sink",
        choices=["channels", "notes"],
        help="where its conversations go in Pipedrive (default: follow PIPEDRIVE_SINK)",
    )
    sinking = chan_actions.add_parser(
        "set-sink", help="move a channel to the channels or notes sink (default: PIPEDRIVE_SINK)"
    )
    sinking.add_argument("id", help="the provider_channel_id")
    sinking.add_argument("sink", choices=["channels", "notes", "default"])
    chan_actions.add_parser("list", help="print the active channels as JSON")
    removing = chan_actions.add_parser("remove", help="remove at Pipedrive, the provider and here")
    removing.add_argument("id", help="the provider_channel_id")
    letters = sub.add_parser("dead-letters", help="inspect and replay failed work")
    letters.set_defaults(func=cmd_dead_letters)
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="print dead letters as JSON, newest first")
    listing.add_argument("--limit", type=int, default=100)
    replaying = actions.add_parser("replay", help="enqueue a dead letter (or --all) again")
    replaying.add_argument("id", type=int, nargs="?")
    replaying.add_argument("--all", action="store_true", help="every dead letter not yet replayed")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings()
        if (
            args.command in KEYED_ROLES
            and settings.secret_key is None
            and not getattr(args, "check", False)
        ):
            raise ConfigError(NO_SHARED_KEY)
        configure_logging(settings)
        code: int = args.func(settings, args)
    except ConfigError as error:
        exit_on_config_error(error)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
