"""Retention: after 100,000 messages (and their webhook bodies and media), one pruning run leaves
storage bounded by the settings, and nothing that is not yet delivered is pruned."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from service import retention
from service.config import ConfigError, load_settings
from service.media import LocalMediaStore
from service.store import Database
from service.store.schema import (
    UTCDateTime,
    channels,
    conversations,
    dead_letters,
    inbound_deliveries,
    installations,
    messages,
    person_links,
    utcnow,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

DAYS = 200  # message i is (i % DAYS) days and one hour old
REPEATS = 500  # DAYS * REPEATS = 100,000 messages
MESSAGES = DAYS * REPEATS
CONVERSATIONS = 50
WAITING_EVERY = 97  # every 97th message waits: a reply not sent yet, or an inbound not yet told
MEDIA_EVERY = 250  # every 250th message has a stored file

#: Seeding helpers, made in the test's database only: numbers to multiply rows by, and ages.
_seed = sa.MetaData()
repeats = sa.Table("seed_repeats", _seed, sa.Column("k", sa.Integer, primary_key=True))
ages = sa.Table(
    "seed_ages",
    _seed,
    sa.Column("d", sa.Integer, primary_key=True),
    sa.Column("at", UTCDateTime, nullable=False),
)


def created(i: int, now: datetime) -> datetime:
    return now - timedelta(days=i % DAYS, hours=1)


def waiting(i: int) -> bool:
    return i % WAITING_EVERY == 0


async def seed(db: Database, media: LocalMediaStore, now: datetime) -> int:
    """100,000 messages over 200 days, half inbound with their recorded webhook bodies, every
    250th with a stored file, every 97th not delivered yet; inserted by the database itself
    (INSERT ... SELECT over a cross join) so that seeding takes seconds. Returns the channel id."""
    async with db.engine.begin() as conn:
        await conn.run_sync(_seed.create_all)
        await conn.execute(repeats.insert(), [{"k": k} for k in range(REPEATS)])
        await conn.execute(
            ages.insert(), [{"d": d, "at": now - timedelta(days=d, hours=1)} for d in range(DAYS)]
        )
        inst = await conn.execute(
            installations.insert()
            .values(
                company_id=1,
                user_id=1,
                auth_kind="oauth",
                api_domain="https://x.example",
                status="active",
                created_at=now,
                updated_at=now,
            )
            .returning(installations.c.id)
        )
        channel_id = (
            await conn.execute(
                channels.insert()
                .values(
                    provider_channel_id="c1",
                    provider="telegram",
                    installation_id=inst.scalar_one(),
                    name="c",
                    credentials="x",
                    account_id="1",
                    account_name="bot",
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
                .returning(channels.c.id)
            )
        ).scalar_one()
        conversation_ids = [
            (
                await conn.execute(
                    conversations.insert()
                    .values(
                        channel_id=channel_id,
                        external_id=f"conv-{n}",
                        address=str(n),
                        status="open",
                        last_activity_at=now,
                        created_at=now - timedelta(days=DAYS),
                    )
                    .returning(conversations.c.id)
                )
            ).scalar_one()
            for n in range(CONVERSATIONS)
        ]
        assert conversation_ids == list(range(conversation_ids[0], conversation_ids[0] + 50))
        await conn.execute(  # idle for long, its messages pruned before: goes with its link
            conversations.insert().values(
                channel_id=channel_id,
                external_id="idle",
                address="idle",
                status="open",
                last_activity_at=now - timedelta(days=DAYS),
                created_at=now - timedelta(days=DAYS),
            )
        )
        await conn.execute(
            person_links.insert().values(
                company_id=1,
                person_id=7,
                ref_kind="conversation",
                ref_id=f"{channel_id}:idle",
                updated_at=now,
            )
        )
        i = repeats.c.k * DAYS + ages.c.d
        is_waiting = i % WAITING_EVERY == 0
        outbound = i % 2 == 0
        status = sa.case((sa.and_(is_waiting, outbound), "pending"), else_="sent")
        await conn.execute(
            messages.insert().from_select(
                [
                    "channel_id",
                    "conversation_id",
                    "external_id",
                    "direction",
                    "sender_id",
                    "text",
                    "attachments",
                    "status",
                    "pushed_status",
                    "created_at",
                    "updated_at",
                ],
                sa.select(
                    sa.literal(channel_id),
                    conversation_ids[0] + i % CONVERSATIONS,
                    sa.literal("m") + sa.cast(i, sa.String),
                    sa.case((outbound, "out"), else_="in"),
                    sa.literal("s"),
                    sa.literal("hello"),
                    sa.cast(sa.literal("[]"), sa.JSON),
                    status,
                    sa.case((is_waiting, sa.null()), else_=status),
                    ages.c.at,
                    ages.c.at,
                ).select_from(repeats.join(ages, sa.true())),
            )
        )
        await conn.execute(
            inbound_deliveries.insert().from_select(
                [
                    "source",
                    "dedupe_key",
                    "status",
                    "job",
                    "payload",
                    "received_at",
                    "updated_at",
                    "conversation_key",
                ],
                sa.select(
                    sa.literal("telegram"),
                    sa.literal("d") + sa.cast(i, sa.String),
                    sa.case((is_waiting, "received"), else_="done"),
                    sa.literal("relay_conversation"),
                    sa.cast(sa.literal('{"raw": {"text": "hello"}}'), sa.JSON),
                    ages.c.at,
                    ages.c.at,
                    sa.literal(f"{channel_id}:conv-") + sa.cast(i % CONVERSATIONS, sa.String),
                )
                .select_from(repeats.join(ages, sa.true()))
                .where(~outbound),
            )
        )
        await conn.run_sync(_seed.drop_all)
        media.root.mkdir(parents=True, exist_ok=True)
        for n in range(0, MESSAGES, MEDIA_EVERY):
            key = f"file-{n}.bin"
            (media.root / key).write_bytes(b"x" * 64)  # seeding: no fsync per file
            await conn.execute(
                messages.update()
                .where(messages.c.channel_id == channel_id, messages.c.external_id == f"m{n}")
                .values(attachments=[{"id": "a", "key": key, "mime_type": "a/b", "name": "f"}])
            )
        for days, replayed in ((400, None), (40, 40), (2, 2)):
            await conn.execute(
                dead_letters.insert().values(
                    kind="k",
                    payload={},
                    error="e",
                    tries=1,
                    created_at=now - timedelta(days=days),
                    replayed_at=None if replayed is None else now - timedelta(days=replayed),
                )
            )
    return int(channel_id)


async def count(db: Database, table: sa.Table, *where: Any) -> int:
    async with db.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar_one())


async def test_storage_after_100k_messages_is_bounded_by_the_settings(
    db: Database, tmp_path: Path
) -> None:
    """One run prunes delivered messages past RETENTION_MESSAGE_DAYS, media files past
    RETENTION_MEDIA_DAYS, handled bodies past RETENTION_PAYLOAD_DAYS and replayed dead letters
    past RETENTION_DEAD_LETTER_DAYS; every undelivered row stays; a second run finds nothing."""
    settings = make_settings(
        retention_message_days=60, retention_media_days=7, retention_payload_days=3
    )
    policy = retention.Policy.from_settings(settings)
    media = LocalMediaStore(tmp_path / "media")
    now = utcnow()
    await seed(db, media, now)
    assert await count(db, messages) == MESSAGES

    pruned = await retention.prune(db, media, policy, now=now)

    def kept(i: int, window: timedelta) -> bool:
        return waiting(i) or created(i, now) >= now - window

    messages_kept = [i for i in range(MESSAGES) if kept(i, policy.messages)]
    files_kept = [i for i in range(0, MESSAGES, MEDIA_EVERY) if kept(i, policy.media)]
    bodies_kept = [i for i in range(1, MESSAGES, 2) if kept(i, policy.payloads)]
    assert pruned.finished
    # Bounded by the settings: what the windows hold, plus what is not delivered yet.
    in_window = MESSAGES * (policy.messages.days + 1) // DAYS
    assert await count(db, messages) == len(messages_kept) <= in_window + MESSAGES // 97 + 1
    assert sorted(p.name for p in media.root.iterdir()) == sorted(
        f"file-{i}.bin" for i in files_kept
    )
    assert await count(db, inbound_deliveries) == len(bodies_kept)
    assert await count(db, messages, messages.c.pushed_status.is_(None)) == len(
        [i for i in range(MESSAGES) if waiting(i)]
    )
    assert await count(db, inbound_deliveries, inbound_deliveries.c.status == "received") == len(
        [i for i in range(1, MESSAGES, 2) if waiting(i)]
    )
    async with db.engine.connect() as conn:
        replayed = (await conn.execute(sa.select(dead_letters.c.replayed_at))).scalars().all()
    assert sorted(r is None for r in replayed) == [False, True]  # the unreplayed and the recent
    assert await count(db, conversations) == CONVERSATIONS  # each still has recent messages
    assert pruned.conversations == 1  # the idle one
    assert await count(db, person_links) == 0
    again = await retention.prune(db, media, policy, now=now)
    assert (again.messages, again.media_files, again.deliveries) == (0, 0, 0)


@pytest.mark.parametrize("value", ["0", "-3", "ninety", "1.5"])
def test_a_bad_retention_period_stops_the_service_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """RETENTION_* take whole days from 1 up; anything else is refused at start, by name."""
    monkeypatch.setenv("RETENTION_MEDIA_DAYS", value)
    with pytest.raises(ConfigError, match="RETENTION_MEDIA_DAYS"):
        load_settings()


def test_retention_defaults_are_the_documented_ones() -> None:
    """The defaults README's Configuration table gives."""
    policy = retention.Policy.from_settings(make_settings())
    assert (policy.payloads, policy.messages, policy.media, policy.dead_letters) == (
        timedelta(days=14),
        timedelta(days=90),
        timedelta(days=30),
        timedelta(days=30),
    )
