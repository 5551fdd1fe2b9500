"""Channels: stored with encrypted credentials; looked up by our `provider_channel_id`."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from service.crypto import Crypto
from service.models import Channel
from service.store.engine import Database
from service.store.schema import channels, inbound_deliveries, messages, utcnow

#: Our provider_channel_id is a UUID; the column holds 64 characters.
MAX_PUBLIC_ID = 64


def _row(row: sa.Row[Any], crypto: Crypto) -> Channel:
    m = row._mapping
    return Channel(
        id=m["id"],
        provider_channel_id=m["provider_channel_id"],
        provider=m["provider"],
        installation_id=m["installation_id"],
        name=m["name"],
        # An empty column: the credentials were deleted (uninstalled, and unhooked at the provider).
        credentials=json.loads(crypto.decrypt(m["credentials"])) if m["credentials"] else {},
        webhook_secret=crypto.decrypt(m["webhook_secret"]) if m["webhook_secret"] else None,
        account_id=m["account_id"],
        account_name=m["account_name"],
        pipedrive_channel_id=m["pipedrive_channel_id"],
        status=m["status"],
        created_at=m["created_at"],
        sink=m["sink"],
        sink_moved_at=m["sink_moved_at"],
        create_persons=m["create_persons"],
    )


async def create(
    db: Database,
    crypto: Crypto,
    *,
    provider_channel_id: str,
    provider: str,
    installation_id: int,
    name: str,
    credentials: dict[str, Any],
    webhook_secret: str | None,
    account_id: str,
    account_name: str,
    sink: str | None = None,
    create_persons: bool | None = None,
) -> Channel:
    now = utcnow()
    async with db.write(invalidates="channel") as conn:
        await conn.execute(
            channels.insert().values(
                provider_channel_id=provider_channel_id,
                provider=provider,
                installation_id=installation_id,
                name=name,
                credentials=crypto.encrypt(json.dumps(credentials)),
                webhook_secret=crypto.encrypt(webhook_secret) if webhook_secret else None,
                account_id=account_id,
                account_name=account_name,
                sink=sink,
                create_persons=create_persons,
                status="active",
                created_at=now,
                updated_at=now,
            )
        )
    found = await get(db, crypto, provider_channel_id)
    assert found is not None
    return found


async def get(
    db: Database, crypto: Crypto, provider_channel_id: str, *, include_deleted: bool = False
) -> Channel | None:
    """By our public id, from the process cache when fresh (every webhook asks). An id that
    cannot be one of ours (too long, a NUL) is not looked up: PostgreSQL refuses NULs."""
    if len(provider_channel_id) > MAX_PUBLIC_ID or "\x00" in provider_channel_id:
        return None

    async def load() -> Channel | None:
        query = sa.select(channels).where(channels.c.provider_channel_id == provider_channel_id)
        async with db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _row(row, crypto) if row else None

    found: Channel | None = await db.cache.get("channel", ("public", provider_channel_id), load)
    if found is not None and not include_deleted and found.status != "active":
        return None
    return found


async def get_by_id(db: Database, crypto: Crypto, channel_id: int) -> Channel | None:
    """By row id, from the process cache when fresh (every relay asks)."""

    async def load() -> Channel | None:
        async with db.engine.connect() as conn:
            query = sa.select(channels).where(channels.c.id == channel_id)
            row = (await conn.execute(query)).first()
        return _row(row, crypto) if row else None

    found: Channel | None = await db.cache.get("channel", ("id", channel_id), load)
    return found


async def list_active(db: Database, crypto: Crypto) -> list[Channel]:
    query = sa.select(channels).where(channels.c.status == "active").order_by(channels.c.id)
    async with db.engine.connect() as conn:
        return [_row(r, crypto) for r in await conn.execute(query)]


async def set_pipedrive_id(db: Database, channel_id: int, pipedrive_channel_id: str) -> None:
    async with db.write(invalidates="channel") as conn:
        await conn.execute(
            channels.update()
            .where(channels.c.id == channel_id)
            .values(pipedrive_channel_id=pipedrive_channel_id, updated_at=utcnow())
        )


async def mark_deleted(db: Database, channel_id: int) -> bool:
    """Soft delete (messages stay for the record); False when it already was."""
    async with db.write(invalidates="channel") as conn:
        result = await conn.execute(
            channels.update()
            .where(channels.c.id == channel_id, channels.c.status == "active")
            .values(status="deleted", updated_at=utcnow())
        )
        return bool(result.rowcount)


async def remove(db: Database, channel_id: int) -> None:
    """Hard delete of a channel that never got registered (a failed creation)."""
    async with db.write(invalidates="channel") as conn:
        await conn.execute(channels.delete().where(channels.c.id == channel_id))


async def set_sink(db: Database, channel_id: int, sink: str | None) -> None:
    """An operator's choice of sink (None: follow PIPEDRIVE_SINK)."""
    async with db.write(invalidates="channel") as conn:
        await conn.execute(
            channels.update()
            .where(channels.c.id == channel_id)
            .values(sink=sink, updated_at=utcnow())
        )


