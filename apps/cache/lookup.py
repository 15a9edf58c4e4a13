"""The semantic cache's lookup: embed the prompt, ask pgvector for the nearest stored prompt.

The one place the data plane reads Postgres, with psycopg and no ORM, only for
projects that turned semantic caching on; ``manage.py bench_cache`` times the
same statement. Always filtered by tenant, namespace and fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def lookup_vector(text: str) -> np.ndarray | None:
    """The embedding a semantic lookup searches with, or None when ``text`` is too long for one.

    Blocking (the model runs here, ~3 ms for a short question): call it off the event loop.
    Text longer than the embedder's 256-token window would be embedded without its end, so
    two long prompts that differ only there would score 1.0; such prompts get exact caching
    only, and the ingest worker does not index them either (see cache_ingest_batch).
    """
    # Imported on first use: onnxruntime and the tokenizer weigh on every process that imports this
    # module, and most gateways never embed (semantic caching is off by default).
    from apps.cache.embedding import local_embedder

    embedder = local_embedder()
    return embedder.embed([text])[0] if embedder.fits(text) else None


# Always filtered by tenant, namespace and fingerprint. The HNSW index is shared by every
# project, so the search must not stop at the first ef_search neighbours when they all belong
# to other projects: hnsw.iterative_scan (set per connection below) keeps scanning until a
# row passes the filter (or hnsw.max_scan_tuples is spent, a miss).
NEAREST_SQL = (
    "SELECT response, 1 - (embedding <=> %(vector)s) AS similarity, exact_key, prompt_text FROM llmcache_cacheentry "
    "WHERE project_id = %(project)s AND namespace = %(namespace)s AND fingerprint = %(fingerprint)s "
    "AND expires_at > now() AND embedding IS NOT NULL ORDER BY embedding <=> %(vector)s LIMIT 1"
)


# A semantic-cache trial (apps/opportunities) asks for the nearest entry of another prompt: the request's
# own answer may already be indexed, and an identical prompt is the exact cache's business.
NEAREST_OTHER_SQL = NEAREST_SQL.replace("AND expires_at", "AND exact_key <> %(exclude)s AND expires_at")


async def configure_lookup_connection(conn: Any) -> None:
    """Binary vectors (no 384-number text literal each way), iterative HNSW scans, autocommit
    (one statement per lookup: no BEGIN, and no ROLLBACK when the pool takes it back), and a plan
    per project: psycopg prepares the statement after a few runs, and Postgres' generic plan for
    it then takes the HNSW index for every project; for a project with a few hundred entries in
    an index of 100k, that walks the graph past other tenants' rows (~50 ms) where the btree on
    (project, namespace, fingerprint) and an exact sort take under 1 ms (bench_cache shows both)."""
    from pgvector.psycopg import register_vector_async

    await conn.set_autocommit(True)
    await register_vector_async(conn)
    await conn.execute("SET hnsw.iterative_scan = strict_order")
    await conn.execute("SET plan_cache_mode = force_custom_plan")


@dataclass(frozen=True, slots=True)
class Nearest:
    response: dict[str, Any]
    similarity: float
    exact_key: str
    prompt_text: str


async def nearest_entry(
    conn: Any, *, vector: np.ndarray, project_id: int, namespace: str, fingerprint: str, exclude: str | None = None
) -> Nearest | None:
    """The closest live entry of this project, namespace and fingerprint (not the one keyed ``exclude``)."""
    params = {"vector": vector, "project": project_id, "namespace": namespace, "fingerprint": fingerprint}
    sql = NEAREST_SQL if exclude is None else NEAREST_OTHER_SQL
    row = await (await conn.execute(sql, {**params, "exclude": exclude} if exclude is not None else params)).fetchone()
    return None if row is None else Nearest(row[0], float(row[1]), row[2], row[3])
