"""Run the ledger consumer: Redis stream → Postgres, acknowledged after commit."""

from __future__ import annotations

import os
import socket
from typing import Any

from django.core.management.base import BaseCommand

from apps.ledger.consumer import consume_until_stopped
from apps.ledger.services import ledger_ingest_batch, redis_client


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
        parser.add_argument("--once", action="store_true", help="Drain what is there now, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        client = redis_client()

        def step(block_ms: int) -> int:
            return ledger_ingest_batch(
                client=client,
                consumer=options["consumer"],
                count=options["batch_size"],
                block_ms=block_ms,
                claim_idle_ms=options["claim_idle_ms"],
            )

        total = consume_until_stopped(step, once=options["once"], block_ms=options["block_ms"])
        self.stdout.write(f"ingested {total} ledger events")
