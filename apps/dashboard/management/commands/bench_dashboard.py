"""Time the overview page over a large ledger: load rows in SQL, roll up, request the page, clean up.

    python manage.py bench_dashboard --rows 1000000

Rows go to a throwaway organisation and project (deleted afterwards, with their roll-ups), spread
over the last seven days, so the default overview range covers all of them.
"""

from __future__ import annotations

import secrets
import statistics
import time
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.keys.services import key_issue
from apps.ledger.models import HourlyRollup, ProjectHourlyRollup, SliceHourlyRollup
from apps.ledger.services import rollups_refresh
from apps.tenancy.models import Organization
from apps.tenancy.services import organization_create, project_create

# One INSERT … SELECT over generate_series: no Python per row. The mix: 6 features each on its usual
# model (4 models), 40 end users, ~10% cache hits, ~14% routed, 2% batch, 1% errors, a third streamed.
# Rows g in [first, last] of ``rows`` are spread evenly over the ``span`` seconds before now, and
# round-robin over the ``projects`` (ids), g = 1 the newest; bench_ledger loads in chunks of one range
# each, or (--bulk) one month at a time into a bare table, with LOAD_VALUES.
LOAD_COLUMNS = """
    request_id, created_at, ingested_at, source, organization_id, project_id, api_key_id, provider_id,
    endpoint, feature, end_user, requested_model, served_model, prompt_tokens, cached_tokens,
    completion_tokens, usage_estimated, cost, counterfactual_cost, latency_ms, ttft_ms, status_code,
    error_code, streamed, cache_hit, route, possibly_billed, request_count, cache_write_tokens,
    cache_key, prefix_key, prefix_tokens, embedding_key, turns, reasoning_tokens, service_tier
"""
LOAD_VALUES = """
    %(tag)s || '-' || g,
    %(now)s::timestamptz - make_interval(secs => (g * %(span)s) / %(rows)s) AS created_at,
    %(now)s::timestamptz, 'gateway', %(org)s,
    (%(projects)s::bigint[])[1 + g %% cardinality(%(projects)s::bigint[])], %(key)s, NULL::bigint,
    CASE WHEN g %% 50 = 0 THEN 'batch' ELSE 'chat.completions' END,
    (ARRAY['support-chat', 'search', 'summaries', 'tagging', 'agent', 'eval'])[1 + g %% 6],
    'user-' || (g %% 40),
    'gpt-4o',
    (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-sonnet', 'llama-3-70b'])[1 + (g %% 6) %% 4],
    100 + g %% 900, 0, 20 + g %% 300, false,
    CASE WHEN g %% 10 = 0 THEN 0 ELSE (100 + g %% 900) * 0.0000025 + (20 + g %% 300) * 0.00001 END,
    (100 + g %% 900) * 0.0000025 + (20 + g %% 300) * 0.00001,
    CASE WHEN g %% 10 = 0 THEN 3 + g %% 20 ELSE 80 + (g * 7919) %% 2500 END,
    CASE WHEN g %% 3 = 0 THEN 40 + (g * 104729) %% 700 END,
    CASE WHEN g %% 100 = 0 THEN 502 ELSE 200 END,
    '', g %% 3 = 0,
    CASE WHEN g %% 10 = 0 THEN 'exact' ELSE '' END,
    CASE WHEN g %% 7 = 0 THEN 'route:cheap-first' WHEN g %% 29 = 0 THEN 'cascade:mini-then-4o' ELSE '' END,
    false, 1, 0,
    '', '', 0, '', 0, 0, 'standard'
"""
LOAD_SQL = (
    f"INSERT INTO ledger_ledgerentry ({LOAD_COLUMNS}) SELECT {LOAD_VALUES}"  # noqa: S608 (constants, no input)
    " FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g"
)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Command(BaseCommand):
    help = "Load N ledger rows into a throwaway project, roll them up and time the overview page."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--runs", type=int, default=20)

    def handle(self, *args: Any, rows: int, runs: int, **options: Any) -> None:
        tag = f"bench-{secrets.token_hex(4)}"
        owner = User.objects.create_user(username=tag, password=secrets.token_urlsafe(16))
        org = organization_create(name=tag, owner=owner)
        try:
            project = project_create(organization=org, name=f"{tag} project", slug=f"{tag}-project")
            key = key_issue(project=project, name="bench").api_key

            started = time.perf_counter()
            with transaction.atomic(), connection.cursor() as cursor:
                params: dict[str, Any] = {
                    "tag": tag,
                    "rows": rows,
                    "first": 1,
                    "last": rows,
                    "span": 604799,
                    "org": org.pk,
                    "projects": [project.pk],
                    "key": key.pk,
                    "now": timezone.now(),
                }
                cursor.execute(LOAD_SQL, params)
                cursor.execute("ANALYZE ledger_ledgerentry")
            self.stdout.write(f"loaded {rows:,} ledger rows in {time.perf_counter() - started:.1f} s")

            started = time.perf_counter()
            hours = rollups_refresh()
            counts = ", ".join(
                f"{model.objects.filter(project=project).count():,} {model.__name__}"
                for model in (HourlyRollup, ProjectHourlyRollup, SliceHourlyRollup)
            )
            self.stdout.write(f"rolled up {hours} hours into {counts} rows in {time.perf_counter() - started:.1f} s")

            client = Client(SERVER_NAME="localhost")
            client.force_login(owner)
            for label, scope in (("project", f"project:{project.slug}"), ("organisation", f"org:{org.slug}")):
                timings = []
                for _ in range(runs + 1):
                    started = time.perf_counter()
                    response = client.get(reverse("dashboard:overview"), {"scope": scope})
                    timings.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.status_code
                timings = timings[1:]  # the first request warms caches and connections
                self.stdout.write(
                    f"overview ({label}, 7 days, {runs} runs): p50 {statistics.median(timings):.0f} ms, "
                    f"p95 {_percentile(timings, 0.95):.0f} ms"
                )
        finally:
            self._clean_up(org_id=org.pk, owner=owner)

    def _clean_up(self, *, org_id: int, owner: User) -> None:
        """Remove everything the run made. Ledger rows and roll-ups have no FK constraint, so delete them first."""
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM ledger_ledgerentry WHERE organization_id = %s", [org_id])
            for model in (HourlyRollup, ProjectHourlyRollup, SliceHourlyRollup):
                model.objects.filter(organization_id=org_id).delete()
        Organization.objects.filter(pk=org_id).delete()
        owner.delete()
        self.stdout.write("cleaned up")
