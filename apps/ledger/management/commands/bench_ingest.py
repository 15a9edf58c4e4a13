"""`manage.py bench_ingest`: how many ledger rows per second the consumer moves from the stream to Postgres.

Publishes N realistic events to a ledger stream of its own (a separate Redis prefix, so a running
gateway's stream is untouched), then times the real consumer function (``ledger_ingest_batch``:
read, clean, insert, acknowledge) draining it, and checks that every event became exactly one row.
The rows belong to a throw-away organisation and are deleted afterwards. ``--consumers N`` drains with N
processes in the one consumer group, as N ``ingest_ledger`` processes would share a stream.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, connections

from apps.core.events import EVENT_FIELD
from apps.ledger.models import LedgerEntry
from apps.ledger.services import ensure_group, ledger_ingest_batch, ledger_stream, redis_client
from apps.tenancy.models import Organization, Project
from apps.tenancy.services import organization_create, project_create

PREFIX = "bench-ingest:"


def _event(org_id: int, project_id: int, n: int, first: float) -> dict[str, Any]:
    """The ``n``th of a run's events; a millisecond after the one before, as traffic reaches the stream."""
    return {
        "request_id": f"req_{uuid.uuid4().hex}",
        "created_at": first + n * 0.001,
        "organization_id": org_id,
        "project_id": project_id,
        "api_key_id": 1 + n % 5,
        "provider_id": 1,
        "endpoint": "chat.completions",
        "feature": f"feature-{n % 8}",
        "end_user": f"user-{n % 1000}",
        "requested_model": "gpt-4o",
        "served_model": "gpt-4o-mini" if n % 3 else "gpt-4o",
        "prompt_tokens": 200 + n % 500,
        "cached_tokens": 0,
        "completion_tokens": 50 + n % 200,
        "usage_estimated": False,
        "possibly_billed": False,
        "cost": "0.00031250",
        "counterfactual_cost": "0.00125000",
        "latency_ms": 300 + n % 700,
        "ttft_ms": 120,
        "status_code": 200 if n % 50 else 429,
        "error_code": "" if n % 50 else "rate_limited",
        "streamed": bool(n % 2),
        "cache_hit": "",
        "route": "rule:cheap-first → gpt-4o-mini",
        "decision": {"kind": "rule", "model": "gpt-4o-mini", "reason": "cheap-first"},
    }


def _backend_cpu() -> float | None:
    """CPU seconds the Postgres backend serving this connection has used, when the server runs on this machine."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu(client: Any) -> float:
    """CPU seconds the Redis server has used (INFO cpu), wherever it runs."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _drain(consumer: str, batch: int, out: Any) -> None:
    """One consumer process: read, store and acknowledge until the stream has nothing new for it."""
    client = redis_client()
    handled, cpu = 0, time.process_time()
    while step := ledger_ingest_batch(client=client, consumer=consumer, count=batch, block_ms=0):
        handled += step
    out.put((handled, time.process_time() - cpu))


def _drain_in_processes(consumers: int, batch: int) -> tuple[int, float]:
    """Entries handled and consumer CPU seconds, over ``consumers`` forked processes."""
    connections.close_all()  # each child opens its own connection; none inherits the parent's socket
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [context.Process(target=_drain, args=(f"bench-{i}", batch, out)) for i in range(consumers)]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(r[0] for r in results), sum(r[1] for r in results)


def _rows_forget(org_id: int) -> None:
    """Delete a run's rows and vacuum them away now: autovacuum would otherwise clean up after one run
    while the next is timed, its dead index entries still in the way."""
    LedgerEntry.objects.filter(organization_id=org_id).delete()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ledger_ledgerentry")


class Command(BaseCommand):
    help = "Benchmark ledger ingest (Redis stream → Postgres) in rows per second."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--events", type=int, default=100_000)
        parser.add_argument("--batch-size", type=int, default=2000, help="entries per read, as ingest_ledger's")
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--consumers", type=int, default=1, help="consumer processes sharing the stream")

    def handle(self, *args: Any, **options: Any) -> None:
        settings.REDIS_PREFIX = PREFIX
        client = redis_client()
        org = Organization.objects.filter(slug="bench-ingest").first() or organization_create(
            name="Bench ingest", slug="bench-ingest"
        )
        project = Project.objects.filter(slug="bench-ingest").first() or project_create(
            organization=org, name="Bench ingest", slug="bench-ingest"
        )
        n, batch = options["events"], options["batch_size"]
        rates = []
        try:
            for run in range(1, options["runs"] + 1):
                client.delete(ledger_stream())
                ensure_group(client)
                first = time.time() - n * 0.001
                for start in range(0, n, 5000):
                    pipe = client.pipeline(transaction=False)
                    for i in range(start, min(start + 5000, n)):
                        pipe.xadd(ledger_stream(), {EVENT_FIELD: orjson.dumps(_event(org.id, project.id, i, first))})
                    pipe.execute()
                consumers = max(options["consumers"], 1)
                db = _backend_cpu() if consumers == 1 else None  # the backends of N children are not ours to read
                redis_cpu = _redis_cpu(client)
                wall, cpu = time.perf_counter(), time.process_time()
                handled = 0
                if consumers == 1:
                    while step := ledger_ingest_batch(client=client, consumer="bench", count=batch, block_ms=0):
                        handled += step
                    cpu = time.process_time() - cpu
                else:
                    handled, cpu = _drain_in_processes(consumers, batch)
                wall = time.perf_counter() - wall
                db_after = _backend_cpu() if db is not None else None
                redis_cpu = _redis_cpu(client) - redis_cpu
                stored = LedgerEntry.objects.filter(organization_id=org.id).count()
                if handled != n or stored != n:
                    raise CommandError(f"run {run}: {handled} entries handled and {stored} rows stored of {n}")
                rates.append(n / wall)
                postgres = "" if db is None or db_after is None else f", Postgres {(db_after - db) / n * 1e6:.0f} µs"
                self.stdout.write(
                    f"run {run}: {n} rows in {wall:.2f} s = {n / wall:,.0f} rows/s "
                    f"(CPU per row: consumer {cpu / n * 1e6:.0f} µs{postgres}, Redis {redis_cpu / n * 1e6:.0f} µs; "
                    f"batch {batch}; "
                    f"{consumers} consumer{'s' if consumers > 1 else ''})"
                )
                _rows_forget(org.id)
        finally:
            client.delete(ledger_stream())
            LedgerEntry.objects.filter(organization_id=org.id).delete()
        self.stdout.write(f"best {max(rates):,.0f} rows/s, median {sorted(rates)[len(rates) // 2]:,.0f} rows/s")
