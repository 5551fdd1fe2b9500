"""Installations of the app: one per (company, user), with encrypted tokens and a status.

Statuses: `active`; `needs_reauth` (the token was refused, or the user was deactivated: no work
is done until the user installs again); `uninstalled` (Pipedrive's uninstall notice).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa

from service.crypto import Crypto
from service.store.engine import Database
from service.store.schema import installations, oauth_codes, utcnow

Status = Literal["active", "needs_reauth", "uninstalled"]
AuthKind = Literal["oauth", "api_token"]


@dataclass(frozen=True, slots=True)
class Installation:
    """An installation as the service uses it; tokens are decrypted only on demand."""

    id: int
    company_id: int
    user_id: int
    auth_kind: AuthKind
    api_domain: str
    company_domain: str | None
    scopes: tuple[str, ...]
    access_token_encrypted: str | None
    refresh_token_encrypted: str | None
    expires_at: datetime | None
    token_version: int
    status: Status
    status_reason: str | None
    webhook_user: str | None
    webhook_password_encrypted: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> str:
        """A stable name for locks, rate limits and logs (never a secret)."""
        return f"{self.company_id}:{self.user_id}"

    def as_json(self) -> dict[str, Any]:
        """What the admin API shows: identity and state, no secrets."""
        return {
            "company_id": self.company_id,
            "user_id": self.user_id,
            "api_domain": self.api_domain,
            "status": self.status,
            "status_reason": self.status_reason,
            "auth_kind": self.auth_kind,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class TokenSet:
    """What a token response gives us, in clear; `save_tokens` encrypts it."""

    access_token: str
    refresh_token: str
    expires_at: datetime
    api_domain: str
    scopes: tuple[str, ...]


def _row(row: sa.Row[Any]) -> Installation:
    m = row._mapping
    return Installation(
        id=m["id"],
        company_id=m["company_id"],
        user_id=m["user_id"],
        auth_kind=m["auth_kind"],
        api_domain=m["api_domain"],
        company_domain=m["company_domain"],
        scopes=tuple(s for s in m["scopes"].split(",") if s),
        access_token_encrypted=m["access_token"],
        refresh_token_encrypted=m["refresh_token"],
        expires_at=m["expires_at"],
        token_version=m["token_version"],
        status=m["status"],
        status_reason=m["status_reason"],
        webhook_user=m["webhook_user"],
        webhook_password_encrypted=m["webhook_password"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


async def get(db: Database, installation_id: int, *, fresh: bool = False) -> Installation | None:
    """By id, from the process cache when fresh (every relayed message asks); `fresh` reads
    the database (a token refresh decides on what is stored now)."""

    async def load() -> Installation | None:
        async with db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(installations).where(installations.c.id == installation_id)
                )
            ).first()
        return _row(row) if row else None

    if fresh:
        return await load()
    found: Installation | None = await db.cache.get("installation", installation_id, load)
    return found


async def find(db: Database, company_id: int, user_id: int) -> Installation | None:
    query = sa.select(installations).where(
        installations.c.company_id == company_id, installations.c.user_id == user_id
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _row(row) if row else None


async def find_for_uninstall(db: Database, company_id: int, user_id: int) -> list[Installation]:
    """What an uninstall notice names: the user's own installation when that user installed,
    else every installation of the company that is not uninstalled yet (another admin of the
    company removed the app, and the notice carries that admin's id, not the installer's)."""
    own = await find(db, company_id, user_id)
    if own is not None:
        return [own]
    return [i for i in await list_for_company(db, company_id) if i.status != "uninstalled"]


async def find_by_webhook_user(db: Database, webhook_user: str) -> Installation | None:
    query = sa.select(installations).where(installations.c.webhook_user == webhook_user)
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _row(row) if row else None


async def list_all(db: Database) -> list[Installation]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(installations).order_by(installations.c.id))
        return [_row(r) for r in rows]


async def list_for_company(db: Database, company_id: int) -> list[Installation]:
    query = sa.select(installations).where(installations.c.company_id == company_id)
    async with db.engine.connect() as conn:
        return [_row(r) for r in await conn.execute(query)]


async def find_by_code(db: Database, code: str) -> Installation | None:
    """The installation an authorization code was already exchanged for, if any."""
    query = (
        sa.select(installations)
        .join(oauth_codes, oauth_codes.c.installation_id == installations.c.id)
        .where(oauth_codes.c.code_hash == code_hash(code))
    )
    async with db.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return _row(row) if row else None


async def save_oauth_install(
    db: Database,
    crypto: Crypto,
    *,
    company_id: int,
    user_id: int,
    company_domain: str | None,
    tokens: TokenSet,
    code: str,
) -> Installation:
    """Create or reactivate the (company, user) installation; remember the code it used."""
    now = utcnow()
    values = {
        "auth_kind": "oauth",
        "api_domain": tokens.api_domain,
        "company_domain": company_domain,
        "scopes": ",".join(tokens.scopes),
        "access_token": crypto.encrypt(tokens.access_token),
        "refresh_token": crypto.encrypt(tokens.refresh_token),
        "expires_at": tokens.expires_at,
        "status": "active",
        "status_reason": None,
        "updated_at": now,
    }
    async with db.write(invalidates="installation") as conn:
        existing = (
            await conn.execute(
                sa.select(installations.c.id).where(
                    installations.c.company_id == company_id, installations.c.user_id == user_id
                )
            )
        ).scalar_one_or_none()
        if existing is None:
            result = await conn.execute(
                installations.insert()
                .values(company_id=company_id, user_id=user_id, created_at=now, **values)
                .returning(installations.c.id)
            )
            installation_id = int(result.scalar_one())
        else:
            installation_id = int(existing)
            await conn.execute(
                installations.update()
                .where(installations.c.id == installation_id)
                .values(token_version=installations.c.token_version + 1, **values)
            )
        await conn.execute(
            oauth_codes.insert().values(
                code_hash=code_hash(code), installation_id=installation_id, created_at=now
            )
        )
    found = await get(db, installation_id)
    assert found is not None
    return found


async def ensure_api_token_install(
    db: Database, *, company_id: int, user_id: int, api_domain: str, company_domain: str | None
) -> Installation:
    """The implicit installation of single-company mode (its token lives in the environment)."""
    found = await find(db, company_id, user_id)
    if found is not None:
        if found.status != "active":  # the operator fixed the token: Pipedrive just accepted it
            await set_status(db, found.id, "active", None)
            found = await find(db, company_id, user_id)
            assert found is not None
        return found
    now = utcnow()
    async with db.write(invalidates="installation") as conn:
        await conn.execute(
            installations.insert().values(
                company_id=company_id,
                user_id=user_id,
                auth_kind="api_token",
                api_domain=api_domain,
                company_domain=company_domain,
                status="active",
                created_at=now,
                updated_at=now,
            )
        )
    created = await find(db, company_id, user_id)
    assert created is not None
    return created


async def save_refreshed_tokens(
    db: Database, crypto: Crypto, installation_id: int, tokens: TokenSet
) -> None:
    """Persist a refresh's result, always including the refresh token that came back."""
    async with db.write(invalidates="installation") as conn:
        await conn.execute(
            installations.update()
            .where(installations.c.id == installation_id)
            .values(
                access_token=crypto.encrypt(tokens.access_token),
                refresh_token=crypto.encrypt(tokens.refresh_token),
                expires_at=tokens.expires_at,
                api_domain=tokens.api_domain,
                scopes=",".join(tokens.scopes),
                token_version=installations.c.token_version + 1,
                updated_at=utcnow(),
            )
        )


