"""Re-hosted attachments and the signed links Pipedrive fetches them through.

Why re-host: no provider hands out a URL Pipedrive can fetch. Telegram's file URLs embed the bot
token, WhatsApp's need a Bearer token and expire after five minutes, Twilio's may need Basic
auth. So each file is downloaded once, stored here, and Pipedrive gets a link to us instead; a
provider URL never reaches Pipedrive, a log, or a link we build.

The link is `{base_url}/media/{signed}`: `signed` is `Crypto.sign` over a compact JSON of the
key, the MIME type and the file name, so the link needs no lookup to serve and cannot be forged
or extended. Links expire (`MEDIA_LINK_TTL`); attachments are therefore sent to Pipedrive with
`link_expires: true`, Pipedrive HEADs the URL before use and, when it no longer answers, calls
`getMessageById`, which builds a fresh link with `media_url` for the same stored key.

`MediaStore` is kept to four calls (`put_stream`, `open`, `size`, `delete`; `put` and `get` are
built on them) so that a store shared by every process (the database, an object store) can
replace `LocalMediaStore`, and files stream in chunks rather than being held whole.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from service.config import VAR_DIR
from service.crypto import BadSignature, Crypto
from service.errors import TransientError

#: The largest file we store; Pipedrive's own limit is unconfirmed (contract §7).
MAX_MEDIA_BYTES = 20 * 1024 * 1024
#: How long a media link stays valid; `getMessageById` hands out a fresh one after that.
MEDIA_LINK_TTL = 7 * 24 * 3600
#: Stands in for a missing or malformed MIME type.
DEFAULT_MIME_TYPE = "application/octet-stream"

#: Keys are flat file names: no separators, no leading dot (so no `..`, no hidden/temp files).
_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")
#: `type/subtype` with optional `; name=value` parameters: RFC 9110 tokens, ASCII only, no CR/LF.
_TCHARS = r"[A-Za-z0-9!#$&^_.+-]+"
_QUOTED = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'  # printable ASCII but `"` and `\`
_MIME = re.compile(rf"{_TCHARS}/{_TCHARS}(?:[ \t]*;[ \t]*{_TCHARS}=(?:{_TCHARS}|{_QUOTED}))*")
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,10}")
_MAX_NAME_CHARS = 200
#: Tags the signed payload, so a value signed for another purpose never reads as a media link.
_PURPOSE = "m1"


class MediaNotFound(LookupError):
    """No file is stored under the key."""


class MediaTooLarge(ValueError):
    """The file is larger than `MAX_MEDIA_BYTES`."""


class MediaUnavailable(TransientError):
    """The store did not answer (an object store's outage or timeout): try again later."""


#: The pieces a file is read and streamed in: small enough to keep memory flat per request.
CHUNK_BYTES = 256 * 1024


@dataclass(slots=True)
class MediaBody:
    """An opened file: its length, known before the first byte (for Content-Length), and its
    bytes as an async iterator of chunks. `aclose` releases what the store holds open (a file, a
    connection) whether or not the chunks were read to the end."""

    size: int
    chunks: AsyncGenerator[bytes, None]

    async def aclose(self) -> None:
        await self.chunks.aclose()

    async def read(self) -> bytes:
        """The whole file (for an upload to a provider that takes the bytes themselves)."""
        try:
            return b"".join([chunk async for chunk in self.chunks])
        finally:
            await self.aclose()


class MediaStore(Protocol):
    """Where re-hosted files live, by opaque key. Implementations refuse files larger than
    `MAX_MEDIA_BYTES` (`MediaTooLarge`) and keys that `validate_key` refuses (`ValueError`).

    Implementations: `LocalMediaStore` (a folder: `pdbridge run`), `DatabaseMediaStore`
    (chunked rows) and `S3MediaStore` (an object store); `service.media_stores` picks one from
    `MEDIA_STORE`. Every process on the same database or bucket sees every file, so any web
    process serves a link any worker made."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the bytes of `chunks` under `key`, replacing any file there, all or nothing;
        returns the length. Stops with `MediaTooLarge` (nothing stored) as soon as the bytes
        pass `MAX_MEDIA_BYTES`, so an upload never has to be read whole first."""
        ...

    async def open(self, key: str) -> MediaBody:
        """The stored file, to stream; `MediaNotFound` when there is none."""
        ...

    async def size(self, key: str) -> int:
        """The stored length in bytes; `MediaNotFound` when there is no file."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the file; deleting a missing key is not an error."""
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (see `put_stream`)."""
        check_size(data)
        await self.put_stream(key, _one(data))

    async def get(self, key: str) -> bytes:
        """The stored bytes, whole; `MediaNotFound` when there are none."""
        return await (await self.open(key)).read()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def bounded(chunks: AsyncIterable[bytes], limit: int | None = None) -> AsyncIterator[bytes]:
    """`chunks` unchanged, raising `MediaTooLarge` as soon as their total passes the limit."""
    limit = MAX_MEDIA_BYTES if limit is None else limit
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise MediaTooLarge(f"more than {limit} bytes is over the media limit")
        yield chunk


def validate_key(key: str) -> str:
    """Return `key` if it is a flat name of `[A-Za-z0-9._-]` not starting with a dot."""
    if not _KEY.fullmatch(key):
        raise ValueError("a media key is 1-200 characters of [A-Za-z0-9._-], not starting with .")
    return key


def check_size(data: bytes) -> None:
    if len(data) > MAX_MEDIA_BYTES:
        raise MediaTooLarge(f"{len(data)} bytes is over the {MAX_MEDIA_BYTES}-byte media limit")


class LocalMediaStore(MediaStore):
    """Files in one folder, one per key; file I/O runs in worker threads. Only for one
    machine (`pdbridge run`): another machine's processes cannot see the folder."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else VAR_DIR / "media"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        await anyio.to_thread.run_sync(lambda: self.root.mkdir(parents=True, exist_ok=True))
        # A leading dot keeps temp files out of the key space, so a reader never sees half a file.
        fd, temp = await anyio.to_thread.run_sync(
            lambda: tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        )
        total = 0
        try:
            async with await anyio.open_file(fd, "wb") as handle:
                async for chunk in bounded(chunks):
                    await handle.write(chunk)
                    total += len(chunk)
                await handle.flush()
                await anyio.to_thread.run_sync(os.fsync, handle.wrapped.fileno())
            await anyio.to_thread.run_sync(os.replace, temp, path)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled upload leaves nothing behind
                await anyio.to_thread.run_sync(lambda: Path(temp).unlink(missing_ok=True))
            raise
        return total

    async def open(self, key: str) -> MediaBody:
        path = self._path(key)
        try:
            handle = await anyio.open_file(path, "rb")
        except FileNotFoundError:
            raise MediaNotFound(key) from None
        try:
            size = (await anyio.to_thread.run_sync(os.fstat, handle.wrapped.fileno())).st_size
        except BaseException:
            await handle.aclose()
            raise
        return MediaBody(size, _file_chunks(handle))

    async def size(self, key: str) -> int:
        path = self._path(key)
        try:
            stat = await anyio.to_thread.run_sync(path.stat)
        except FileNotFoundError:
            raise MediaNotFound(key) from None
        return stat.st_size

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


async def _file_chunks(handle: anyio.AsyncFile[bytes]) -> AsyncGenerator[bytes, None]:
    try:
        while chunk := await handle.read(CHUNK_BYTES):
            yield chunk
    finally:
        await handle.aclose()


def normalize_mime_type(mime_type: str | None) -> str:
    """The MIME type as given if well formed (lower-cased type), else `DEFAULT_MIME_TYPE`;
    this is what ends up in a Content-Type header, so nothing else gets through."""
    text = (mime_type or "").strip()
    if not _MIME.fullmatch(text):
        return DEFAULT_MIME_TYPE
    essence, sep, params = text.partition(";")
    return essence.lower() + (sep + params if sep else "")


def new_media_key(mime_type: str) -> str:
    """A fresh random, URL-safe key, with an extension guessed from the MIME type (`.bin` when
    there is none), e.g. `Xq3...Zw.jpg`."""
    essence = normalize_mime_type(mime_type).split(";", 1)[0]
    extension = mimetypes.guess_extension(essence) or ".bin"
    if not _EXTENSION.fullmatch(extension):
        extension = ".bin"
    return validate_key(secrets.token_urlsafe(18) + extension)


def clean_file_name(name: str | None) -> str | None:
    """A display file name: the last path segment only (so a URL given by mistake keeps only its
    file part, never the host, query or a token in its path), without control characters, at
    most 200 characters; `None` when nothing is left."""
    if name is None:
        return None
    if "://" in name:  # a URL: its query and fragment may hold a signature or a token
        name = urlsplit(name).path
    last = re.split(r"[/\\]", name)[-1]
    last = "".join(c for c in last if unicodedata.category(c)[0] != "C").strip()
    if last in ("", ".", ".."):
        return None
    return last[:_MAX_NAME_CHARS]


@dataclass(frozen=True, slots=True)
class MediaLink:
    """What a media link points at: the stored key and how to present it."""

    key: str
    mime_type: str
    name: str | None


def media_url(
    base_url: str,
    crypto: Crypto,
    key: str,
    mime_type: str,
    name: str | None,
    ttl_seconds: int = MEDIA_LINK_TTL,
    *,
    now: float | None = None,
) -> str:
    """`{base_url}/media/{signed}`, valid for `ttl_seconds`. `Crypto.sign` emits only base64url
    characters, digits and dots, so the value needs no escaping in a path."""
    payload = json.dumps(
        [_PURPOSE, validate_key(key), normalize_mime_type(mime_type), clean_file_name(name)],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return f"{base_url.rstrip('/')}/media/{crypto.sign(payload, ttl_seconds, now=now)}"


def read_media_token(crypto: Crypto, signed: str, *, now: float | None = None) -> MediaLink:
    """The reference inside a link's signed part; `BadSignature` when it was altered, signed
    with an unknown key, has expired, or does not hold a media reference."""
    payload = crypto.unsign(signed, now=now)
    try:
        value = json.loads(payload)
    except ValueError:
        raise BadSignature("malformed media link") from None
    match value:
        case [str(purpose), str(key), str(mime_type), str() | None as name] if (
            purpose == _PURPOSE and _KEY.fullmatch(key)
        ):
            return MediaLink(key=key, mime_type=normalize_mime_type(mime_type), name=name)
    raise BadSignature("malformed media link")
