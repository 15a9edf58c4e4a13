"""`manage.py bench_cache`: semantic lookup latency with a large index, as the gateway runs it.

Loads N entries (random unit vectors, generated in SQL) into a throw-away
project, plus a few hundred into a second, small project that shares the same
HNSW index, then times what a semantic lookup costs the gateway, with the
gateway's own functions: ``lookup_vector`` (embedding the prompt with the local
model) and ``nearest_entry`` (the pgvector query, on a connection configured as
the gateway's pool configures it), over real questions, for both projects.
Loading 100k rows into the HNSW index takes minutes on a small box, so
``--keep`` leaves them for the next run, which reuses them when the count matches.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection

from apps.cache.lookup import NEAREST_SQL, configure_lookup_connection, lookup_vector, nearest_entry
from apps.tenancy.models import Organization, Project
from apps.tenancy.services import organization_create, project_create

QUESTIONS = [
    "How do I reset my password?",
    "Can I get a refund for last month's invoice?",
    "Sync fails on Android, any fix?",
    "How do I add a teammate to my workspace?",
    "What is the difference between the Pro and Team plans?",
    "Where can I download my data export?",
    "Why was my card declined?",
    "How do I change the billing address on my account?",
]
SMALL_ENTRIES = 300
PLANS = (("cache_embedding_hnsw", "HNSW index"), ("cache_lookup", "cache_lookup btree + exact sort"))


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


class Command(BaseCommand):
    help = "Benchmark semantic cache lookups (embedding + pgvector HNSW search) with N entries in the index."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--entries", type=int, default=100_000)
        parser.add_argument("--queries", type=int, default=400)
        parser.add_argument("--ef-search", default="40", help="comma-separated hnsw.ef_search values to compare")
        parser.add_argument("--keep", action="store_true", help="leave the entries for the next run")

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug="bench-cache").first() or organization_create(
            name="Bench cache", slug="bench-cache"
        )
        big, small = (
            Project.objects.filter(slug=slug).first() or project_create(organization=org, name=slug, slug=slug)
            for slug in ("bench-cache", "bench-cache-small")
        )
        self._load(big, options["entries"])
        self._load(small, SMALL_ENTRIES)
        try:
            for ef_search in (int(v) for v in options["ef_search"].split(",")):
                asyncio.run(self._measure(big, small, ef_search, options))
        finally:
            if not options["keep"]:
                with connection.cursor() as cursor:
                    cursor.execute("DELETE FROM llmcache_cacheentry WHERE project_id IN (%s, %s)", [big.id, small.id])

    def _load(self, project: Project, entries: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM llmcache_cacheentry WHERE project_id = %s", [project.id])
            if cursor.fetchone()[0] == entries:
                self.stdout.write(f"{project.slug}: reusing {entries} entries")
                return
            started = time.perf_counter()
            cursor.execute("DELETE FROM llmcache_cacheentry WHERE project_id = %s", [project.id])
            # Random unit vectors; the fingerprint matches the queries so every lookup searches them all.
            cursor.execute(
                """
                INSERT INTO llmcache_cacheentry (project_id, namespace, exact_key, fingerprint, model, prompt_text,
                    embedding, response, prompt_tokens, completion_tokens, cost, created_at, expires_at, hit_count)
                SELECT %s, '', md5(g::text), 'bench', 'gpt-4o-mini', 'entry ' || g,
                       l2_normalize(ARRAY(SELECT random() - 0.5 FROM generate_series(1, 384) WHERE g > 0)::vector(384)),
                       '{}'::jsonb, 10, 20, 0, now(), now() + interval '1 day', 0
                FROM generate_series(1, %s) AS g
                """,
                [project.id, entries],
            )
            cursor.execute("ANALYZE llmcache_cacheentry")
        self.stdout.write(f"{project.slug}: loaded {entries} entries in {time.perf_counter() - started:.1f}s")

    async def _recall(self, conn: Any, project: Project) -> float:
        """How often the lookup finds the true nearest entry when there is a close one, as there is on a hit.

        Random vectors have no near neighbours, which is not what a cache hit looks like, so 50
        real prompts are planted among them and looked up by a rewording; the truth comes from an
        exact scan (no index can serve an ORDER BY on an expression). The planted rows are removed.
        """
        planted = [f"{QUESTIONS[i % len(QUESTIONS)]} (ticket {i})" for i in range(50)]
        for i, text in enumerate(planted):
            await conn.execute(
                "INSERT INTO llmcache_cacheentry (project_id, namespace, exact_key, fingerprint, model, prompt_text, "
                "embedding, response, prompt_tokens, completion_tokens, cost, created_at, expires_at, hit_count) "
                "VALUES (%s, '', %s, 'bench', 'gpt-4o-mini', %s, %s, '{}'::jsonb, 0, 0, 0, now(), "
                "now() + interval '1 hour', 0)",
                [project.id, f"planted-{i}", text, lookup_vector(text)],
            )
        exact_sql = NEAREST_SQL.replace("ORDER BY embedding <=> %(vector)s", "ORDER BY (embedding <=> %(vector)s) + 0")
        found_true = 0
        try:
            for i in range(len(planted)):
                vector = lookup_vector(f"ticket {i}: {QUESTIONS[i % len(QUESTIONS)].lower()}")
                # Every bench question is far inside the embedder's window, so it always gets a vector.
                assert vector is not None
                found = await nearest_entry(conn, vector=vector, project_id=project.id, namespace="",
                                            fingerprint="bench")  # fmt: skip
                params = {"vector": vector, "project": project.id, "namespace": "", "fingerprint": "bench"}
                exact = await (await conn.execute(exact_sql, params)).fetchone()
                found_true += found is not None and exact is not None and found.exact_key == exact[2]
        finally:
            await conn.execute(
                "DELETE FROM llmcache_cacheentry WHERE project_id = %s AND exact_key LIKE 'planted-%%'", [project.id]
            )
        return found_true / len(planted)

    async def _measure(self, big: Project, small: Project, ef_search: int, options: dict[str, Any]) -> None:
        queries = options["queries"]
        loop = asyncio.get_running_loop()
        async with await psycopg.AsyncConnection.connect(settings.DATABASE_URL) as conn:
            await configure_lookup_connection(conn)
            await conn.execute(f"SET hnsw.ef_search = {ef_search}")
            await loop.run_in_executor(None, lookup_vector, "warm up")
            for project, label in ((big, f"{options['entries']} entries"), (small, f"{SMALL_ENTRIES} entries")):
                embed_ms, query_ms, total_ms = [], [], []
                for i in range(queries):
                    t0 = time.perf_counter()
                    # In the gateway the model runs in the default executor too.
                    vector = await loop.run_in_executor(None, lookup_vector, QUESTIONS[i % len(QUESTIONS)] + f" #{i}")
                    t1 = time.perf_counter()
                    assert vector is not None
                    row = await nearest_entry(conn, vector=vector, project_id=project.id, namespace="",
                                              fingerprint="bench")  # fmt: skip
                    t2 = time.perf_counter()
                    assert row is not None, "the bench entries must be found"
                    embed_ms.append((t1 - t0) * 1000)
                    query_ms.append((t2 - t1) * 1000)
                    total_ms.append((t2 - t0) * 1000)
                recall = await self._recall(conn, project)
                params = {"vector": vector, "project": project.id, "namespace": "", "fingerprint": "bench"}
                plan = "\n".join(
                    r[0] for r in await (await conn.execute("EXPLAIN ANALYZE " + NEAREST_SQL, params)).fetchall()
                )
                self.stdout.write(
                    f"\nsemantic lookup in a project with {label} (index holds {options['entries'] + SMALL_ENTRIES}), "
                    f"hnsw.ef_search {ef_search}, iterative scan, {queries} queries:"
                )
                for name, values in (("embed", embed_ms), ("pgvector", query_ms), ("total", total_ms)):
                    self.stdout.write(
                        f"  {name:<9} p50 {statistics.median(values):6.2f} ms   p99 {_pct(values, 99):6.2f} ms"
                    )
                used = next((name for index, name in PLANS if index in plan), "no index")
                self.stdout.write(
                    f"  plan: {used}; {plan.splitlines()[-1].strip()}; "
                    f"true nearest found for close prompts: {recall:.0%}"
                )
                if options["verbosity"] > 1:
                    self.stdout.write(plan)
