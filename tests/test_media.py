"""Re-hosted media: the local store, signed links, and GET/HEAD `/media/{signed}`.

The handler reads its store from `app.state.media_store` and its `Crypto` through
`services(request).crypto`; these tests put a bare namespace with only `crypto` on
`app.state.services`, so no database or Redis is needed.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import httpx2
import pytest
from starlette.applications import Starlette

import handlers.media
from service.crypto import BadSignature, Crypto
from service.media import (
    MAX_MEDIA_BYTES,
    MEDIA_LINK_TTL,
    LocalMediaStore,
    MediaLink,
    MediaNotFound,
    MediaTooLarge,
    media_url,
    new_media_key,
    read_media_token,
)
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.anyio

BASE = "https://bridge.example.com"
OTHER_SECRET = "another-secret-key-0123456789-abcdefghijkl"
BOT_TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
TELEGRAM_FILE_URL = f"https://api.telegram.org/file/bot{BOT_TOKEN}/photos/file_42.jpg"
NAME = "Счёт №7 — café.pdf"
DATA = b"%PDF-1.4 not really a pdf \x00\xff"


@pytest.fixture
def crypto() -> Crypto:
    return Crypto([TEST_SECRET])


@pytest.fixture
def store(tmp_path: Path) -> LocalMediaStore:
    return LocalMediaStore(tmp_path / "media")


@pytest.fixture
def client(store: LocalMediaStore, crypto: Crypto) -> httpx2.AsyncClient:
    app = Starlette(routes=handlers.media.routes)
    app.state.media_store = store
    app.state.services = SimpleNamespace(crypto=crypto)
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=BASE)


def path_of(url: str) -> str:
    return urlsplit(url).path


async def stored(store: LocalMediaStore, mime_type: str, data: bytes = DATA) -> str:
    key = new_media_key(mime_type)
    await store.put(key, data)
    return key


# --- The store ---------------------------------------------------------------------------------


async def test_put_get_round_trip(store: LocalMediaStore) -> None:
    """Bytes come back unchanged, the size matches, and nothing but the file is left behind."""
    key = await stored(store, "application/pdf")
    assert await store.get(key) == DATA
    assert await store.size(key) == len(DATA)
    assert [p.name for p in store.root.iterdir()] == [key]


async def test_put_replaces_and_delete_removes(store: LocalMediaStore) -> None:
    """A second put replaces the file; after delete, get and size raise MediaNotFound."""
    key = await stored(store, "image/png")
    await store.put(key, b"second")
    assert await store.get(key) == b"second"
    await store.delete(key)
    await store.delete(key)  # deleting twice is fine
    with pytest.raises(MediaNotFound):
        await store.get(key)
    with pytest.raises(MediaNotFound):
        await store.size(key)


def test_default_root_is_under_var() -> None:
    """Without a root, files go to ./var/media."""
    assert LocalMediaStore().root == Path("var") / "media"


@pytest.mark.parametrize(
    "key", ["../secret.key", "..", ".", "a/b", "a\\b", "/etc/passwd", ".hidden", "", "é.jpg", "a b"]
)
async def test_bad_keys_are_refused(store: LocalMediaStore, tmp_path: Path, key: str) -> None:
    """Keys are flat names of [A-Za-z0-9._-]: anything that could leave the root is a ValueError."""
    with pytest.raises(ValueError, match="media key"):
        await store.put(key, b"x")
    with pytest.raises(ValueError, match="media key"):
        await store.get(key)
    with pytest.raises(ValueError, match="media key"):
        await store.size(key)
    with pytest.raises(ValueError, match="media key"):
        await store.delete(key)
    assert not (tmp_path / "secret.key").exists()


async def test_too_large_is_refused(store: LocalMediaStore) -> None:
    """Over MAX_MEDIA_BYTES nothing is written; exactly the limit is accepted."""
    with pytest.raises(MediaTooLarge):
        await store.put("big.bin", b"\0" * (MAX_MEDIA_BYTES + 1))
    assert not (store.root / "big.bin").exists()
    assert issubclass(MediaTooLarge, ValueError)
    await store.put("edge.bin", b"\0" * MAX_MEDIA_BYTES)
    assert await store.size("edge.bin") == MAX_MEDIA_BYTES


def test_new_media_keys_are_random_url_safe_and_carry_an_extension() -> None:
    """Keys differ each time, use URL-safe characters only, and end in a guessed extension."""
    jpeg = new_media_key("image/jpeg")
    assert jpeg.endswith(".jpg")
    assert new_media_key("image/jpeg") != jpeg
    assert new_media_key("application/pdf").endswith(".pdf")
    assert new_media_key("audio/ogg; codecs=opus").endswith((".ogg", ".oga", ".opus"))
    assert new_media_key("application/x-unknown-thing").endswith(".bin")
    assert new_media_key("not a mime\r\n").endswith(".bin")
    for key in (jpeg, new_media_key("video/mp4")):
        assert quote(key, safe="") == key


# --- Signed links ------------------------------------------------------------------------------


def test_link_round_trip(crypto: Crypto) -> None:
    """The signed part reads back as the key, type and name it was made from."""
    url = media_url(BASE + "/", crypto, "k1.pdf", "application/pdf", NAME)
    assert url.startswith(f"{BASE}/media/")
    signed = path_of(url).removeprefix("/media/")
    assert "/" not in signed
    assert quote(signed, safe="") == signed  # nothing needs escaping in a path
    assert read_media_token(crypto, signed) == MediaLink("k1.pdf", "application/pdf", NAME)


def test_link_never_carries_a_provider_url_or_its_token(crypto: Crypto) -> None:
    """A provider URL passed by mistake as the name keeps only its file part, and neither the
    bot token nor the host shows in the link, raw or once the signed part is decoded."""
    url = media_url(BASE, crypto, "k2.jpg", "image/jpeg", TELEGRAM_FILE_URL)
    signed = path_of(url).removeprefix("/media/")
    encoded = signed.split(".", 1)[0]
    decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    for text in (url, decoded):
        assert BOT_TOKEN not in text
        assert BOT_TOKEN.split(":")[1] not in text
        assert "api.telegram.org" not in text
        assert TEST_SECRET not in text
    assert read_media_token(crypto, signed).name == "file_42.jpg"
    whatsapp = "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1&hash=ATsecret"
    url = media_url(BASE, crypto, "k2.jpg", "image/jpeg", whatsapp)
    assert read_media_token(crypto, path_of(url).removeprefix("/media/")).name is None


def test_link_sanitises_type_and_name(crypto: Crypto) -> None:
    """Header-breaking types become application/octet-stream; control characters leave names."""
    url = media_url(BASE, crypto, "k3", "text/html\r\nSet-Cookie: x=1", "a\r\nb\x00.txt")
    ref = read_media_token(crypto, path_of(url).removeprefix("/media/"))
    assert ref == MediaLink("k3", "application/octet-stream", "ab.txt")
    url = media_url(BASE, crypto, "k3", "image/png", "   ")
    assert read_media_token(crypto, path_of(url).removeprefix("/media/")).name is None


def test_link_refuses_a_bad_key(crypto: Crypto) -> None:
    with pytest.raises(ValueError, match="media key"):
        media_url(BASE, crypto, "../x", "image/png", None)


def test_bad_links_raise_bad_signature(crypto: Crypto) -> None:
    """Tampered, expired, foreign-key, malformed and other-purpose values are all BadSignature."""
    signed = path_of(media_url(BASE, crypto, "k4.png", "image/png", None)).removeprefix("/media/")
    body, expires, mac = signed.rsplit(".", 2)
    other = "A" if body[0] != "A" else "B"
    expired_at = time.time() - MEDIA_LINK_TTL - 10
    expired = media_url(BASE, crypto, "k4.png", "image/png", None, now=expired_at)
    foreign = media_url(BASE, Crypto([OTHER_SECRET]), "k4.png", "image/png", None)
    bad = [
        f"{other}{body[1:]}.{expires}.{mac}",
        f"{body}.{int(expires) + 1}.{mac}",
        path_of(expired).removeprefix("/media/"),
        path_of(foreign).removeprefix("/media/"),
        "garbage",
        crypto.sign("not json", 60),
        crypto.sign('["m1","../etc/passwd","image/png",null]', 60),
        crypto.sign('["state","k4.png","image/png",null]', 60),
        crypto.sign('{"key":"k4.png"}', 60),
    ]
    for value in bad:
        with pytest.raises(BadSignature):
            read_media_token(crypto, value)


def test_old_links_still_read_after_key_rotation(crypto: Crypto) -> None:
    """A link signed before a new SECRET_KEY was put in front still serves until it expires."""
    signed = path_of(media_url(BASE, crypto, "k5.png", "image/png", None)).removeprefix("/media/")
    rotated = Crypto([OTHER_SECRET, TEST_SECRET])
    assert read_media_token(rotated, signed).key == "k5.png"


# --- GET and HEAD /media/{signed} ---------------------------------------------------------------


async def test_get_serves_the_bytes_with_headers(
    client: httpx2.AsyncClient, store: LocalMediaStore, crypto: Crypto
) -> None:
    """The signed link answers the stored bytes, typed, sized, named and not sniffable."""
    key = await stored(store, "application/pdf")
    url = media_url(BASE, crypto, key, "application/pdf", NAME)
    async with client:
        response = await client.get(path_of(url))
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["content-disposition"] == f"inline; filename*=UTF-8''{quote(NAME)}"
    assert response.headers["cache-control"] == "private, max-age=300"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_head_gives_the_same_headers_and_no_body(
    client: httpx2.AsyncClient, store: LocalMediaStore, crypto: Crypto
) -> None:
    """Pipedrive checks expiring links with HEAD: same headers as GET, empty body."""
    key = await stored(store, "image/jpeg")
    url = path_of(media_url(BASE, crypto, key, "image/jpeg", "photo.jpg"))
    async with client:
        head = await client.head(url)
        get = await client.get(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(DATA))
    assert dict(head.headers) == dict(get.headers)


async def test_text_keeps_its_type_and_no_name_means_no_filename(
    client: httpx2.AsyncClient, store: LocalMediaStore, crypto: Crypto
) -> None:
    """A text type is served as given (no charset added), and a nameless file has no filename."""
    key = await stored(store, "text/plain")
    async with client:
        response = await client.get(path_of(media_url(BASE, crypto, key, "text/plain", None)))
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-disposition"] == "inline"


@pytest.mark.parametrize("mime_type", ["text/html", "image/svg+xml", "application/xml"])
async def test_active_content_is_a_download(
    client: httpx2.AsyncClient, store: LocalMediaStore, crypto: Crypto, mime_type: str
) -> None:
    """A customer's HTML or SVG is never rendered on our origin: it is sent as an attachment."""
    key = await stored(store, mime_type, b"<script>alert(1)</script>")
    async with client:
        response = await client.get(path_of(media_url(BASE, crypto, key, mime_type, "x.html")))
    assert response.status_code == 200
    assert response.headers["content-disposition"] == "attachment; filename*=UTF-8''x.html"
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_bad_links_and_missing_files_are_404(
    client: httpx2.AsyncClient, store: LocalMediaStore, crypto: Crypto, method: str
) -> None:
    """Tampered, expired, foreign and well-signed-but-deleted links all answer the same 404."""
    key = await stored(store, "image/png")
    good = path_of(media_url(BASE, crypto, key, "image/png", None))
    body, expires, mac = good.rsplit(".", 2)
    gone = new_media_key("image/png")
    day = 86400
    expired = media_url(BASE, crypto, key, "image/png", None, day, now=time.time() - 2 * day)
    urls = [
        f"{body}.{int(expires) + 60}.{mac}",
        f"{body}x.{expires}.{mac}",
        path_of(expired),
        path_of(media_url(BASE, Crypto([OTHER_SECRET]), key, "image/png", None)),
        path_of(media_url(BASE, crypto, gone, "image/png", None)),
        "/media/garbage",
        "/media/" + quote(BOT_TOKEN, safe=""),
    ]
    async with client:
        assert (await client.request(method, good)).status_code == 200
        responses = [await client.request(method, url) for url in urls]
        # A provider URL never matches the route at all (its slashes), so Starlette answers 404.
        outside = await client.request(method, "/media/" + quote(TELEGRAM_FILE_URL, safe=""))
    assert outside.status_code == 404
    for response in responses:
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/json"
        if method == "GET":
            assert response.json() == {
                "error": {"code": "NOT_FOUND", "message": handlers.media.NOT_FOUND_MESSAGE}
            }


async def test_link_is_good_until_its_ttl(
    client: httpx2.AsyncClient, store: LocalMediaStore, crypto: Crypto
) -> None:
    """A link made just under its TTL ago still serves; one made just over it does not."""
    key = await stored(store, "image/png")
    ttl = 3600
    fresh = media_url(BASE, crypto, key, "image/png", None, ttl, now=time.time() - ttl + 60)
    stale = media_url(BASE, crypto, key, "image/png", None, ttl, now=time.time() - ttl - 1)
    async with client:
        assert (await client.get(path_of(fresh))).status_code == 200
        assert (await client.get(path_of(stale))).status_code == 404
