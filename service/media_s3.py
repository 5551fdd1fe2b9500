"""Re-hosted files in an S3-compatible object store (AWS S3, MinIO, R2...), through obstore.

Every web and worker process on the same bucket sees the same files, so a link signed by one
process is served by any other. Reads stream: `open` starts one GET and hands its body on in
chunks, so no process holds a whole file to serve it. Writes stream too: obstore sends a large
upload as a multipart upload, which S3 only makes visible once complete (all or nothing), and
aborts it when the source fails (`MediaTooLarge` included).

Credentials and the endpoint come from `AWS_*` settings when given; otherwise obstore reads the
usual AWS environment (and instance or pod credentials), as boto3 would.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from service.logging import get_logger
from service.media import (
    CHUNK_BYTES,
    MediaBody,
    MediaNotFound,
    MediaStore,
    MediaUnavailable,
    bounded,
    validate_key,
)

if TYPE_CHECKING:
    from obstore import BytesStream
    from obstore.store import S3Config

    from service.config import Settings

log = get_logger(__name__)

#: Parts of a multipart upload; S3 takes at least 5 MiB per part but the last.
UPLOAD_PART_BYTES = 5 * 1024 * 1024
#: A store that does not answer fails a request in seconds (the queue retries the job; a GET
#: answers 503), rather than after obstore's default of three minutes of retries.
CONNECT_TIMEOUT = timedelta(seconds=5)
REQUEST_TIMEOUT = timedelta(seconds=120)
RETRY_TIMEOUT = timedelta(seconds=15)


class S3MediaStore(MediaStore):
    """Objects named `{prefix}/{key}` in one bucket."""

    def __init__(self, store: S3Store, *, where: str) -> None:
        self.store = store
        #: `s3://bucket/prefix`, for logs (never credentials).
        self.where = where

    @classmethod
    def from_settings(cls, url: str, settings: Settings) -> S3MediaStore:
        """The store for `MEDIA_STORE=s3://bucket/prefix` and the `AWS_*` settings."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        config: S3Config = {}
        if settings.aws_endpoint_url:
            config["endpoint"] = settings.aws_endpoint_url
        if settings.aws_region:
            config["region"] = settings.aws_region
        if settings.aws_access_key_id:
            config["access_key_id"] = settings.aws_access_key_id
        if settings.aws_secret_access_key is not None:
            config["secret_access_key"] = settings.aws_secret_access_key.get_secret_value()
        # Plain HTTP only when the operator named an http:// endpoint (a local MinIO, a test).
        insecure = bool(settings.aws_endpoint_url and settings.aws_endpoint_url.startswith("http:"))
        store = S3Store(
            bucket,
            prefix=prefix.strip("/") or None,
            config=config,
            client_options={
                "allow_http": insecure,
                "connect_timeout": CONNECT_TIMEOUT,
                # The whole request, body included: a 20 MB file streamed to a slow reader.
                "timeout": REQUEST_TIMEOUT,
            },
            retry_config={
                "max_retries": 3,
                "retry_timeout": RETRY_TIMEOUT,
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=2),
                    "base": 2,
                },
            },
        )
        return cls(store, where=url)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = validate_key(key)
        source = bounded(chunks).__aiter__()
        # A file smaller than one part (most chat media) goes in one PUT; a larger one as a
        # multipart upload of the part read so far and the rest as it comes.
        head = bytearray()
        async for chunk in source:
            head += chunk
            if len(head) >= UPLOAD_PART_BYTES:
                break
        else:
            with _answered(key):
                await obstore.put_async(self.store, path, bytes(head))
            return len(head)
        total = len(head)

        async def rest() -> AsyncGenerator[bytes, None]:
            nonlocal total
            yield bytes(head)
            async for chunk in source:
                total += len(chunk)
                yield chunk

        with _answered(key):
            await obstore.put_async(self.store, path, rest(), chunk_size=UPLOAD_PART_BYTES)
        return total

    async def open(self, key: str) -> MediaBody:
        path = validate_key(key)
        with _answered(key):
            result = await obstore.get_async(self.store, path)
        return MediaBody(int(result.meta["size"]), _chunks(key, result.stream(CHUNK_BYTES)))

    async def size(self, key: str) -> int:
        path = validate_key(key)
        with _answered(key):
            meta = await obstore.head_async(self.store, path)
        return int(meta["size"])

    async def delete(self, key: str) -> None:
        path = validate_key(key)
        try:
            with _answered(key):
                await obstore.delete_async(self.store, path)
        except MediaNotFound:
            return


async def _chunks(key: str, stream: BytesStream) -> AsyncGenerator[bytes, None]:
    with _answered(key):
        async for chunk in stream:
            yield bytes(chunk)


@contextmanager
def _answered(key: str) -> Iterator[None]:
    """obstore's errors as the store's: a missing object is `MediaNotFound`, any other failure
    (connection, timeout, 5xx, refused credentials) `MediaUnavailable`, which the queue retries.
    Only the error's type is kept: its text may name the endpoint and bucket."""
    try:
        yield
    except (NotFoundError, FileNotFoundError):
        raise MediaNotFound(key) from None
    except BaseError as error:
        log.warning("media.s3_failed", key=key, error_type=type(error).__name__)
        raise MediaUnavailable(f"the media store did not answer ({type(error).__name__})") from None
