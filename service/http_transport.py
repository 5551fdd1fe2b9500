"""httpx2's connection pool on asyncio's own streams instead of anyio's.

httpcore2 runs its sockets through anyio on asyncio: a cancel scope around every read and write,
and anyio's stream layers. For the relay's one hot call (a small JSON POST to Pipedrive per
message) that was a fifth of the HTTP client's CPU (bench/RESULTS.md). httpcore2 takes a network
backend as a documented extension point (`AsyncNetworkBackend`); this one is asyncio's streams
with `asyncio.timeout`, mapped onto httpcore2's exceptions as its anyio backend maps them.
Everything above the socket (HTTP/1.1, pooling, TLS settings, proxies from the environment) is
httpx2's as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2


class AsyncioStream(httpcore2.AsyncNetworkStream):
    """One connection as an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as error:
            raise httpcore2.ReadTimeout(str(error) or "read timed out") from error
        except (OSError, ssl.SSLError) as error:
            raise httpcore2.ReadError(str(error)) from error

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as error:
            raise httpcore2.WriteTimeout(str(error) or "write timed out") from error
        except (OSError, ssl.SSLError, RuntimeError) as error:
            raise httpcore2.WriteError(str(error)) from error

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.CancelledError):
            await self._writer.wait_closed()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as error:
            await self.aclose()
            raise httpcore2.ConnectTimeout(str(error) or "TLS handshake timed out") from error
        except (OSError, ssl.SSLError) as error:
            await self.aclose()
            raise httpcore2.ConnectError(str(error)) from error
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle pooled connection is readable when the server closed it (or sent bytes
            # nobody asked for): httpcore2 then drops it instead of sending on it. asyncio has
            # already moved whatever arrived into the reader.
            return self._reader.at_eof() or bool(getattr(self._reader, "_buffer", b""))
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    """Opens TCP connections with asyncio (`open_connection`); no Unix sockets."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        except TimeoutError as error:
            raise httpcore2.ConnectTimeout(str(error) or "connect timed out") from error
        except OSError as error:
            raise httpcore2.ConnectError(str(error)) from error
        sock: socket.socket | None = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def transport(
    limits: httpx2.Limits, *, verify: ssl.SSLContext | bool = True
) -> httpx2.AsyncHTTPTransport:
    """httpx2's transport with its pool on `AsyncioBackend`. A client given it ignores the
    environment's proxies (httpx2's rule), so `http_client` uses it only when none is named."""
    made = httpx2.AsyncHTTPTransport(verify=verify, limits=limits)
    pool = made._pool  # httpx2 built the pool; only its network backend differs
    if type(pool) is not httpcore2.AsyncConnectionPool:
        return made
    made._pool = httpcore2.AsyncConnectionPool(
        ssl_context=pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return made
