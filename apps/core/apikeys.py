"""API keys as both planes read them: the header, the stored hash and whether a key may be used.

A key is ``cc_live_`` + an 8-character lookup id + a secret. Only the lookup id
and the SHA-256 of the whole key are stored; a request's key is found by its
lookup id and compared by hash in constant time. The gateway (against its
snapshot) and ``/v1/files`` and ``/v1/batches`` (against the database) use the
same functions, so they refuse the same keys with the same messages.
"""

from __future__ import annotations

import hashlib
import hmac

from apps.core.errors import invalid_api_key

KEY_PREFIX = "cc_live_"
LOOKUP_ID_LENGTH = 8  # the characters after the prefix that find the key; the rest is secret

MISSING_KEY = "You didn't provide an API key. Send it as 'Authorization: Bearer cc_live_...'."


def bearer_key(authorization: str) -> tuple[str, str] | None:
    """``(key, lookup id)`` from an ``Authorization: Bearer cc_live_…`` header value, or None if it is not one."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(KEY_PREFIX):
        return None
    return token, token[len(KEY_PREFIX) : len(KEY_PREFIX) + LOOKUP_ID_LENGTH]


def key_digest(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def hash_key(plaintext: str) -> str:
    """What is stored for a key (hex SHA-256): the key itself never is."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def presented_key(authorization: str | None) -> tuple[str, str]:
    """``(key, lookup id)`` of the request's key, or the 401 for a missing or malformed one."""
    if not authorization:
        raise invalid_api_key(MISSING_KEY)
    parsed = bearer_key(authorization)
    if parsed is None:
        raise invalid_api_key()
    return parsed


def check_key(token: str, stored_digest: bytes, *, revoked: bool, expires_at: float | None, now: float) -> None:
    """Raise the 401 for a found key that may not be used: a wrong secret, revoked, or expired at ``now``."""
    if not hmac.compare_digest(stored_digest, key_digest(token)):
        raise invalid_api_key()
    if revoked:
        raise invalid_api_key("This API key has been revoked.")
    if expires_at is not None and expires_at <= now:
        raise invalid_api_key("This API key has expired.")
