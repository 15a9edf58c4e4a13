"""`manage.py status`: the state of every component, one line each; exits non-zero when one is down.

Postgres (and unapplied migrations), Redis and Celery's broker, the policy
version, each stream (length, unread, unacknowledged, dead letters), Celery's
queues and workers, the roll-ups' lag, whether this host's hot path is compiled, and each gateway's
/readyz.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from costcontrol import compiled, operations
from costcontrol.celery import app as celery_app

OK, WARN, DOWN = "ok", "warn", "DOWN"
# The roll-ups run every minute (setup_periodic_tasks); this far behind, beat or the workers are not running them.
ROLLUP_LAG_WARN_SECONDS = 300


class Command(BaseCommand):
    help = "Print the state of every component (Postgres, Redis, streams, Celery, roll-ups, gateways)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--gateway",
            action="append",
            default=None,
            help="a gateway's base URL to ask /readyz (repeatable; default http://127.0.0.1:8000)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self._check("postgres", self._postgres)
        self._check("redis", self._redis)
        self._check("celery broker", self._broker)
        self._check("streams", self._streams)
        self._check("celery", self._celery)
        self._check("roll-ups", self._rollups)
        self._check("hot path", self._hot_path)
        gateways = options["gateway"] or ["http://127.0.0.1:8000"]
        for url in gateways:
            if urlsplit(url).scheme not in ("http", "https"):
                raise CommandError(f"--gateway {url!r}: give an http:// or https:// URL")
        for url in gateways:
            self._check(f"gateway {url}", lambda url=url: self._gateway(url))
        width = max(len(name) for name, _, _ in self.rows)
        for name, state, detail in self.rows:
            line = f"{name:<{width}}  {state:<4}  {detail}"
            self.stdout.write(self.style.ERROR(line) if state == DOWN else line)
        down = [name for name, state, _ in self.rows if state == DOWN]
        if down:
            raise CommandError(f"{len(down)} down: {', '.join(down)}")

    def _check(self, name: str, probe: Any) -> None:
        try:
            probe()
        except Exception as exc:
            self.rows.append(
                (name, DOWN, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
            )

    def _row(self, name: str, state: str, detail: str) -> None:
        self.rows.append((name, state, detail))

    def _postgres(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT version()")
            row = cursor.fetchone()
        version = str(row[0]).split(" on ")[0] if row else "?"
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
        state = WARN if unapplied else OK
        self._row("postgres", state, f"{version}; {len(unapplied)} migrations not applied")

    def _redis(self) -> None:
        client = operations.redis_client()
        info = client.info("memory")
        self._row("redis", OK, f"used memory {info.get('used_memory_human')}")
        self._row("policy version", OK, str(operations.policy_version(client)))

    def _broker(self) -> None:
        operations.broker_ping()
        shared = " (the state Redis)" if settings.CELERY_BROKER_URL == settings.REDIS_URL else ""
        self._row("celery broker", OK, f"{operations.broker_address()}{shared} answers")

    def _streams(self) -> None:
        for state in operations.stream_states(operations.redis_client()):
            unread = "?" if state.lag is None else str(state.lag)
            self._row(
                f"stream {state.name}",
                WARN if state.dead_letters else OK,
                f"{state.length} entries, {unread} unread, {state.pending} unacknowledged, "
                f"{state.dead_letters} dead letters",
            )

    def _celery(self) -> None:
        depths = operations.queue_depths()
        self._row("celery queues", OK, ", ".join(f"{queue} {depth}" for queue, depth in depths.items()))
        replies = celery_app.control.ping(timeout=1.0)
        self._row("celery workers", OK if replies else DOWN, f"{len(replies)} answered a ping")

    def _rollups(self) -> None:
        lag = operations.rollup_lag_seconds()
        if lag is None:
            self._row("roll-ups", WARN, "never run")
        else:
            self._row("roll-ups", WARN if lag > ROLLUP_LAG_WARN_SECONDS else OK, f"{lag:.0f} s behind the ledger")

    def _hot_path(self) -> None:
        """Whether the gateway processes started on this host run the compiled hot modules (make compile)."""
        build, why = compiled.fresh_build()
        if build is None:
            self._row("hot path", WARN, f"plain Python: {why}")
        else:
            self._row("hot path", OK, f"compiled ({len(compiled.HOT_MODULES)} modules in {build.directory})")

    def _gateway(self, base_url: str) -> None:
        name = f"gateway {base_url}"
        try:
            with urlopen(base_url.rstrip("/") + "/readyz", timeout=5) as response:  # noqa: S310 (an operator's URL)
                body = json.loads(response.read())
        except HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        except URLError as exc:
            self._row(name, DOWN, f"unreachable ({exc.reason})")
            return
        checks = body.get("checks") or {}
        failed = sorted(check for check, result in checks.items() if not result.get("ok"))
        snapshot = checks.get("policy_snapshot") or {}
        detail = f"policy version {snapshot.get('version')}, {snapshot.get('age_seconds')} s since known current"
        if failed:
            self._row(name, DOWN, f"not ready: {', '.join(failed)} failing; {detail}")
        else:
            self._row(name, OK, f"ready; {detail}")
