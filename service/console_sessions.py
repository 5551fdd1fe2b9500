"""Operator console sessions: a signed cookie naming a session that lives in Redis.

The cookie holds only a signed, expiring session id (`Crypto.sign` with a purpose prefix, so no
other signed value of ours, such as a media link, passes for one). The session itself, with its
CSRF token, lives in Redis, so logging out ends it everywhere, and it remembers a hash of the admin
token it was opened with, so changing `ADMIN_TOKEN` ends every session. Lost if Redis forgets it:
the operator logs in again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from service import redis_keys
from service.crypto import BadSignature, Crypto, constant_time_equals

#: How long a console login lasts (the cookie and the session expire together).
SESSION_SECONDS = 8 * 3600
#: Failed logins allowed per client IP and minute; after that even the right token waits.
LOGIN_FAILURES_PER_MINUTE = 5
_PURPOSE = "console-session:"


@dataclass(frozen=True, slots=True)
class Session:
    """An open console session: its id (in the cookie) and the CSRF token its forms carry."""

    id: str
    csrf: str

    def csrf_matches(self, given: str) -> bool:
        return constant_time_equals(given, self.csrf)


def _token_hash(admin_token: str) -> str:
    return hashlib.sha256(admin_token.encode()).hexdigest()


class ConsoleSessions:
    """Opens, finds and closes console sessions, and counts failed logins per client."""

    def __init__(self, redis: Redis, crypto: Crypto) -> None:
        self.redis = redis
        self.crypto = crypto

    async def open(self, admin_token: str) -> tuple[Session, str]:
        """A new session and the cookie value that names it."""
        session = Session(id=secrets.token_urlsafe(24), csrf=secrets.token_urlsafe(24))
        value = json.dumps({"csrf": session.csrf, "token": _token_hash(admin_token)})
        await self.redis.set(redis_keys.CONSOLE_SESSION + session.id, value, ex=SESSION_SECONDS)
        return session, self.crypto.sign(_PURPOSE + session.id, SESSION_SECONDS)

    async def find(self, cookie: str, admin_token: str) -> Session | None:
        """The session a cookie names, if the signature holds, it has not expired or been
        closed, and it was opened with the admin token configured now."""
        try:
            signed = self.crypto.unsign(cookie)
        except BadSignature:
            return None
        if not signed.startswith(_PURPOSE):
            return None
        session_id = signed.removeprefix(_PURPOSE)
        raw = await self.redis.get(redis_keys.CONSOLE_SESSION + session_id)
        if raw is None:
            return None
        stored = json.loads(raw)
        if not constant_time_equals(str(stored.get("token", "")), _token_hash(admin_token)):
            return None
        return Session(id=session_id, csrf=str(stored["csrf"]))

    async def close(self, session: Session) -> None:
        await self.redis.delete(redis_keys.CONSOLE_SESSION + session.id)

    async def login_allowed(self, client: str) -> bool:
        """False while this client has used up its failed logins for the minute."""
        count = await self.redis.get(redis_keys.CONSOLE_LOGIN_FAILURES + client)
        return int(count or 0) < LOGIN_FAILURES_PER_MINUTE

    async def count_failure(self, client: str) -> None:
        key = redis_keys.CONSOLE_LOGIN_FAILURES + client
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=60, nx=True)  # the window opens with the first failure
            pipe.incr(key)
            await pipe.execute()
