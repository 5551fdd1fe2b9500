"""The outbound client's pool on asyncio's streams (service.http_transport), against small
servers on real sockets: TLS with a real handshake (trustme's throwaway CA), connections kept
alive and replaced when the server closed them, and every socket failure surfacing as the httpx2
error the rest of the code maps (connect, TLS, read timeout)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx2
import pytest
import trustme

from service.http_transport import transport
from service.pipedrive.client import http_client

pytestmark = pytest.mark.anyio

LIMITS = httpx2.Limits(max_connections=10, max_keepalive_connections=10)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    port: int
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


async def answer_keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive: reads each request head and answers it with a small JSON."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length:")),
            0,
        )  # fmt: skip
        await reader.readexactly(length)
        body = b'{"success":true}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()


@asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    box: list[Server] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        box[0].connections += 1
        box[0].writers.append(writer)
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=tls)
    box.append(Server(server.sockets[0].getsockname()[1]))
    try:
        yield box[0]
    finally:
        server.close()
        for writer in box[0].writers:
            writer.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_with_a_verified_certificate_keeps_one_connection(ca: trustme.CA) -> None:
    async with (
        serving(answer_keepalive, server_tls(ca, "localhost")) as server,
        httpx2.AsyncClient(transport=transport(LIMITS, verify=client_tls(ca))) as client,
    ):
        for i in range(5):
            response = await client.post(f"https://localhost:{server.port}/x", json={"n": i})
            assert response.status_code == 200
            assert response.json() == {"success": True}
    assert server.connections == 1


async def test_a_certificate_for_another_name_is_refused(ca: trustme.CA) -> None:
    async with (
        serving(answer_keepalive, server_tls(ca, "pipedrive.example")) as server,
        httpx2.AsyncClient(transport=transport(LIMITS, verify=client_tls(ca))) as client,
    ):
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"https://localhost:{server.port}/x")


async def test_an_untrusted_certificate_is_refused(ca: trustme.CA) -> None:
    async with (
        serving(answer_keepalive, server_tls(ca, "localhost")) as server,
        http_client(5.0) as client,  # the service's client trusts the system's CAs only
    ):
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"https://localhost:{server.port}/x")


async def test_a_connection_the_server_closed_is_replaced_not_reused() -> None:
    """The server drops its idle keep-alive connections (as load balancers do): the next
    request goes out on a new connection instead of failing on the dead one."""
    pooled = transport(LIMITS)
    async with (
        serving(answer_keepalive) as server,
        httpx2.AsyncClient(transport=pooled) as client,
    ):
        url = f"http://127.0.0.1:{server.port}/x"
        assert (await client.get(url)).status_code == 200
        for writer in server.writers:
            writer.close()
        [idle] = pooled._pool.connections
        for _ in range(1000):  # bounded polling (10 s): until the close has reached the client
            if idle.has_expired():
                break
            await asyncio.sleep(0.01)
        assert (await client.get(url)).status_code == 200
    assert server.connections == 2


async def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.Event().wait()

    async with (
        serving(silent) as server,
        httpx2.AsyncClient(transport=transport(LIMITS), timeout=0.2) as client,
    ):
        with pytest.raises(httpx2.ReadTimeout):
            await client.post(f"http://127.0.0.1:{server.port}/x", json={})


async def test_nobody_listening_is_a_connect_error() -> None:
    async with serving(answer_keepalive) as server:
        port = server.port
    async with httpx2.AsyncClient(transport=transport(LIMITS)) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/x")


async def test_a_proxy_named_by_the_environment_is_still_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator behind an egress proxy sets HTTP(S)_PROXY: the service's client sends
    through it (httpx2 would ignore it for a client given its own transport)."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()

    async with serving(proxy) as server:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{server.port}")
        async with http_client(5.0) as client:
            response = await client.get("http://pipedrive.invalid/api/v1/users/me")
    assert response.status_code == 200
    assert seen == [b"GET http://pipedrive.invalid/api/v1/users/me HTTP/1.1"]
