"""Run a batch's lines in this process (what the ``batches.run`` Celery task does), e.g. to drain one by hand."""

from __future__ import annotations

import os
import socket
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.batches.models import Batch
from apps.batches.services import batch_run


class Command(BaseCommand):
    help = "Run the unfinished lines of a batch here; safe beside other workers (lines are claimed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("batch_id")
        parser.add_argument("--chunk", type=int, default=64, help="Lines claimed at a time")

    def handle(self, *args: Any, **options: Any) -> None:
        batch = Batch.objects.filter(pk=options["batch_id"]).first()
        if batch is None:
            raise CommandError(f"No batch {options['batch_id']}.")
        worker = f"{socket.gethostname()}:{os.getpid()}:cli"
        ran = batch_run(batch_id=batch.pk, worker=worker, chunk=options["chunk"])
        batch.refresh_from_db()
        self.stdout.write(f"{batch.pk}: ran {ran} lines here; {batch.status}, {batch.completed}/{batch.total} done")
