"""Time what still reads the raw ledger on a large one: the ledger page, its CSV export, counter re-seeding.

    python manage.py bench_ledger --rows 10000000 --keep     # load once (SQL generate_series), measure
    python manage.py bench_ledger --reuse bench-ledger-…    # measure the kept rows again
    python manage.py bench_ledger --rows 100000000 --bulk --keep   # a month at a time, indexes built once

Rows go to a throwaway organisation with five projects, spread over the last year (so over thirteen
month partitions), in chunks of a million rows (one transaction each). Their roll-ups are then made
in one SQL pass (what the roll-up task would have written, latency histograms left empty) and the
roll-up watermark set to now, as on a deployment whose roll-ups keep up. Each measurement prints its
median over ``--runs`` and the plan of its main query (EXPLAIN ANALYZE, BUFFERS).

``--bulk`` is for a ledger larger than inserting into the indexed table allows in time and disk (100M
rows): each month's rows go, oldest first, into a bare table that is then attached as that month's
partition, so Postgres builds each index once, sorted and packed. Ingest fills indexes in time order
and leaves them larger (the README's bytes per row say how much); the reads timed here walk a few
pages of each index either way. It needs the thirteen months' partitions empty or absent (a bench
database), and its clean-up drops the partitions it filled and creates them again, empty.
"""

from __future__ import annotations

import datetime as dt
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import QuerySet
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from psycopg import sql

from apps.budgets.models import Budget, BudgetScope
from apps.budgets.selectors import budget_spent_usd
from apps.dashboard.management.commands.bench_dashboard import LOAD_COLUMNS, LOAD_SQL, LOAD_VALUES
from apps.keys.services import key_issue
from apps.ledger.browse import LedgerCursor, ledger_page, ledger_page_totals
from apps.ledger.models import (
    HISTOGRAM_EDGES_MS,
    LedgerEntry,
    ProjectHourlyRollup,
    RollupWatermark,
    SliceHourlyRollup,
)
from apps.ledger.partitions import TABLE, month_start, next_month, partition_create, partition_name
from apps.ledger.selectors import LedgerFilters, ledger_entries
from apps.tenancy.models import Organization, Project
from apps.tenancy.services import organization_create, project_create

CHUNK = 1_000_000
YEAR = 365 * 86400
EXPORT_FIRST_BYTES = 1 << 20

# The bench organisation's project and end-user roll-ups, from one pass over its rows (a
# data-modifying CTE feeds both tables). Histograms stay empty: nothing here reads them.
ROLLUP_SQL = """
WITH hours AS MATERIALIZED (
    SELECT date_trunc('hour', created_at) AS hour, organization_id, project_id, end_user,
           sum(request_count) AS requests, count(*) FILTER (WHERE status_code >= 400) AS errors,
           count(*) FILTER (WHERE cache_hit <> '') AS cache_hits, sum(prompt_tokens) AS prompt_tokens,
           sum(cached_tokens) AS cached_tokens, sum(completion_tokens) AS completion_tokens,
           sum(cost) AS cost, sum(counterfactual_cost) AS counterfactual_cost
    FROM ledger_ledgerentry WHERE organization_id = %(org)s
    GROUP BY 1, 2, 3, 4
), projects AS (
    INSERT INTO ledger_projecthourlyrollup (
        hour, organization_id, project_id, requests, errors, cache_hits, prompt_tokens, cached_tokens,
        completion_tokens, cost, counterfactual_cost, timed_count, streamed_count, latency_ms_sum,
        latency_hist, ttft_ms_sum, ttft_count, ttft_hist
    )
    SELECT hour, organization_id, project_id, sum(requests), sum(errors), sum(cache_hits), sum(prompt_tokens),
           sum(cached_tokens), sum(completion_tokens), sum(cost), sum(counterfactual_cost), 0, 0, 0,
           array_fill(0, ARRAY[%(buckets)s]), 0, 0, array_fill(0, ARRAY[%(buckets)s])
    FROM hours GROUP BY 1, 2, 3
)
INSERT INTO ledger_slicehourlyrollup (
    hour, organization_id, project_id, dimension, value, api_key_id, requests, errors, cache_hits,
    prompt_tokens, cached_tokens, completion_tokens, cost, counterfactual_cost
)
SELECT hour, organization_id, project_id, 'end_user', end_user, NULL, requests, errors, cache_hits,
       prompt_tokens, cached_tokens, completion_tokens, cost, counterfactual_cost
FROM hours
"""


