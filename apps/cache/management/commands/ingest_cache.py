"""Run the cache consumer: index stored answers in Postgres (embedding them) and count hits."""

from __future__ import annotations

import os
import socket
from typing import Any

from django.core.management.base import BaseCommand

from apps.cache.services import cache_ingest_batch
from apps.ledger.consumer import consume_until_stopped
from apps.ledger.services import redis_client


class Command(BaseCommand):
    help = "Consume the cache event stream (run beside the gateway when any project uses the cache)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
        parser.add_argument("--once", action="store_true", help="Drain what is there now, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        client = redis_client()

        def step(block_ms: int) -> int:
            return cache_ingest_batch(client=client, consumer=options["consumer"], block_ms=block_ms)

        total = consume_until_stopped(step, once=options["once"], block_ms=1000)
        self.stdout.write(f"ingested {total} cache events")
