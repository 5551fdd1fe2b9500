"""Secrets at rest and signed links.

Keys are derived (HKDF-SHA256) from each `SECRET_KEY` entry, one derivation per purpose, so the
encryption key and the link-signing key never coincide. Encryption is Fernet through MultiFernet:
it encrypts with the newest key and decrypts with any, which is what key rotation needs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class DecryptionError(Exception):
    """A stored secret could not be decrypted with any configured key."""


class BadSignature(Exception):
    """A signed value was altered, was signed with an unknown key, or has expired."""


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"pdbridge", info=purpose).derive(
        secret.encode()
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Crypto:
    """Encrypts stored secrets and signs short strings, with the keys newest first."""

    def __init__(self, secret_keys: Sequence[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is needed")
        self._fernet = MultiFernet(
            [Fernet(base64.urlsafe_b64encode(_derive(k, b"encryption v1"))) for k in secret_keys]
        )
        self._signing_keys = [_derive(k, b"signing v1") for k in secret_keys]

    def encrypt(self, plaintext: str) -> str:
        """Encrypt with the newest key; the token carries its own timestamp and MAC."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        """Decrypt with whichever configured key made the token."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError("no configured SECRET_KEY decrypts this value") from None

    def rotate(self, token: str) -> str:
        """Re-encrypt an old token under the newest key (after adding a key in front)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError("no configured SECRET_KEY decrypts this value") from None

    def sign(self, value: str, ttl_seconds: int, *, now: float | None = None) -> str:
        """Return `value` with an expiry and an HMAC, safe to put in a URL path or query."""
        expires = int((now if now is not None else time.time()) + ttl_seconds)
        body = f"{_b64(value.encode())}.{expires}"
        return f"{body}.{self._mac(self._signing_keys[0], body)}"

    def unsign(self, signed: str, *, now: float | None = None) -> str:
        """Check the signature (against every key, in constant time) and the expiry."""
        try:
            encoded, expires_text, mac = signed.rsplit(".", 2)
            expires = int(expires_text)
        except ValueError:
            raise BadSignature("malformed signed value") from None
        body = f"{encoded}.{expires_text}"
        given = mac.encode("utf-8", "replace")
        if not any(
            hmac.compare_digest(given, self._mac(k, body).encode()) for k in self._signing_keys
        ):
            raise BadSignature("signature does not match")
        if expires < (now if now is not None else time.time()):
            raise BadSignature("signature has expired")
        try:
            return _unb64(encoded).decode()
        except ValueError:
            raise BadSignature("malformed signed value") from None

    @staticmethod
    def _mac(key: bytes, body: str) -> str:
        return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest()[:20])


def constant_time_equals(given: str | bytes, expected: str | bytes) -> bool:
    """Compare a presented secret with the expected one without leaking timing."""
    a = given.encode() if isinstance(given, str) else given
    b = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)
