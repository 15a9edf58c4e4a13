"""API keys as both planes check them: the header, the hash, and why a key is refused."""

from __future__ import annotations

import pytest

from apps.core.apikeys import check_key, hash_key, key_digest, presented_key
from apps.core.errors import GatewayError

KEY = "cc_live_abcdefgh" + "s" * 40


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", "Basic " + KEY, "Bearer sk-" + "x" * 40, "Bearer\x00" + KEY]
)
def test_a_missing_or_foreign_header_is_a_401(header: str | None) -> None:
    with pytest.raises(GatewayError) as refused:
        presented_key(header)
    assert refused.value.status == 401 and refused.value.code == "invalid_api_key"


def test_the_lookup_id_follows_the_prefix() -> None:
    assert presented_key(f"bearer  {KEY} ") == (KEY, "abcdefgh")


def test_only_the_right_live_key_passes() -> None:
    stored = key_digest(KEY)
    assert bytes.fromhex(hash_key(KEY)) == stored
    check_key(KEY, stored, revoked=False, expires_at=None, now=100.0)
    cases = [
        (KEY + "x", False, None, "Incorrect API key provided."),
        (KEY, True, None, "This API key has been revoked."),
        (KEY, False, 100.0, "This API key has expired."),
    ]
    for token, revoked, expires_at, message in cases:
        with pytest.raises(GatewayError) as refused:
            check_key(token, stored, revoked=revoked, expires_at=expires_at, now=100.0)
        assert (refused.value.status, refused.value.message) == (401, message)