async def move_to_notes(db: Database, channel_id: int) -> bool:
    """`auto` found the Channels API gone: the channel writes notes from now on. True only for
    the call that moved it (concurrent relays race here; one of them reports the move)."""
    now = utcnow()
    async with db.write(invalidates="channel") as conn:
        result = await conn.execute(
            channels.update()
            .where(channels.c.id == channel_id, channels.c.sink.is_(None))
            .values(sink="notes", sink_moved_at=now, updated_at=now)
        )
        return bool(result.rowcount)


#: Outgoing statuses that still wait for the provider (store.messages.UNSENT).
_UNSENT = ("pending", "sending")


async def deactivate_for_installations(
    db: Database, installation_ids: list[int]
) -> list[tuple[int, str]]:
    """Uninstall: the installations' active channels become `uninstalled`, in one transaction
    with their waiting work, so that jobs already queued for them find nothing to do: inbound
    deliveries not relayed yet are `dropped`, outgoing messages not sent yet are `failed` (and
    counted as told: there is no token left to tell Pipedrive with). Returns (id, public id)."""
    if not installation_ids:
        return []
    now = utcnow()
    async with db.write(invalidates="channel") as conn:
        rows = (
            await conn.execute(
                channels.update()
                .where(
                    channels.c.installation_id.in_(installation_ids),
                    channels.c.status == "active",
                )
                .values(status="uninstalled", updated_at=now)
                .returning(channels.c.id, channels.c.provider_channel_id)
            )
        ).all()
        found = [(int(i), str(p)) for i, p in rows]
        for channel_id, _ in found:
            await conn.execute(
                inbound_deliveries.update()
                .where(
                    inbound_deliveries.c.conversation_key.like(f"{channel_id}:%"),
                    inbound_deliveries.c.status.in_(("received", "enqueued")),
                )
                .values(status="dropped", updated_at=now)
            )
        if found:
            await conn.execute(
                messages.update()
                .where(
                    messages.c.channel_id.in_([i for i, _ in found]),
                    messages.c.direction == "out",
                    messages.c.status.in_(_UNSENT),
                )
                .values(
                    status="failed",
                    pushed_status="failed",
                    error="the app was uninstalled",
                    updated_at=now,
                )
            )
    return sorted(found)


async def forget_credentials(db: Database, channel_id: int) -> bool:
    """Delete a removed channel's provider credentials and webhook secret (after its webhook was
    taken down at the provider); False when it is active or they were gone already."""
    async with db.write(invalidates="channel") as conn:
        result = await conn.execute(
            channels.update()
            .where(
                channels.c.id == channel_id,
                channels.c.status != "active",
                channels.c.credentials != "",
            )
            .values(credentials="", webhook_secret=None, updated_at=utcnow())
        )
        return bool(result.rowcount)


async def still_hooked(db: Database, crypto: Crypto) -> list[Channel]:
    """Uninstalled channels whose credentials are still stored: their unhook job has not
    succeeded yet (the maintenance job queues it again)."""
    query = sa.select(channels).where(
        channels.c.status == "uninstalled", channels.c.credentials != ""
    )
    async with db.engine.connect() as conn:
        return [_row(r, crypto) for r in await conn.execute(query)]