async def set_status(
    db: Database,
    installation_id: int,
    status: Status,
    reason: str | None = None,
    *,
    only_if_version: int | None = None,
) -> bool:
    """Change the status; returns False when it already had it (idempotent notices), or when
    `only_if_version` is given and the tokens changed meanwhile (a reinstall, another refresh)."""
    query = installations.update().where(
        installations.c.id == installation_id, installations.c.status != status
    )
    if only_if_version is not None:
        query = query.where(
            installations.c.token_version == only_if_version,
            installations.c.status == "active",
        )
    async with db.write(invalidates="installation") as conn:
        result = await conn.execute(
            query.values(status=status, status_reason=reason, updated_at=utcnow())
        )
        return bool(result.rowcount)


async def set_webhook_credentials(
    db: Database, crypto: Crypto, installation_id: int, user: str, password: str
) -> None:
    async with db.write(invalidates="installation") as conn:
        await conn.execute(
            installations.update()
            .where(installations.c.id == installation_id)
            .values(
                webhook_user=user, webhook_password=crypto.encrypt(password), updated_at=utcnow()
            )
        )


async def uninstall(db: Database, installation_ids: list[int], reason: str) -> int:
    """Mark the installations uninstalled and delete their Pipedrive tokens (the webhook pair
    stays: it authenticates Pipedrive's late deliveries, which are then acknowledged and
    ignored). Returns how many were active or awaiting re-authorization until now."""
    if not installation_ids:
        return 0
    async with db.write(invalidates="installation") as conn:
        changed = await conn.execute(
            installations.update()
            .where(
                installations.c.id.in_(installation_ids),
                installations.c.status != "uninstalled",
            )
            .values(status="uninstalled", status_reason=reason, updated_at=utcnow())
        )
        await conn.execute(
            installations.update()
            .where(installations.c.id.in_(installation_ids))
            .values(access_token=None, refresh_token=None, expires_at=None)
        )
        return int(changed.rowcount)
