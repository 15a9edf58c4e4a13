"""The shadow comparisons' Redis stream (same event format as the ledger's; no ORM: the gateway imports it)."""

from __future__ import annotations

from django.conf import settings


def shadow_stream_name() -> str:
    return settings.REDIS_PREFIX + "shadow"
