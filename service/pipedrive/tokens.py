"""Access tokens for installations: refreshed ahead of expiry and once on a 401, single-flight.

Many workers may find the same token expiring at once. Only one refreshes: it takes a Redis lock
per installation, re-reads the row (another process may have refreshed meanwhile, which shows as a
new `token_version`), and otherwise calls the OAuth server and persists everything that comes
back, the rotated refresh token included. `invalid_grant` marks the installation `needs_reauth`
and ends its work; it is never retried in a loop.
"""

from __future__ import annotations

from datetime import timedelta

from redis.asyncio import Redis
from redis.exceptions import LockError

from service import redis_keys
from service.crypto import Crypto
from service.logging import get_logger
from service.pipedrive.errors import (
    AuthRevoked,
    InstallationInactive,
    InvalidGrant,
    OAuthUnavailable,
)
from service.pipedrive.oauth import OAuthClient
from service.store import Database, installations
from service.store.installations import Installation
from service.store.schema import utcnow

log = get_logger(__name__)

#: Refresh this long before the token expires, so no call goes out with a dying token.
REFRESH_MARGIN = timedelta(minutes=5)
#: Longer than the slowest token request can take (the HTTP client gives up after 45 s).
LOCK_TIMEOUT = 90.0


class TokenManager:
    """Hands out a valid access token per installation, refreshing when needed."""

    def __init__(self, db: Database, redis: Redis, crypto: Crypto, oauth: OAuthClient) -> None:
        self.db = db
        self.redis = redis
        self.crypto = crypto
        self.oauth = oauth
        self._plain: dict[str, str] = {}

    async def access_token(self, inst: Installation) -> tuple[str, int]:
        """A token good for at least REFRESH_MARGIN, and the version it belongs to."""
        if _fresh(inst) and inst.access_token_encrypted is not None:
            return self._decrypted(inst.access_token_encrypted), inst.token_version
        return await self._refresh(inst.id, seen_version=inst.token_version, force=False)

    def _decrypted(self, encrypted: str) -> str:
        """Decrypting costs more than the rest of a call's bookkeeping; the last token of each
        ciphertext is kept in memory (the ciphertext changes with every refresh)."""
        found = self._plain.get(encrypted)
        if found is None:
            found = self.crypto.decrypt(encrypted)
            if len(self._plain) > 1000:
                self._plain.clear()
            self._plain[encrypted] = found
        return found

    async def after_unauthorized(
        self, inst: Installation, rejected_version: int
    ) -> tuple[str, int]:
        """Pipedrive refused the token of `rejected_version`: refresh unless someone already did."""
        return await self._refresh(inst.id, seen_version=rejected_version, force=True)

    async def _refresh(
        self, installation_id: int, *, seen_version: int, force: bool
    ) -> tuple[str, int]:
        lock = self.redis.lock(
            f"{redis_keys.REFRESH_LOCK}{installation_id}",
            timeout=LOCK_TIMEOUT,
            blocking_timeout=LOCK_TIMEOUT + 5,
        )
        try:
            async with lock:
                return await self._refresh_locked(installation_id, seen_version, force)
        except LockError as error:
            raise OAuthUnavailable(
                f"refresh lock for installation {installation_id}: {error}"
            ) from None

    async def _refresh_locked(
        self, installation_id: int, seen_version: int, force: bool
    ) -> tuple[str, int]:
        current = await installations.get(self.db, installation_id, fresh=True)
        if current is None or current.status != "active":
            raise InstallationInactive(f"installation {installation_id} is not active")
        assert current.access_token_encrypted is not None
        assert current.refresh_token_encrypted is not None
        moved_on = current.token_version != seen_version
        if moved_on or (not force and _fresh(current)):
            return self.crypto.decrypt(current.access_token_encrypted), current.token_version
        try:
            response = await self.oauth.refresh(
                self.crypto.decrypt(current.refresh_token_encrypted)
            )
        except InvalidGrant as error:
            await installations.set_status(
                self.db,
                installation_id,
                "needs_reauth",
                f"refresh refused: {error}",
                only_if_version=current.token_version,
            )
            log.error(
                "oauth.refresh_refused",
                installation=current.key,
                error=str(error),
                action="the user must install the app again",
            )
            raise AuthRevoked(f"installation {current.key} needs re-authorization") from error
        await installations.save_refreshed_tokens(
            self.db, self.crypto, installation_id, response.token_set()
        )
        log.info("oauth.refreshed", installation=current.key, forced=force)
        return response.access_token, current.token_version + 1


def _fresh(inst: Installation) -> bool:
    return inst.expires_at is not None and inst.expires_at - utcnow() > REFRESH_MARGIN
