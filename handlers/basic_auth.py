"""HTTP Basic credentials, parsed once and compared in constant time."""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request

from service.crypto import constant_time_equals


def basic_credentials(request: Request) -> tuple[str, str] | None:
    """The (user, password) of an `Authorization: Basic` header, or None."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if "\x00" in decoded:  # no credential of ours holds one, and no database column takes one
        return None
    return (user, password) if sep else None


def matches(given: tuple[str, str] | None, user: str, password: str) -> bool:
    """Both parts compared in constant time, whatever was given."""
    if given is None:
        given = ("", "")
    user_ok = constant_time_equals(given[0], user)
    password_ok = constant_time_equals(given[1], password)
    return user_ok and password_ok
