"""Run the ledger consumer: Redis stream → Postgres, acknowledged after commit."""

from __future__ import annotations

import os
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.ledger.consumer import consume_until_stopped
from apps.ledger.services import ledger_ingest_batch, redis_client

# A row reaches Postgres at most this much later than without lingering; budgets and rate limits
# count in Redis, not from these rows. Measured in the README (Sizing: ledger ingest under traffic).
LINGER_MS = 100


class Command(BaseCommand):
    help = "Consume the ledger stream and bulk-insert rows into Postgres (run one or more of these)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
        parser.add_argument("--batch-size", type=int, default=2000)
        parser.add_argument("--block-ms", type=int, default=1000)
        parser.add_argument(
            "--claim-idle-ms",
            type=int,
            default=30_000,
            help="Take over entries another consumer left unacknowledged this long",
        )
        parser.add_argument(
            "--linger-ms",
            type=int,
            default=LINGER_MS,
            help="After a batch smaller than --batch-size, wait this long before reading again, so that batches "
            "grow under steady traffic (rows reach Postgres up to this much later; 0: read again at once)",
        )
        parser.add_argument("--once", action="store_true", help="Drain what is there now, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 <= options["linger_ms"] <= 10_000:
            raise CommandError("--linger-ms must be between 0 and 10000")
        client = redis_client()

        def step(block_ms: int) -> int:
            return ledger_ingest_batch(
                client=client,
                consumer=options["consumer"],
                count=options["batch_size"],
                block_ms=block_ms,
                claim_idle_ms=options["claim_idle_ms"],
            )

        total = consume_until_stopped(
            step,
            once=options["once"],
            block_ms=options["block_ms"],
            batch_size=options["batch_size"],
            linger_ms=options["linger_ms"],
        )
        self.stdout.write(f"ingested {total} ledger events")
