"""Every media store (local folder, database on SQLite and PostgreSQL, S3 over HTTP via moto)
keeps the same promises: bytes round-trip and stream in chunks, a put is all or nothing and
bounded by MAX_MEDIA_BYTES, and a link signed by one app is served by another app on the same
store. Plus `MEDIA_STORE` itself: its values, its defaults per role, its refusals."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from starlette.applications import Starlette

import handlers.media
from service.config import ConfigError, load_settings
from service.crypto import Crypto
from service.embedded_redis import free_port
from service.media import (
    MAX_MEDIA_BYTES,
    LocalMediaStore,
    MediaNotFound,
    MediaStore,
    MediaTooLarge,
    MediaUnavailable,
    media_url,
    new_media_key,
)
from service.media_s3 import S3MediaStore
from service.media_stores import media_store_for, with_role_default
from service.store import Database
from service.store.media_blobs import DatabaseMediaStore
from service.store.migrate import upgrade
from tests.conftest import TEST_SECRET, make_settings
from tests.standins.s3 import S3Standin, s3_server  # noqa: F401 -- the session fixture

pytestmark = pytest.mark.anyio

BASE = "https://bridge.example.com"
MIB = 1024 * 1024
#: A few MiB of bytes that are not one repeated pattern (so a misplaced chunk shows).
PAYLOAD = b"".join(i.to_bytes(4, "big") for i in range(3 * MIB // 4 + 1000))


async def pieces(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def oversized() -> AsyncIterator[bytes]:
    """One byte over the limit, a MiB at a time (the same MiB object: little memory)."""
    block = b"x" * MIB
    for _ in range(MAX_MEDIA_BYTES // MIB):
        yield block
    yield b"!"


StoreFactory = Callable[[], MediaStore]


@pytest.fixture(
    params=[
        "local",
        "database-sqlite",
        pytest.param("database-postgresql", marks=pytest.mark.postgres),
        "s3",
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, where): a folder, a database URL, or a fresh bucket of the S3 stand-in."""
    if request.param == "local":
        return "local", str(tmp_path / "media")
    if request.param == "database-sqlite":
        return "database", f"sqlite:///{tmp_path / 'pdbridge.db'}"
    if request.param == "database-postgresql":
        return "database", str(request.getfixturevalue("database_url_postgres"))
    server: S3Standin = request.getfixturevalue("s3_server")
    return "s3", server.new_bucket()


