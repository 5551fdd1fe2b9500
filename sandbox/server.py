"""The one way the stand-ins serve: uvicorn on a free loopback port in a daemon thread."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp


class ServerThread:
    """Serve an ASGI app with uvicorn on a free port of 127.0.0.1 in a daemon thread.

    The stand-in runs on one; tests use it for the fake apps the stand-in calls back.
    """

    def __init__(self, app: ASGIApp, *, name: str = "asgi-server") -> None:
        self.app = app
        self.name = name
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self) -> Self:
        """Start serving; returns when the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("already started")
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only when
        # the listening socket says so, and without it keep-alive requests wait 40 ms (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan="off", log_level="warning", access_log=False, ws="none"
        )
        server = uvicorn.Server(config)  # signal handlers are only installed in the main thread
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread. Safe to call twice."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"{self.name} is not started")
        return f"http://127.0.0.1:{self.port}"


class Served:
    """What the stand-ins share: serve `self.app` on a `ServerThread`, as a context manager,
    at `base_url`. Subclasses set `app` (and `server_name`) in their `__init__`."""

    app: ASGIApp
    server_name = "standin"
    _server: ServerThread | None = None
    _port: int | None = None

    def start(self) -> Self:
        """Serve on a free port of 127.0.0.1 in a background thread; returns when it accepts."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = ServerThread(self.app, name=self.server_name).start()
        self._port = self._server.port
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread. Safe to call twice."""
        if self._server is not None:
            self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the base URL the service is configured with."""
        if self._port is None:
            raise RuntimeError("the stand-in is not started")
        return f"http://127.0.0.1:{self._port}"
