"""The loop shared by the stream consumers (ledger and cache ingest commands)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections


def consume_until_stopped(step: Callable[[int], int], *, once: bool, block_ms: int) -> int:
    """Call ``step(block_ms)`` until SIGTERM/SIGINT, or until a pass finds nothing when ``once``.

    ``step`` handles one batch and returns how many entries it handled; with ``once``
    it is called without blocking. Returns the total handled.
    """
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    total = 0
    while not stopping:
        handled = step(0 if once else block_ms)
        total += handled
        close_old_connections()
        if once and handled == 0:
            break
    return total
