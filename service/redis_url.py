"""`REDIS_URL` forms beyond redis-py's own: Redis Sentinel.

redis-py's `from_url` and arq's `RedisSettings.from_dsn` know `redis://`, `rediss://` and
`unix://` only, so a Sentinel deployment is written as one URL that names the sentinels and the
monitored master, and is turned here into what both clients take:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/MASTER_NAME[/DB]

The password (if any) is the Redis master's; the sentinels themselves are reached without one
(arq's Sentinel support passes none to them).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where the sentinels are, which master they watch, and how to log in to it."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a `redis+sentinel://` URL; ValueError says what is wrong (never echoing the
    password)."""
    if not is_sentinel(url):
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}")
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0].strip("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_host_port(part) for part in hosts.split(",") if part.strip())
    if not sentinels:
        raise ValueError("name at least one sentinel: redis+sentinel://host:26379/MASTER_NAME")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("give the master's name and optionally a db: .../MASTER_NAME[/DB]")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"the database must be a number, not {parts[1]!r}")
        db = int(parts[1])
    return SentinelTarget(sentinels, unquote(parts[0]), db, username, password)


def _host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"a sentinel needs a host: {text!r}")
    if port and not port.isdigit():
        raise ValueError(f"a sentinel's port must be a number: {text!r}")
    number = int(port) if port else DEFAULT_SENTINEL_PORT
    if not 0 < number < 65536:
        raise ValueError(f"a sentinel's port is out of range: {text!r}")
    return host, number
