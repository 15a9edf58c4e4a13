"""A semantic-cache trial in shadow through a live gateway and the official SDK: the app gets the fresh
answer, the comparison with the cached one is recorded off the response path, and nothing the trial does
is billed to the app or counted against its budget."""

from __future__ import annotations

from decimal import Decimal

import pytest
import redis
from django.conf import settings

from apps.cache.models import CacheEntry
from apps.cache.services import cache_ingest_batch
from apps.ledger.models import LedgerEntry
from apps.opportunities.models import Trial, TrialSample
from apps.opportunities.selectors import Opportunity
from apps.opportunities.services import trial_ingest_batch, trial_start
from apps.opportunities.trial_selectors import trial_measured
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ingest_all, ledger_row, sdk, wait_policy
from tests.live import wait_until

pytestmark = pytest.mark.live

SYSTEM = {"role": "system", "content": "You answer billing questions."}


def _ask(client: object, text: str) -> tuple[str, dict[str, str], str]:
    raw = client.chat.completions.with_raw_response.create(  # type: ignore[attr-defined]
        model="gpt-4o-mini", messages=[SYSTEM, {"role": "user", "content": text}]
    )
    return raw.parse().choices[0].message.content, dict(raw.headers), raw.headers["x-request-id"]


def _ingest_cache(client: redis.Redis) -> int:
    stored = 0
    while handled := cache_ingest_batch(client=client, consumer="tests", block_ms=0):
        stored += handled
    return stored


def _samples(client: redis.Redis, trial: Trial, n: int) -> list[TrialSample]:
    def stored() -> list[TrialSample] | None:
        trial_ingest_batch(client=client, consumer="tests")
        found = list(TrialSample.objects.filter(trial=trial).order_by("id"))
        return found if len(found) >= n else None

    return wait_until(stored, timeout=10)


def _trial(tenant: Tenant) -> Trial:
    opportunity = Opportunity(id="semantic_cache-0000000000000001", lever="semantic_cache", feature="",
                              predicted_savings_usd=Decimal("0.5"), share=0.3)  # fmt: skip
    return trial_start(project=tenant.project, opportunity=opportunity, quality_target=Decimal("0.99"),
                       daily_cap_usd=Decimal("1"), min_samples=5, window_days=7)  # fmt: skip


def test_shadow_semantic_trial_returns_the_fresh_answer_and_records_the_comparison(
    gateway: str, tenant: Tenant
) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    trial = _trial(tenant)
    wait_policy(gateway, tenant.key.plaintext)
    app = sdk(gateway, tenant.key.plaintext)

    first, headers, _ = _ask(app, "How much is the monthly plan? [[sim:answer=The monthly plan is ten dollars.]]")
    assert "x-cache" not in headers, "a trial alone shows the app no cache"
    wait_until(lambda: (_ingest_cache(client), CacheEntry.objects.filter(project=tenant.project).exists())[1])
    assert CacheEntry.objects.get(project=tenant.project).embedding is not None, "indexed for the trial"

    # A paraphrase with the same answer, then a look-alike sibling whose right answer differs.
    same, _, same_id = _ask(app, "What does the monthly plan cost? [[sim:answer=The monthly plan is ten dollars.]]")
    other, headers, other_id = _ask(app, "How much is the yearly plan? [[sim:answer=The yearly plan is a hundred.]]")
    assert other == "The yearly plan is a hundred.", "the app gets the fresh answer, never the cached one"
    assert same == first and "x-cache" not in headers

    samples = {s.request_id: s for s in _samples(client, trial, 2)}
    agreeing, disagreeing = samples[same_id], samples[other_id]
    assert agreeing.normalized_match and agreeing.prompt_similarity >= 0.8 and agreeing.prompt_text == ""
    assert not disagreeing.normalized_match and "yearly" in disagreeing.prompt_text
    assert "monthly" in disagreeing.cached_prompt_text, "a disagreement keeps both prompts to learn from"
    measured = trial_measured(trial=trial)
    assert measured.samples == 1 and not measured.cleared, "1 of 2 would-be hits agree, on fewer than 5"
    assert measured.spend_usd == 0, "comparing with the cache calls no model"

    # Nothing the trial did was billed: one paid ledger row per request the app made, and no other.
    ingest_all()
    rows = list(LedgerEntry.objects.filter(project=tenant.project))
    assert len(rows) == 3 and all(r.cache_hit == "" and r.cost > 0 for r in rows)
    assert ledger_row(other_id).embedding_key != "", "the embedding id the trial computed is on the ledger"


def test_another_projects_trial_never_compares_with_this_projects_cache(
    gateway: str, tenant: Tenant, upstream: str
) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    other = tenant_make(upstream_url=upstream)
    trial = _trial(other)
    wait_policy(gateway, other.key.plaintext)
    _ask(sdk(gateway, tenant.key.plaintext), "How much is the monthly plan? [[sim:answer=ten]]")
    _ask(sdk(gateway, other.key.plaintext), "How much is the monthly plan? [[sim:answer=eleven]]")
    _ingest_cache(client)
    _ask(sdk(gateway, other.key.plaintext), "What does the monthly plan cost? [[sim:answer=eleven]]")
    [sample] = _samples(client, trial, 1)
    assert sample.normalized_match, "compared with its own project's entry (eleven), not the other's (ten)"
    assert not CacheEntry.objects.filter(project=tenant.project).exists(), "no trial there: nothing indexed"