class Command(BaseCommand):
    help = "Load N ledger rows over a year (SQL) and time the ledger page, its export and counter re-seeding."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--rows", type=int, default=10_000_000)
        parser.add_argument("--runs", type=int, default=5)
        parser.add_argument("--keep", action="store_true", help="leave the rows for the next run (--reuse TAG)")
        parser.add_argument("--reuse", default="", help="the tag (organisation slug) of rows kept by an earlier run")
        parser.add_argument("--no-plans", action="store_true")
        parser.add_argument(
            "--bulk", action="store_true", help="load a month at a time into a bare table and attach it (see above)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.runs, self.plans = options["runs"], not options["no_plans"]
        if options["reuse"]:
            org = Organization.objects.filter(slug=options["reuse"]).first()
            if org is None:
                raise CommandError(f"no kept bench organisation {options['reuse']!r}")
            owner = User.objects.get(username=org.slug)
        else:
            org, owner = self._load(options["rows"], bulk=options["bulk"])
        try:
            self._measure(org, owner)
        finally:
            if not options["keep"]:
                self._clean_up(org=org, owner=owner, bulk=options["bulk"])
            else:
                self.stdout.write(f"kept: --reuse {org.slug}")

    def _load(self, rows: int, *, bulk: bool) -> tuple[Organization, User]:
        if bulk:
            self._check_months_empty(timezone.now())
        tag = f"bench-ledger-{secrets.token_hex(3)}"
        owner = User.objects.create_user(username=tag, password=secrets.token_urlsafe(16))
        org = organization_create(name=tag, owner=owner, slug=tag)
        projects = [project_create(organization=org, name=f"{tag} p{i}", slug=f"{tag}-p{i}") for i in range(5)]
        key = key_issue(project=projects[0], name="bench").api_key
        now = timezone.now()
        params: dict[str, Any] = {
            "tag": tag,
            "rows": rows,
            "span": YEAR,
            "org": org.pk,
            "projects": [p.pk for p in projects],
            "key": key.pk,
            "now": now,
        }
        started = time.perf_counter()
        if bulk:
            self._load_months(params)
        else:
            for start in self._months(now):
                partition_create(start)
            for first in range(1, rows + 1, CHUNK):
                chunk = {**params, "first": first, "last": min(first + CHUNK - 1, rows)}
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(LOAD_SQL, chunk)
                self.stdout.write(f"  loaded {chunk['last']:,} rows, {time.perf_counter() - started:.0f} s")
                self.stdout.flush()
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE ledger_ledgerentry")
        self.stdout.write(f"loaded {rows:,} ledger rows in {time.perf_counter() - started:.0f} s")
        self._roll_up(org)
        return org, owner

    def _months(self, now: dt.datetime) -> list[dt.datetime]:
        """The first instants of this month and the twelve before, oldest first: what the rows span."""
        starts = [month_start(now)]
        for _ in range(12):
            starts.append(month_start(starts[-1] - dt.timedelta(days=1)))
        return starts[::-1]

    def _check_months_empty(self, now: dt.datetime) -> None:
        """--bulk replaces the months' partitions: refuse, before anything is written, if one holds a row."""
        for start in self._months(now):
            name = partition_name(start)
            with connection.cursor() as cursor:
                cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
                if not cursor.fetchone()[0]:
                    continue
                cursor.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(name)))
                if cursor.fetchone()[0]:
                    raise CommandError(f"--bulk needs empty months (a bench database): {name} has rows")

    def _load_months(self, params: dict[str, Any]) -> None:
        """--bulk: each month's rows into a bare table, oldest first, then attached as its partition."""
        now, rows, span = params["now"], params["rows"], params["span"]
        with connection.cursor() as cursor:  # named once: looked up per row, it tripled the load's time
            cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
            sequence = sql.Literal(cursor.fetchone()[0])
        started = time.perf_counter()
        for start in self._months(now):
            end = next_month(start)
            name = sql.Identifier(partition_name(start))
            # Row g is created at now - g * span / rows (whole seconds: integer division), so the month's
            # rows are an interval of g. A second's worth of rows of slack each side (the first 100M-row
            # load, with one row's, lost 5 rows at month edges); the WHERE keeps exactly the month's.
            slack = rows // span + 2
            first = max(1, int((now - end).total_seconds() * rows / span) - slack)
            last = min(rows, int((now - start).total_seconds() * rows / span) + slack)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL maintenance_work_mem = '1GB'")
                cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))  # empty: checked before the load
                # The CHECK lets ATTACH skip its scan of the rows; the identity stays the ledger's own.
                cursor.execute(
                    sql.SQL(
                        "CREATE TABLE {} (LIKE ledger_ledgerentry INCLUDING DEFAULTS INCLUDING CONSTRAINTS, "
                        "CONSTRAINT bench_month CHECK (created_at >= %(start)s AND created_at < %(end)s))"
                    ).format(name),
                    {"start": start, "end": end},
                )
                if first <= last:
                    cursor.execute(
                        sql.SQL(
                            f"INSERT INTO {{}} (id, {LOAD_COLUMNS}) "  # noqa: S608 (constants, no input)
                            "SELECT nextval({}::regclass), r.* FROM ("
                            f"SELECT {LOAD_VALUES} FROM generate_series(%(last)s::bigint, %(first)s::bigint, -1) AS g"
                            ") AS r WHERE r.created_at >= %(start)s AND r.created_at < %(end)s"
                        ).format(name, sequence),
                        {**params, "first": first, "last": last, "start": start, "end": end},
                    )
                loaded = time.perf_counter() - started
                cursor.execute(
                    sql.SQL("ALTER TABLE ledger_ledgerentry ATTACH PARTITION {} FOR VALUES FROM (%s) TO (%s)").format(
                        name
                    ),
                    [start, end],
                )
                cursor.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT bench_month").format(name))
            self.stdout.write(
                f"  {partition_name(start)}: rows {first:,}-{last:,} loaded at {loaded:.0f} s, "
                f"indexed and attached at {time.perf_counter() - started:.0f} s"
            )
            self.stdout.flush()

    def _roll_up(self, org: Organization) -> None:
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(ROLLUP_SQL, {"org": org.pk, "buckets": len(HISTOGRAM_EDGES_MS)})
            now = timezone.now()
            if not RollupWatermark.objects.update(ingested_before=now):
                RollupWatermark.objects.create(ingested_before=now)
        self.stdout.write(f"rolled up in {time.perf_counter() - started:.0f} s")

    def _time(self, label: str, work: Callable[[], object], plan: QuerySet[Any] | None = None) -> None:
        timings, result = [], None
        for _ in range(self.runs + 1):
            started = time.perf_counter()
            result = work()
            timings.append((time.perf_counter() - started) * 1000)
        timings = timings[1:]  # the first run warms caches and connections
        self.stdout.write(
            f"{label}: median {statistics.median(timings):,.0f} ms, max {max(timings):,.0f} ms ({self.runs} runs)"
            + (f" → {result}" if result is not None else "")
        )
        if plan is not None and self.plans:
            self.stdout.write("  " + plan.explain(analyze=True, buffers=True).replace("\n", "\n  "))

    def _measure(self, org: Organization, owner: User) -> None:
        project = Project.objects.filter(organization=org).order_by("pk").first()
        assert project is not None
        total = LedgerEntry.objects.filter(organization_id=org.pk).count()
        self.stdout.write(f"{total:,} rows in {org.slug}; {LedgerEntry.objects.count():,} in the ledger")
        client = Client(SERVER_NAME="localhost")
        client.force_login(owner)
        now = timezone.now()
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        last_week = (now - dt.timedelta(days=7)).date()

        def page(params: dict[str, str]) -> Callable[[], int]:
            def get() -> int:
                response = client.get(reverse("dashboard:ledger"), params)
                assert response.status_code == 200, response.status_code
                return len(response.content)

            return get

        def cursor_after(filters: LedgerFilters) -> str:
            """Where the first page of ``filters`` ends, as its "Older" link carries it."""
            first = ledger_page(entries=ledger_entries(user=owner, filters=filters), cursor=None, size=50)
            return first.older.token() if first.older else ""

        def plan(filters: LedgerFilters) -> QuerySet[Any]:
            return ledger_entries(user=owner, filters=filters).order_by("-created_at", "-id")[:51]

        week_start = dt.datetime.combine(now.date() - dt.timedelta(days=6), dt.time.min, tzinfo=dt.UTC)
        week = LedgerFilters(since=week_start)  # what a bare visit asks: from midnight six days ago
        self._time("ledger page, bare (default: last 7 days), bytes", page({}), plan=plan(week))
        self._time("  its totals (roll-ups)", lambda: ledger_page_totals(user=owner, filters=week).totals.requests)
        self._time("ledger page, all days (From cleared), bytes", page({"date_from": ""}), plan=plan(LedgerFilters()))
        self._time(
            "  its totals (roll-ups)", lambda: ledger_page_totals(user=owner, filters=LedgerFilters()).totals.requests
        )
        older = {"date_from": "", "cursor": cursor_after(LedgerFilters())}
        self._time("ledger page, all days, next page by cursor, bytes", page(older))
        deep = {
            "date_from": "",
            "cursor": LedgerCursor(created_at=now - dt.timedelta(days=200), id=0, newer=False).token(),
        }
        self._time("ledger page, all days, a cursor 200 days back, bytes", page(deep))
        one_user = {"project": project.slug, "end_user": "user-10", "date_from": ""}
        user_filters = LedgerFilters(project=project.slug, end_user="user-10")
        one_user_older = {**one_user, "cursor": cursor_after(user_filters)}
        self._time("ledger page, one project and end user, all days, bytes", page(one_user), plan=plan(user_filters))
        self._time(
            "  its totals (end-user roll-ups)",
            lambda: ledger_page_totals(user=owner, filters=user_filters).totals.requests,
        )
        self._time("  its next page by cursor, bytes", page(one_user_older))
        fine = {"project": project.slug, "end_user": "user-10", "feature": "support-chat", "date_from": ""}
        fine_filters = LedgerFilters(project=project.slug, end_user="user-10", feature="support-chat")
        self._time("ledger page, end user and feature, all days (capped totals), bytes", page(fine))
        self._time("  its capped totals", lambda: ledger_page_totals(user=owner, filters=fine_filters).totals.requests)
        # The worst case: filters no row matches (this user never errs) read the whole range, page and totals.
        none = {"project": project.slug, "end_user": "user-10", "status": "error", "date_from": ""}
        self._time("ledger page, a filter matching nothing, all days (worst case), bytes", page(none))
        # One filter that no row matches, over every day: each walked the whole project before it had an index.
        unused_key = key_issue(project=project, name="bench-unused").api_key
        quiet = Project.objects.filter(organization=org).order_by("pk")[1]  # the loader puts every error in the first
        nothing = {
            "a feature": LedgerFilters(feature="no-such-feature"),
            "a model": LedgerFilters(model="no-such-model"),
            "an end user": LedgerFilters(end_user="nobody"),
            "a key": LedgerFilters(key=unused_key.name),
            "errors of a project": LedgerFilters(project=quiet.slug, status="error"),
        }
        for what, filters in nothing.items():
            params = {
                "date_from": "",
                **{name: value for name, value in asdict(filters).items() if isinstance(value, str) and value},
            }
            self._time(f"ledger page, {what} no row has, all days, bytes", page(params), plan=plan(filters))

        def export_first_mb(params: dict[str, str]) -> Callable[[], str]:
            def first_mb() -> str:
                started, size = time.perf_counter(), 0
                response = client.get(reverse("dashboard:ledger-export"), params)
                for chunk in response.streaming_content:  # type: ignore[attr-defined]
                    size += len(chunk)
                    if size >= EXPORT_FIRST_BYTES:
                        break
                response.close()
                return f"{size:,} bytes in {(time.perf_counter() - started) * 1000:,.0f} ms"

            return first_mb

        self._time("export CSV, all rows, first MB", export_first_mb({"date_from": ""}))

        def export() -> str:
            started, count = time.perf_counter(), 0
            response = client.get(
                reverse("dashboard:ledger-export"), {"project": project.slug, "date_from": last_week.isoformat()}
            )
            for chunk in response.streaming_content:  # type: ignore[attr-defined]
                count += chunk.count(b"\n")
            return f"{count - 1:,} rows, {(count - 1) / (time.perf_counter() - started):,.0f} rows/s"

        self._time("export CSV, one project, last 7 days", export)

        budgets = [
            Budget(organization=org, scope=BudgetScope.PROJECT, project=project, name="p", amount_usd=Decimal(1)),
            Budget(organization=org, scope=BudgetScope.ORGANIZATION, name="o", amount_usd=Decimal(1)),
            Budget(organization=org, scope=BudgetScope.FEATURE, feature="search", name="f", amount_usd=Decimal(1)),
        ]
        for budget in budgets:
            spent = LedgerEntry.objects.filter(organization_id=org.pk, created_at__gte=month)
            if budget.project_id:
                spent = spent.filter(project_id=budget.project_id)
            if budget.feature:
                spent = spent.filter(feature=budget.feature)
            self._time(
                f"counter re-seed, {budget.scope} budget, this month ($)",
                lambda budget=budget: budget_spent_usd(budget=budget, since=month),  # type: ignore[misc]
                plan=spent.values("organization_id").order_by(),
            )

    def _clean_up(self, *, org: Organization, owner: User, bulk: bool) -> None:
        if bulk:  # the months hold only the bench's rows (--bulk checked): drop them whole
            for start in self._months(timezone.now()):
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition_name(start))))
                partition_create(start)
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM ledger_ledgerentry WHERE organization_id = %s", [org.pk])
        ProjectHourlyRollup.objects.filter(organization_id=org.pk).delete()
        SliceHourlyRollup.objects.filter(organization_id=org.pk).delete()
        org.delete()
        owner.delete()
        self.stdout.write("cleaned up")
