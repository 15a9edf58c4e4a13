"""Run the cache consumer: index stored answers in Postgres (embedding them) and count hits."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from apps.cache.services import cache_ingest_batch
from apps.ledger.services import redis_client


class Command(BaseCommand):
    help = "Consume the cache event stream (run beside the gateway when any project uses the cache)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
        parser.add_argument("--once", action="store_true", help="Drain what is there now, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        client = redis_client()
        total = 0
        while not stopping:
            handled = cache_ingest_batch(
                client=client, consumer=options["consumer"], block_ms=0 if options["once"] else 1000
            )
            total += handled
            close_old_connections()
            if options["once"] and handled == 0:
                break
        self.stdout.write(f"ingested {total} cache events")
