"""Re-hosted files in the database (`MEDIA_STORE=database`): for a small deployment of several
processes that has a PostgreSQL but no object store.

A file is one `media_objects` row (its size and chunk count) and its bytes in ordered
`media_chunks` rows of `DB_CHUNK_BYTES`. A put writes them all in one transaction, so a reader
sees the whole file or none of it; a read fetches one chunk per query, so serving a file never
holds more than a chunk of it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

import sqlalchemy as sa

from service.media import MediaBody, MediaNotFound, MediaStore, bounded, validate_key
from service.store.engine import Database
from service.store.schema import media_chunks, media_objects, utcnow

#: Bytes per row: large enough that a 20 MB file is 20 rows, small enough to stream.
DB_CHUNK_BYTES = 1024 * 1024


class DatabaseMediaStore(MediaStore):
    """Files as chunked rows of the service's own database (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        validate_key(key)
        total = 0
        seq = 0
        async with self.db.write() as conn:
            await conn.execute(sa.delete(media_chunks).where(media_chunks.c.key == key))
            await conn.execute(sa.delete(media_objects).where(media_objects.c.key == key))
            await conn.execute(
                sa.insert(media_objects).values(key=key, size=0, chunks=0, created_at=utcnow())
            )
            async for piece in _rechunk(bounded(chunks), DB_CHUNK_BYTES):
                await conn.execute(sa.insert(media_chunks).values(key=key, seq=seq, data=piece))
                seq += 1
                total += len(piece)
            await conn.execute(
                sa.update(media_objects)
                .where(media_objects.c.key == key)
                .values(size=total, chunks=seq)
            )
        return total

    async def _row(self, key: str) -> tuple[int, int]:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(media_objects.c.size, media_objects.c.chunks).where(
                        media_objects.c.key == validate_key(key)
                    )
                )
            ).first()
        if row is None:
            raise MediaNotFound(key)
        return int(row.size), int(row.chunks)

    async def open(self, key: str) -> MediaBody:
        size, count = await self._row(key)
        return MediaBody(size, self._chunks(key, count))

    async def _chunks(self, key: str, count: int) -> AsyncGenerator[bytes, None]:
        for seq in range(count):
            async with self.db.engine.connect() as conn:
                data = await conn.scalar(
                    sa.select(media_chunks.c.data).where(
                        media_chunks.c.key == key, media_chunks.c.seq == seq
                    )
                )
            if data is None:  # deleted while being read: end short rather than serve a mix
                raise MediaNotFound(key)
            yield bytes(data)

    async def size(self, key: str) -> int:
        size, _ = await self._row(key)
        return size

    async def delete(self, key: str) -> None:
        validate_key(key)
        async with self.db.write() as conn:
            await conn.execute(sa.delete(media_chunks).where(media_chunks.c.key == key))
            await conn.execute(sa.delete(media_objects).where(media_objects.c.key == key))


async def _rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncGenerator[bytes, None]:
    """The same bytes as pieces of exactly `size` (the last may be shorter)."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)
