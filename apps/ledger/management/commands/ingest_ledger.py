"""Run the ledger consumer: Redis stream → Postgres, acknowledged after commit."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from apps.ledger.services import ledger_ingest_batch, redis_client


class Command(BaseCommand):
    help = "Consume the ledger stream and bulk-insert rows into Postgres (run one or more of these)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
        parser.add_argument("--batch-size", type=int, default=500)
        parser.add_argument("--block-ms", type=int, default=1000)
        parser.add_argument(
            "--claim-idle-ms",
            type=int,
            default=30_000,
            help="Take over entries another consumer left unacknowledged this long",
        )
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
            handled = ledger_ingest_batch(
                client=client,
                consumer=options["consumer"],
                count=options["batch_size"],
                block_ms=0 if options["once"] else options["block_ms"],
                claim_idle_ms=options["claim_idle_ms"],
            )
            total += handled
            close_old_connections()
            if options["once"] and handled == 0:
                break
        self.stdout.write(f"ingested {total} ledger events")
