"""The response cache through a live gateway and the official SDK."""

from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest
import redis
from django.conf import settings

from apps.cache.models import CacheEntry, CachePolicy
from apps.cache.services import cache_evict, cache_ingest_batch
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ledger_row, sdk, wait_policy

pytestmark = pytest.mark.live


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You answer support questions."}, {"role": "user", "content": text}]


def _policy(tenant: Tenant, gateway: str, **fields: object) -> CachePolicy:
    policy = CachePolicy.objects.create(project=tenant.project, **fields)
    wait_policy(gateway, tenant.key.plaintext)
    return policy


def _ingest() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    while cache_ingest_batch(client=client, consumer="tests", block_ms=0):
        pass


def _chat(client: openai.OpenAI, text: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=_ask(text), **kwargs)


def test_exact_hit_is_free_and_recorded_as_saving(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway)
    client = sdk(gateway, tenant.key.plaintext)
    first = _chat(client, "How do I export my invoices?")
    assert first.headers["x-cache"] == "miss"
    second = _chat(client, "How do I export my invoices?")
    assert second.headers["x-cache"] == "hit-exact"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content

    paid, free = ledger_row(first.headers["x-request-id"]), ledger_row(second.headers["x-request-id"])
    assert paid.cost > 0 and paid.cache_hit == ""
    assert free.cost == 0 and free.cache_hit == "exact" and free.route == "cache:exact"
    assert free.counterfactual_cost == paid.cost, "the saving is what the provider would have charged"
    _ingest()
    assert CacheEntry.objects.get(project=tenant.project).hit_count == 1


def test_cache_control_and_deny_list_bypass(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway, deny_patterns=["what is today", "re:\\bnews\\b"])
    client = sdk(gateway, tenant.key.plaintext)
    _chat(client, "Reset my password")
    assert (
        _chat(client, "Reset my password", extra_headers={"Cache-Control": "no-cache"}).headers["x-cache"] == "bypass"
    )
    _chat(client, "Close my account", extra_headers={"Cache-Control": "no-store"})
    assert _chat(client, "Close my account").headers["x-cache"] == "miss", "no-store answers are not kept"
    for text in ("What is today's exchange rate?", "Any news about the outage?"):
        _chat(client, text)
        assert _chat(client, text).headers["x-cache"] == "bypass"


def test_identical_prompt_never_crosses_tenants(gateway: str, tenant: Tenant, upstream: str) -> None:
    other = tenant_make(upstream_url=upstream)
    _policy(tenant, gateway)
    CachePolicy.objects.create(project=other.project)
    wait_policy(gateway, other.key.plaintext)
    ours, theirs = sdk(gateway, tenant.key.plaintext), sdk(gateway, other.key.plaintext)
    _chat(ours, "What does the Pro plan cost?")
    assert _chat(ours, "What does the Pro plan cost?").headers["x-cache"] == "hit-exact"
    assert _chat(theirs, "What does the Pro plan cost?").headers["x-cache"] == "miss"
    # Namespaces split one project's cache too.
    assert (
        _chat(ours, "What does the Pro plan cost?", extra_headers={"X-Cache-Namespace": "eu"}).headers["x-cache"]
        == "miss"
    )


def test_ttl_expiry(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway, ttl_seconds=1)
    client = sdk(gateway, tenant.key.plaintext)
    _chat(client, "Where is my order?")
    assert _chat(client, "Where is my order?").headers["x-cache"] == "hit-exact"
    time.sleep(1.3)
    assert _chat(client, "Where is my order?").headers["x-cache"] == "miss"


def test_stream_is_stored_and_served_as_the_same_text(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway)
    client = sdk(gateway, tenant.key.plaintext)
    raw = _chat(client, "Explain the refund policy", stream=True)
    original = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    replay = _chat(client, "Explain the refund policy", stream=True, stream_options={"include_usage": True})
    assert replay.headers["x-cache"] == "hit-exact"
    chunks = list(replay.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == original
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole = _chat(client, "Explain the refund policy").parse()
    assert whole.choices[0].message.content == original


def test_errors_and_truncated_streams_are_not_cached(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway)
    client = sdk(gateway, tenant.key.plaintext)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=_ask("Broken [[sim:500]]"))
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(model="gpt-4o-mini", messages=_ask("Cut [[sim:fail_after=2]]"), stream=True)
        )
    _ingest()
    assert not CacheEntry.objects.filter(project=tenant.project).exists()
    assert _chat(client, "Cut [[sim:fail_after=2]]").headers["x-cache"] == "miss"


