"""Retention: what the bridge stores is pruned after configurable periods, in bounded batches.

Four periods, from the settings (README, Configuration): recorded webhook bodies once handled
(`RETENTION_PAYLOAD_DAYS`; their rows carry the dedupe keys, so this is also how long a
provider's redelivery is recognised, and erasure tombstones are kept as long), messages once
delivered and told to Pipedrive (`RETENTION_MESSAGE_DAYS`; a conversation idle that long and
left without messages goes too, with its person links), re-hosted media files
(`RETENTION_MEDIA_DAYS`; the message stays, without its attachments) and dead letters once
replayed (`RETENTION_DEAD_LETTER_DAYS`). What is not yet delivered is never pruned: a delivery
still to relay, a reply still to send or to report, a dead letter never replayed (nor the
delivery it set aside).

Each statement touches at most `BATCH` rows in its own transaction, so the pruning never holds
SQLite's single writer for long and never locks a large range on PostgreSQL; one run does at most
`MAX_BATCHES` per kind and the next run goes on. Media files are deleted before the rows that
name them: a crash in between leaves rows the next run prunes again, never files nothing names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from service.config import Settings
from service.logging import get_logger
from service.media import MediaStore
from service.store import Database
from service.store.erasures import media_keys
from service.store.person_links import CONVERSATION
from service.store.schema import (
    conversations,
    dead_letters,
    erased_messages,
    inbound_deliveries,
    messages,
    person_links,
    utcnow,
)

log = get_logger(__name__)

#: Rows per statement, and statements per kind in one run.
BATCH = 5000
MAX_BATCHES = 500
#: Delivery statuses that are over: relayed, dropped (channel gone), erased.
FINISHED_DELIVERIES = ("done", "dropped", "erased")


@dataclass(frozen=True, slots=True)
class Policy:
    """How long each kind of data is kept."""

    payloads: timedelta
    messages: timedelta
    media: timedelta
    dead_letters: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            payloads=timedelta(days=settings.retention_payload_days),
            messages=timedelta(days=settings.retention_message_days),
            media=timedelta(days=settings.retention_media_days),
            dead_letters=timedelta(days=settings.retention_dead_letter_days),
        )


@dataclass(slots=True)
class Pruned:
    """Rows (and files) removed by one run, by kind."""

    deliveries: int = 0
    messages: int = 0
    media_files: int = 0
    conversations: int = 0
    dead_letters: int = 0
    tombstones: int = 0
    finished: bool = field(default=True)

    def as_log(self) -> dict[str, Any]:
        return {
            "deliveries": self.deliveries,
            "messages": self.messages,
            "media_files": self.media_files,
            "conversations": self.conversations,
            "dead_letters": self.dead_letters,
            "tombstones": self.tombstones,
            "finished": self.finished,
        }


def _delivered() -> sa.ColumnElement[bool]:
    """A message that needs nothing more: handed to the provider (or failed) and Pipedrive was
    told its current status."""
    return sa.and_(
        messages.c.status.not_in(("pending", "sending")),
        messages.c.pushed_status == messages.c.status,
    )


async def prune(
    db: Database, media: MediaStore, policy: Policy, *, now: datetime | None = None
) -> Pruned:
    """One pruning run (see the module docstring); `now` is for tests."""
    now = now or utcnow()
    result = Pruned()
    result.messages, result.media_files, done = await _prune_messages(
        db, media, now - policy.messages
    )
    result.finished &= done
    files, done = await _prune_media(db, media, now - policy.media)
    result.media_files += files
    result.finished &= done
    for kind, table, condition in (
        (
            "deliveries",
            inbound_deliveries,
            sa.and_(
                inbound_deliveries.c.status.in_(FINISHED_DELIVERIES),
                inbound_deliveries.c.received_at < now - policy.payloads,
            ),
        ),
        ("tombstones", erased_messages, erased_messages.c.erased_at < now - policy.payloads),
        (
            "dead_letters",
            dead_letters,
            sa.and_(
                dead_letters.c.replayed_at.is_not(None),
                dead_letters.c.replayed_at < now - policy.dead_letters,
            ),
        ),
    ):
        count, done = await _delete_batches(db, table, condition)
        setattr(result, kind, count)
        result.finished &= done
    result.conversations, done = await _prune_conversations(db, now - policy.messages)
    result.finished &= done
    log.info("retention.pruned", **result.as_log())
    return result


async def _delete_batches(
    db: Database, table: sa.Table, condition: sa.ColumnElement[bool]
) -> tuple[int, bool]:
    """Delete matching rows, `BATCH` at a time; (count, whether none is left)."""
    total = 0
    for _ in range(MAX_BATCHES):
        batch = sa.select(table.c.id).where(condition).limit(BATCH).scalar_subquery()
        async with db.write() as conn:
            deleted = int(
                (await conn.execute(table.delete().where(table.c.id.in_(batch)))).rowcount
            )
        total += deleted
        if deleted < BATCH:
            return total, True
    return total, False


async def _prune_conversations(db: Database, idle_since: datetime) -> tuple[int, bool]:
    """Conversations idle since before `idle_since` with no message left, with the person links
    that name them (a link holds the chat's address)."""
    total = 0
    query = (
        sa.select(conversations.c.id, conversations.c.channel_id, conversations.c.external_id)
        .where(
            conversations.c.last_activity_at < idle_since,
            ~sa.exists().where(messages.c.conversation_id == conversations.c.id),
        )
        .limit(BATCH)
    )
    for _ in range(MAX_BATCHES):
        async with db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if rows:
            keys = [f"{channel_id}:{external_id}" for _, channel_id, external_id in rows]
            async with db.write() as conn:
                await conn.execute(
                    person_links.delete().where(
                        person_links.c.ref_kind == CONVERSATION, person_links.c.ref_id.in_(keys)
                    )
                )
                await conn.execute(
                    conversations.delete().where(conversations.c.id.in_([r[0] for r in rows]))
                )
        total += len(rows)
        if len(rows) < BATCH:
            return total, True
    return total, False


async def _prune_messages(
    db: Database, media: MediaStore, older_than: datetime
) -> tuple[int, int, bool]:
    """Delivered messages created before `older_than`, with their media files."""
    total = files = 0
    query = (
        sa.select(messages.c.id, messages.c.attachments)
        .where(messages.c.created_at < older_than, _delivered())
        .limit(BATCH)
    )
    for _ in range(MAX_BATCHES):
        async with db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        keys = [key for _, attachments in rows for key in media_keys(attachments)]
        for key in keys:
            await media.delete(key)
        files += len(keys)
        if rows:
            async with db.write() as conn:
                await conn.execute(messages.delete().where(messages.c.id.in_([r[0] for r in rows])))
        total += len(rows)
        if len(rows) < BATCH:
            return total, files, True
    return total, files, False


async def _prune_media(db: Database, media: MediaStore, older_than: datetime) -> tuple[int, bool]:
    """Media files of delivered messages created before `older_than`; the messages keep their
    text and lose their attachments."""
    files = 0
    query = (
        sa.select(messages.c.id, messages.c.attachments)
        .where(
            messages.c.created_at < older_than,
            _delivered(),
            sa.cast(messages.c.attachments, sa.Text) != "[]",
        )
        .limit(BATCH)
    )
    for _ in range(MAX_BATCHES):
        async with db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        keys = [key for _, attachments in rows for key in media_keys(attachments)]
        for key in keys:
            await media.delete(key)
        files += len(keys)
        if rows:
            async with db.write() as conn:
                await conn.execute(
                    messages.update()
                    .where(messages.c.id.in_([r[0] for r in rows]))
                    .values(attachments=[], updated_at=utcnow())
                )
        if len(rows) < BATCH:
            return files, True
    return files, False
