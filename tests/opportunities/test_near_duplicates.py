"""Near-duplicate shares per similarity threshold, from the embeddings the semantic cache stored (real
MiniLM vectors from the bundled embedder, in pgvector), per feature and per tenant, bounded by a sample."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.cache.embedding import local_embedder
from apps.cache.models import CacheEntry
from apps.opportunities.selectors import near_duplicates, project_opportunities, replayable_rows
from tests.factories import People, Tenant, entry_make, login

pytestmark = pytest.mark.django_db

# (prompt, its exact key): the ledger holds the key, the cache entry the prompt's embedding.
# Cosine with the bundled model: 2 vs 1 0.94; 4 vs 3 0.80; 7 vs 1 0.99; 6 repeats 1 exactly.
TRAFFIC = [
    ("How do I reset my password?", "a"),
    ("I forgot my password, how can I reset it?", "b"),
    ("Sync fails on iOS, any fix?", "c"),
    ("Sync fails on Android, any fix?", "d"),
    ("What is the weather like on Mars?", "e"),
    ("How do I reset my password?", "a"),
    ("How can I reset my password?", "f"),
]


def _traffic(tenant: Tenant, feature: str = "faq", traffic: list[tuple[str, str]] = TRAFFIC) -> None:
    texts = {key: text for text, key in traffic}
    vectors = dict(zip(texts, local_embedder().embed(list(texts.values())), strict=True))
    for key, vector in vectors.items():
        CacheEntry.objects.get_or_create(
            project=tenant.project, exact_key=key * 64,
            defaults={"fingerprint": "f", "model": "gpt-4o-mini", "prompt_text": texts[key], "embedding": vector,
                      "response": {}, "expires_at": timezone.now() + dt.timedelta(hours=1)},
        )  # fmt: skip
    start = timezone.now() - dt.timedelta(hours=1)
    for i, (_text, key) in enumerate(traffic):
        entry_make(tenant, feature=feature, cache_key=key * 64, embedding_key=key * 64, cost=Decimal("0.01"),
                   created_at=start + dt.timedelta(minutes=i))  # fmt: skip


def _shares(tenant: Tenant, **kwargs: int) -> dict[str, dict[float, int]]:
    now = timezone.now()
    rows = replayable_rows(project=tenant.project, since=now - dt.timedelta(days=1), until=now)
    return {
        feature: {t["threshold"]: t["requests"] for t in near.as_json()["thresholds"]}
        for feature, near in near_duplicates(project=tenant.project, rows=rows, **kwargs).items()
    }


def test_each_threshold_counts_the_requests_with_an_earlier_near_duplicate(people: People) -> None:
    tenant = people.tenant
    _traffic(tenant)
    # Served by the semantic cache: its own prompt's similarity is unknown, so it is not in the sample.
    entry_make(tenant, feature="faq", cache_key="g" * 64, embedding_key="a" * 64, cache_hit="semantic")
    [faq] = _shares(tenant).values()
    # 7 (0.99) at every threshold; 2 (0.94) from 0.90 down; 4 (0.80) only at the loosest; never 6, an exact repeat.
    assert faq[0.95] == 1 and faq[0.90] == faq[0.85] == 2 and faq[0.80] in (2, 3)

    report = project_opportunities(project=tenant.project, days=1)
    [profile] = report.features
    near = profile["near_duplicates"]
    assert near["sample_size"] == near["rows_with_embedding"] == 7
    assert {t["threshold"]: t["share"] for t in near["thresholds"]}[0.9] == round(2 / 7, 4)
    [semantic] = [o for o in report.opportunities if o.lever == "semantic_cache"]
    assert semantic.evidence["threshold"] == 0.95 and semantic.predicted_savings_usd == Decimal("0.01")
    assert semantic.evidence["sample_size"] == 7


def test_the_sample_is_bounded_and_scaled_to_the_feature(people: People) -> None:
    tenant = people.tenant
    _traffic(tenant)
    now = timezone.now()
    rows = replayable_rows(project=tenant.project, since=now - dt.timedelta(days=1), until=now)
    near = near_duplicates(project=tenant.project, rows=rows, sample=3)["faq"]
    # The latest three (5, 6, 7): 7 is 0.99 from 6, another prompt's entry ("a"), so it counts.
    assert (near.sample_size, near.rows_with_embedding) == (3, 7)
    assert near.by_threshold[0.95] == (1, Decimal("0.01"))


def test_features_and_tenants_are_never_compared_with_each_other(people: People) -> None:
    tenant, other = people.tenant, people.other
    # Another feature of the same project asks what faq asked: not a near duplicate of faq's requests.
    _traffic(tenant, traffic=TRAFFIC[:1])
    _traffic(tenant, feature="support", traffic=[("How can I reset my password?", "f")])
    assert _shares(tenant) == {
        "faq": {0.8: 0, 0.85: 0, 0.9: 0, 0.95: 0},
        "support": {0.8: 0, 0.85: 0, 0.9: 0, 0.95: 0},
    }
    # Another tenant stores the same keys with near-identical prompts: ours still read our own entries.
    _traffic(other, traffic=[("How do I reset my password?", "a"), ("How do I reset my password?!", "b")])
    entry_make(tenant, feature="faq", cache_key="b" * 64, embedding_key="b" * 64)  # no entry of ours: left out
    assert _shares(tenant)["faq"] == {0.8: 0, 0.85: 0, 0.9: 0, 0.95: 0}
    assert _shares(other)["faq"][0.95] == 1


def test_the_page_and_api_show_the_shares_with_their_sample_size(people: People) -> None:
    _traffic(people.tenant)
    client = login(Client(), people.member)
    slug = people.tenant.project.slug
    [profile] = client.get(f"/api/projects/{slug}/opportunities/?days=1").json()["features"]
    assert profile["near_duplicates"]["sample_size"] == 7
    page = client.get(f"/projects/{slug}/opportunities/?days=1")
    assert page.status_code == 200 and b"(sample 7 of 7)" in page.content
    outsider = login(Client(), people.outsider)
    assert outsider.get(f"/api/projects/{slug}/opportunities/").status_code == 404


def test_many_features_cost_as_many_queries_as_one(people: People) -> None:
    tenant = people.tenant
    _traffic(tenant)
    now = timezone.now()
    rows = replayable_rows(project=tenant.project, since=now - dt.timedelta(days=1), until=now)
    with CaptureQueriesContext(connection) as one:
        near_duplicates(project=tenant.project, rows=rows)
    for feature in ("support", "billing", "search"):
        _traffic(tenant, feature=feature, traffic=TRAFFIC[:3])
    with CaptureQueriesContext(connection) as four:
        found = near_duplicates(project=tenant.project, rows=rows)
    assert len(found) == 4 and found["support"].sample_size == 3
    assert len(four.captured_queries) == len(one.captured_queries) == 3
