"""`manage.py bench_cache`: semantic lookup latency with a large index, as the gateway runs it.

Loads N entries (random unit vectors, generated in SQL) into a throw-away
project, builds the HNSW index, then times what a semantic lookup costs the
gateway: embedding the prompt with the local model plus the pgvector query,
over real questions. Cleans up after itself.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import connection

from apps.cache.embedding import local_embedder
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


class Command(BaseCommand):
    help = "Benchmark semantic cache lookups (embedding + pgvector HNSW search) with N entries in the index."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--entries", type=int, default=100_000)
        parser.add_argument("--queries", type=int, default=400)

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug="bench-cache").first() or organization_create(
            name="Bench cache", slug="bench-cache"
        )
        project = Project.objects.filter(slug="bench-cache").first() or project_create(
            organization=org, name="Bench cache", slug="bench-cache"
        )
        started = time.perf_counter()
        with connection.cursor() as cursor:
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
                [project.id, options["entries"]],
            )
            cursor.execute("ANALYZE llmcache_cacheentry")
        self.stdout.write(f"loaded {options['entries']} entries in {time.perf_counter() - started:.1f}s")

        embedder = local_embedder()
        embedder.embed(["warm up"])
        embed_ms, query_ms, total_ms = [], [], []
        sql = (
            "SELECT response, 1 - (embedding <=> %s::vector) AS similarity FROM llmcache_cacheentry "
            "WHERE project_id = %s AND namespace = '' AND fingerprint = 'bench' AND expires_at > now() "
            "AND embedding IS NOT NULL ORDER BY embedding <=> %s::vector LIMIT 1"
        )
        with psycopg.connect(settings.DATABASE_URL) as conn:
            for i in range(options["queries"]):
                t0 = time.perf_counter()
                vector = embedder.embed([QUESTIONS[i % len(QUESTIONS)] + f" #{i}"])[0]
                t1 = time.perf_counter()
                literal = "[" + ",".join(f"{v:.6f}" for v in vector) + "]"
                row = conn.execute(sql, [literal, project.id, literal]).fetchone()
                t2 = time.perf_counter()
                assert row is not None
                embed_ms.append((t1 - t0) * 1000)
                query_ms.append((t2 - t1) * 1000)
                total_ms.append((t2 - t0) * 1000)
            plan = "\n".join(
                r[0] for r in conn.execute("EXPLAIN " + sql, ["[" + ",".join(["0"] * 384) + "]", project.id,
                                                              "[" + ",".join(["0"] * 384) + "]"]).fetchall()
            )  # fmt: skip

        def pct(values: list[float], q: float) -> float:
            return statistics.quantiles(values, n=100)[int(q) - 1]

        self.stdout.write(f"\nsemantic lookup with {options['entries']} entries, {options['queries']} queries:")
        for name, values in (("embed", embed_ms), ("pgvector", query_ms), ("total", total_ms)):
            self.stdout.write(f"  {name:<9} p50 {statistics.median(values):6.2f} ms   p99 {pct(values, 99):6.2f} ms")
        self.stdout.write("index used: " + ("yes (HNSW)" if "cache_embedding_hnsw" in plan else "NO\n" + plan))
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM llmcache_cacheentry WHERE project_id = %s", [project.id])
