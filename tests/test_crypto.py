"""Secrets at rest and signed values: round trips, rotation, tampering and expiry."""

from __future__ import annotations

import pytest

from service.crypto import BadSignature, Crypto, DecryptionError, constant_time_equals

OLD = "old-secret-key-0123456789-abcdefghijkl"
NEW = "new-secret-key-0123456789-abcdefghijkl"


def test_encrypt_round_trip_hides_the_plaintext() -> None:
    """What is stored is not the secret, and decrypts back to it."""
    crypto = Crypto([NEW])
    token = crypto.encrypt("bot123:ABC")
    assert "bot123" not in token
    assert crypto.decrypt(token) == "bot123:ABC"


def test_rotation_keeps_old_secrets_readable() -> None:
    """With a new key in front, old values still decrypt, and re-encrypt under the new key."""
    old_token = Crypto([OLD]).encrypt("refresh-token")
    rotated = Crypto([NEW, OLD])
    assert rotated.decrypt(old_token) == "refresh-token"
    new_token = rotated.rotate(old_token)
    assert Crypto([NEW]).decrypt(new_token) == "refresh-token"
    with pytest.raises(DecryptionError):
        Crypto([OLD]).decrypt(new_token)


def test_unknown_key_fails_clearly() -> None:
    """A value made with a key that is no longer configured raises DecryptionError."""
    with pytest.raises(DecryptionError, match="SECRET_KEY"):
        Crypto([NEW]).decrypt(Crypto([OLD]).encrypt("x"))


def test_signed_value_round_trip_and_expiry() -> None:
    """A signed value reads back until its expiry, then is refused."""
    crypto = Crypto([NEW])
    signed = crypto.sign("media/42", ttl_seconds=60, now=1000.0)
    assert crypto.unsign(signed, now=1059.0) == "media/42"
    with pytest.raises(BadSignature, match="expired"):
        crypto.unsign(signed, now=1061.0)


def test_tampered_or_foreign_signature_is_refused() -> None:
    """Changing the value or the expiry, or signing with another key, breaks the signature."""
    crypto = Crypto([NEW])
    signed = crypto.sign("media/42", ttl_seconds=60, now=1000.0)
    value, expires, mac = signed.split(".")
    forged_expiry = f"{value}.{int(expires) + 10_000}.{mac}"
    with pytest.raises(BadSignature):
        crypto.unsign(forged_expiry, now=1000.0)
    with pytest.raises(BadSignature):
        crypto.unsign(Crypto([OLD]).sign("media/42", 60, now=1000.0), now=1000.0)
    with pytest.raises(BadSignature, match="malformed"):
        crypto.unsign("not-a-signed-value", now=1000.0)


def test_signatures_survive_rotation() -> None:
    """Links signed before a key rotation stay valid until they expire."""
    signed = Crypto([OLD]).sign("x", 60, now=0.0)
    assert Crypto([NEW, OLD]).unsign(signed, now=1.0) == "x"


def test_constant_time_equals() -> None:
    assert constant_time_equals("abc", "abc")
    assert not constant_time_equals("abc", "abd")
    assert constant_time_equals(b"abc", "abc")