def test_eviction_keeps_the_most_used_entries(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway, max_entries=2)
    client = sdk(gateway, tenant.key.plaintext)
    for text in ("alpha question", "beta question", "gamma question"):
        _chat(client, text)
    for _ in range(3):
        _chat(client, "alpha question")
    _chat(client, "gamma question")
    _ingest()
    assert cache_evict(client=redis.Redis.from_url(settings.REDIS_URL)) == 1
    kept = " | ".join(CacheEntry.objects.values_list("prompt_text", flat=True))
    assert "alpha question" in kept and "gamma question" in kept and "beta question" not in kept
    assert _chat(client, "beta question").headers["x-cache"] == "miss", "the least used entry was evicted"
    assert _chat(client, "alpha question").headers["x-cache"] == "hit-exact"


def test_semantic_hit_on_paraphrase_not_on_other_platform(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway, semantic_enabled=True, similarity_threshold=Decimal("0.90"))
    client = sdk(gateway, tenant.key.plaintext)
    first = _chat(client, "How do I reset my password?")
    _ingest()
    paraphrase = _chat(client, "I forgot my password, how can I reset it?")
    assert paraphrase.headers["x-cache"] == "hit-semantic"
    assert float(paraphrase.headers["x-cache-similarity"]) >= 0.90
    assert paraphrase.parse().choices[0].message.content == first.parse().choices[0].message.content
    stored, served = ledger_row(first.headers["x-request-id"]), ledger_row(paraphrase.headers["x-request-id"])
    assert served.cache_hit == "semantic"
    # The ledger names the entry whose embedding answered: the one the first request stored under its key.
    assert stored.embedding_key == stored.cache_key != ""
    assert served.embedding_key == stored.cache_key != served.cache_key

    _chat(client, "Sync fails on iOS, any fix?")
    _ingest()
    assert _chat(client, "Sync fails on Android, any fix?").headers["x-cache"] == "miss"
    # Different system prompt: a different compatibility fingerprint, never served across.
    other_system = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "How do I reset my password?"},
    ]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=other_system)
    assert raw.headers["x-cache"] == "miss"


def test_semantic_hit_needs_the_same_numbers_and_names(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway, semantic_enabled=True, similarity_threshold=Decimal("0.80"))
    client = sdk(gateway, tenant.key.plaintext)
    _chat(client, "Find me a plane ticket from Paris to Berlin for 21 April")
    _ingest()
    # Cosine 0.96 with the stored prompt, far above the threshold; only the month differs.
    assert _chat(client, "Find me a plane ticket from Paris to Berlin for 21 October").headers["x-cache"] == "miss"
    hit = _chat(client, "Find me a plane ticket from Paris to Berlin on 21 April, please")
    assert hit.headers["x-cache"] == "hit-semantic"


def test_semantic_hit_needs_the_same_alternative_of_opposites(gateway: str, tenant: Tenant) -> None:
    # The threshold calibrate_cache recommends from the built-in pairs file.
    _policy(tenant, gateway, semantic_enabled=True, similarity_threshold=Decimal("0.82"))
    client = sdk(gateway, tenant.key.plaintext)
    _chat(client, "What's the price of the monthly subscription?")
    _ingest()
    assert _chat(client, "What's the price of the yearly subscription?").headers["x-cache"] == "miss"
    assert _chat(client, "What does the monthly subscription cost?").headers["x-cache"] == "hit-semantic"


def test_prompt_longer_than_the_embedder_window_gets_exact_caching_only(gateway: str, tenant: Tenant) -> None:
    _policy(tenant, gateway, semantic_enabled=True, similarity_threshold=Decimal("0.80"))
    client = sdk(gateway, tenant.key.plaintext)
    document = "Summarise this contract clause by clause. " + "The supplier shall deliver the goods. " * 60
    first = document + "Answer in English."
    _chat(client, first)
    _ingest()
    entry = CacheEntry.objects.get(project=tenant.project)
    assert entry.embedding is None, "text past the 256-token window is not indexed"
    # Identical for the first 256 tokens, so its embedding would score 1.0: it must not be served.
    assert _chat(client, document + "Answer in German.").headers["x-cache"] == "miss"
    assert _chat(client, first).headers["x-cache"] == "hit-exact"