@pytest.fixture
async def new_store(
    backend: tuple[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """Makes store instances that share one backend, as two processes' stores would."""
    kind, where = backend
    opened: list[Database] = []

    def database_store() -> MediaStore:
        db = Database(where)
        opened.append(db)
        return DatabaseMediaStore(db)

    if kind == "local":
        yield lambda: LocalMediaStore(Path(where))
    elif kind == "database":
        await upgrade(database_store().db)  # type: ignore[attr-defined]
        yield database_store
    else:
        server: S3Standin = request.getfixturevalue("s3_server")
        settings = make_settings(**server.settings(where))
        yield lambda: media_store_for(settings, Database("sqlite://"))
    for db in opened:
        await db.dispose()


async def chunks_of(store: MediaStore, key: str) -> tuple[int, list[bytes]]:
    body = await store.open(key)
    try:
        return body.size, [chunk async for chunk in body.chunks]
    finally:
        await body.aclose()


async def test_bytes_round_trip_and_stream_in_chunks(new_store: StoreFactory) -> None:
    """A few MiB put as a stream come back identical, with the size known before the first
    byte and in several chunks, none of them the whole file."""
    store = new_store()
    key = new_media_key("application/pdf")
    assert await store.put_stream(key, pieces(PAYLOAD)) == len(PAYLOAD)
    assert await store.size(key) == len(PAYLOAD)
    size, chunks = await chunks_of(store, key)
    assert size == len(PAYLOAD)
    assert b"".join(chunks) == PAYLOAD
    assert len(chunks) >= 2
    assert max(len(c) for c in chunks) < len(PAYLOAD)
    assert await store.get(key) == PAYLOAD


async def test_put_replaces_and_delete_removes(new_store: StoreFactory) -> None:
    store = new_store()
    key = new_media_key("image/png")
    await store.put(key, b"first")
    await store.put(key, b"second, longer")
    assert await store.get(key) == b"second, longer"
    assert await store.size(key) == len(b"second, longer")
    await store.delete(key)
    await store.delete(key)  # twice is fine
    with pytest.raises(MediaNotFound):
        await store.open(key)
    with pytest.raises(MediaNotFound):
        await store.size(key)
    with pytest.raises(MediaNotFound):
        await store.get(key)
    await store.put(key, b"")  # an empty file is a file
    assert await store.size(key) == 0
    assert await store.get(key) == b""


async def test_over_the_limit_stores_nothing_and_keeps_the_old_file(
    new_store: StoreFactory,
) -> None:
    """A stream one byte over MAX_MEDIA_BYTES stops with MediaTooLarge: a new key stays absent,
    an existing key keeps its old bytes (all or nothing); exactly the limit is stored."""
    store = new_store()
    existing = new_media_key("image/jpeg")
    await store.put(existing, b"the old picture")
    fresh = new_media_key("image/jpeg")
    for key in (fresh, existing):
        with pytest.raises(MediaTooLarge):
            await store.put_stream(key, oversized())
    with pytest.raises(MediaNotFound):
        await store.size(fresh)
    assert await store.get(existing) == b"the old picture"
    with pytest.raises(MediaTooLarge):
        await store.put(fresh, b"x" * (MAX_MEDIA_BYTES + 1))
    exact = b"v" * MAX_MEDIA_BYTES
    assert await store.put_stream(fresh, pieces(exact, MIB)) == MAX_MEDIA_BYTES
    assert await store.size(fresh) == MAX_MEDIA_BYTES


async def test_bad_keys_are_refused_everywhere(new_store: StoreFactory) -> None:
    """Keys are flat names: anything that could leave the folder or prefix is a ValueError."""
    store = new_store()
    for key in ["../secret.key", "a/b", ".hidden", "", "é.jpg"]:
        with pytest.raises(ValueError, match="media key"):
            await store.put(key, b"x")
        with pytest.raises(ValueError, match="media key"):
            await store.open(key)
        with pytest.raises(ValueError, match="media key"):
            await store.size(key)
        with pytest.raises(ValueError, match="media key"):
            await store.delete(key)


def media_app(store: MediaStore) -> Starlette:
    """One web process's `/media` route, with its own store instance and its own keys."""
    app = Starlette(routes=handlers.media.routes)
    app.state.media_store = store
    app.state.services = SimpleNamespace(crypto=Crypto([TEST_SECRET]))
    return app


async def asgi_get(app: Starlette, path: str) -> tuple[int, dict[str, str], list[bytes]]:
    """GET through the raw ASGI interface: status, headers and each body message on its own,
    so a test sees whether the answer came in pieces."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"bridge.example.com")],
        "server": ("bridge.example.com", 443),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await anyio.sleep_forever()  # the client stays until the answer is complete
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    bodies = [m["body"] for m in sent[1:] if m["type"] == "http.response.body" and m["body"]]
    return start["status"], headers, bodies


async def test_a_link_signed_by_one_app_is_served_by_another(new_store: StoreFactory) -> None:
    """The worker's store instance writes and signs; a second app with its own instance on the
    same backend serves GET (streamed, Content-Length up front) and HEAD; a deleted file 404s."""
    writer = new_store()
    key = new_media_key("application/pdf")
    await writer.put_stream(key, pieces(PAYLOAD))
    link = media_url(BASE, Crypto([TEST_SECRET]), key, "application/pdf", "offer.pdf")
    path = urlsplit(link).path

    server = media_app(new_store())
    status, headers, bodies = await asgi_get(server, path)
    assert status == 200
    assert headers["content-length"] == str(len(PAYLOAD))
    assert headers["content-type"] == "application/pdf"
    assert b"".join(bodies) == PAYLOAD
    assert len(bodies) >= 2  # streamed, not one body holding the whole file

    transport = httpx2.ASGITransport(app=server)
    async with httpx2.AsyncClient(transport=transport, base_url=BASE) as client:
        head = await client.head(path)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(PAYLOAD))
        assert head.content == b""
        await writer.delete(key)
        assert (await client.get(path)).status_code == 404
        assert (await client.head(path)).status_code == 404


async def test_an_s3_store_that_does_not_answer_is_unavailable_not_missing(
    tmp_path: Path,
) -> None:
    """Nobody listens at the endpoint: calls fail within seconds with MediaUnavailable (the
    queue retries it), and the link answers 503 rather than a 404 that would read as gone."""
    settings = make_settings(
        media_store="s3://bucket-name/media",
        aws_endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        aws_region="us-east-1",
    )
    store = media_store_for(settings, Database(f"sqlite:///{tmp_path / 'x.db'}"))
    key = new_media_key("image/png")
    with pytest.raises(MediaUnavailable):
        await store.put(key, b"png")
    with pytest.raises(MediaUnavailable):
        await store.size(key)
    path = urlsplit(media_url(BASE, Crypto([TEST_SECRET]), key, "image/png", None)).path
    transport = httpx2.ASGITransport(app=media_app(store))
    async with httpx2.AsyncClient(transport=transport, base_url=BASE) as client:
        assert (await client.get(path)).status_code == 503
        assert (await client.head(path)).status_code == 503


# --- MEDIA_STORE -------------------------------------------------------------------------------


def test_media_store_picks_the_store(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(media_store_for(make_settings(), db), LocalMediaStore)
    assert isinstance(media_store_for(make_settings(media_store="local"), db), LocalMediaStore)
    assert isinstance(
        media_store_for(make_settings(media_store="database"), db), DatabaseMediaStore
    )
    s3 = media_store_for(
        make_settings(media_store="s3://my-bucket/pdbridge/media", aws_region="eu-west-1"), db
    )
    assert isinstance(s3, S3MediaStore)
    assert s3.where == "s3://my-bucket/pdbridge/media"


@pytest.fixture
def environ_restored() -> Iterator[None]:
    before = os.environ.get("MEDIA_STORE")
    yield
    if before is None:
        os.environ.pop("MEDIA_STORE", None)
    else:
        os.environ["MEDIA_STORE"] = before


@pytest.mark.usefixtures("environ_restored")
@pytest.mark.parametrize(
    ("role", "expected"),
    [("web", "database"), ("worker", "database"), ("run", "local"), ("together", "local")],
)
def test_unset_media_store_defaults_by_role(role: str, expected: str) -> None:
    """web and worker may run on machines with no shared disk: the database by default; `run`
    keeps ./var/media. The choice is exported for the processes they start."""
    chosen = with_role_default(make_settings(), role)
    assert chosen.media_store == expected
    assert os.environ["MEDIA_STORE"] == expected


@pytest.mark.usefixtures("environ_restored")
def test_a_chosen_media_store_is_kept_for_every_role() -> None:
    settings = make_settings(media_store="s3://bucket-name")
    os.environ.pop("MEDIA_STORE", None)
    assert with_role_default(settings, "web").media_store == "s3://bucket-name"
    assert "MEDIA_STORE" not in os.environ


@pytest.mark.parametrize(
    "value", ["disk", "s3://", "s3://UPPER/x", "s3:/bucket", "file:///tmp/media", "s3://a"]
)
def test_a_bad_media_store_stops_the_service_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MEDIA_STORE", value)
    with pytest.raises(ConfigError, match=r"^MEDIA_STORE: "):
        load_settings()


def test_the_aws_secret_never_shows_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://minio.internal")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    with pytest.raises(ConfigError, match="AWS_ENDPOINT_URL") as caught:
        load_settings()
    assert "very-secret-value" not in str(caught.value)
