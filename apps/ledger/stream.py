"""The ledger's Redis stream: names and the event format.

The gateway appends one event per request (one XADD); the ingest consumer
reads them through a consumer group, bulk-inserts, and acknowledges only after
the insert committed. No ORM here: the data plane imports this module.
"""

from __future__ import annotations

from django.conf import settings

GROUP = "ingest"
FIELD = b"e"  # each entry holds one field: the event as JSON


def stream_name() -> str:
    return settings.REDIS_PREFIX + "ledger"
