"""Authenticate: the request's API key against the snapshot (no database, constant-time compare)."""

from __future__ import annotations

import time

from apps.core.apikeys import check_key, presented_key
from apps.core.errors import invalid_api_key
from apps.core.snapshot import KeyPolicy, Snapshot


def authenticate(snapshot: Snapshot, authorization: bytes | None) -> KeyPolicy:
    """The key of ``Authorization: Bearer cc_live_…``, or the 401 the app should see."""
    token, lookup_id = presented_key(authorization.decode("latin-1") if authorization else None)
    key = snapshot.keys.get(lookup_id)
    if key is None:
        raise invalid_api_key()
    check_key(token, key.key_hash, revoked=key.revoked, expires_at=key.expires_at, now=time.time())
    return key
