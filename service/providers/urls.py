"""The check every URL from outside passes before the service fetches it.

Providers hand us media URLs (WhatsApp's media lookups, Twilio's MediaUrlN). Fetching whatever
a webhook names would let anyone who can reach the webhook make the service request internal
addresses; so a URL is fetched only when it is http(s), has no credentials in it, and its host
is one the provider is known to serve files from (or the configured API base, for stand-ins).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


class UntrustedURL(ValueError):
    """A URL the service refuses to fetch; the message says why."""


def check_fetch_url(url: str, allowed_hosts: Iterable[str]) -> str:
    """Return `url` when it may be fetched; `allowed_hosts` entries may start with `*.`."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise UntrustedURL(f"scheme {parts.scheme!r} is not fetched")
    if parts.username or parts.password:
        raise UntrustedURL("URLs with credentials are not fetched")
    host = (parts.hostname or "").lower()
    for allowed in allowed_hosts:
        allowed = allowed.lower()
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return url
    raise UntrustedURL(f"host {host!r} is not one this provider serves files from")


def host_of(base_url: str) -> str:
    return (urlsplit(base_url).hostname or "").lower()
