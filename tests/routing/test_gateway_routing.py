"""Routing through a live gateway, the unmodified SDK and the simulated upstream."""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis as redis_lib
from django.conf import settings

from apps.core import names
from apps.ledger.models import LedgerEntry
from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from apps.routing.models import ShadowComparison
from apps.routing.services import shadow_ingest_batch
from tests.factories import Tenant
from tests.gateway.helpers import ingest_all, ledger_row, sdk, wait_policy
from tests.live import wait_until
from tests.routing.helpers import ask, rule_make

pytestmark = pytest.mark.django_db(transaction=True)


def _chat(gateway: str, tenant: Tenant, text: str, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "gpt-4o"), messages=ask(text), **kwargs
    )
    return raw.parse(), dict(raw.headers)


def test_first_matching_rule_decides_and_the_reason_reaches_header_and_ledger(gateway: str, tenant: Tenant) -> None:
    support = rule_make(tenant, name="support to mini", match_features=["support"], primaries="gpt-4o-mini")
    refunds = rule_make(tenant, name="refunds", match_regex=r"(?i)\brefund", primaries="gpt-4.1-nano")
    rule_make(tenant, name="long prompts", min_prompt_tokens=200, primaries="gpt-4.1")
    rule_make(tenant, name="tools", match_tools="with", primaries="gpt-5-mini")
    wait_policy(gateway, tenant.key.plaintext)

    answer, headers = _chat(gateway, tenant, "Where is my refund?", extra_headers={"X-Feature": "support"})
    assert answer.model == "gpt-4o-mini"  # both first rules match; the first one wins
    assert headers["x-route"] == f"route:{support.id}:route"

    answer, headers = _chat(gateway, tenant, "Where is my refund?")
    assert (answer.model, headers["x-route"]) == ("gpt-4.1-nano", f"route:{refunds.id}:route")

    answer, headers = _chat(gateway, tenant, "word " * 300)
    assert answer.model == "gpt-4.1"

    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    answer, headers = _chat(gateway, tenant, "hello", tools=[tool])
    assert answer.model == "gpt-5-mini"

    answer, headers = _chat(gateway, tenant, "hello")
    assert (answer.model, headers["x-route"]) == ("gpt-4o", "direct")

    row = ledger_row(headers["x-request-id"])
    assert row.route == "direct"
    answer, headers = _chat(gateway, tenant, "refund please")
    row = ledger_row(headers["x-request-id"])
    assert (row.route, row.requested_model, row.served_model) == (
        f"route:{refunds.id}:route",
        "gpt-4o",
        "gpt-4.1-nano",
    )
    # Served on the cheaper model: the saving is what gpt-4o would have cost minus what was paid.
    assert row.counterfactual_cost > row.cost > 0


def test_inactive_rules_and_other_keys_do_not_match(gateway: str, tenant: Tenant) -> None:
    rule_make(tenant, name="off", primaries="gpt-4o-mini", is_active=False)
    from apps.keys.services import key_issue

    other_key = key_issue(project=tenant.project, name="second")
    rule_make(tenant, name="second key only", match_api_key=other_key.api_key, primaries="gpt-4.1-nano")
    wait_policy(gateway, tenant.key.plaintext)
    answer, _ = _chat(gateway, tenant, "hi")
    assert answer.model == "gpt-4o"
    second = sdk(gateway, other_key.plaintext).chat.completions.create(model="gpt-4o", messages=ask("hi"))
    assert second.model == "gpt-4.1-nano"


def test_canary_split_follows_the_weights(gateway: str, tenant: Tenant) -> None:
    rule = rule_make(tenant, name="canary", action="split", primaries="gpt-4o 90\ngpt-4o-mini 10")
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    served: Counter[str] = Counter()
    for i in range(2000):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=ask(f"q{i}"))
        served[raw.parse().model] += 1
        assert raw.headers["x-route"] == f"route:{rule.id}:split:{raw.parse().model}"
    assert abs(served["gpt-4o-mini"] / 2000 - 0.10) <= 0.03
    assert served["gpt-4o"] + served["gpt-4o-mini"] == 2000


@pytest.mark.parametrize(
    ("confidence", "escalated"),
    [("0.5", True), ("0.69", True), ("0.7", False), ("0.95", False)],
)
def test_cascade_escalates_exactly_below_the_threshold(
    gateway: str, tenant: Tenant, confidence: str, escalated: bool
) -> None:
    rule = rule_make(
        tenant, name="tiers", action="cascade", primaries="gpt-4o-mini\ngpt-4o", cascade_threshold=Decimal("0.7")
    )
    wait_policy(gateway, tenant.key.plaintext)
    text = f"Classify this ticket [[sim:gpt-4o-mini/confidence={confidence}]]"
    answer, headers = _chat(gateway, tenant, text)
    assert answer.model == ("gpt-4o" if escalated else "gpt-4o-mini")
    assert answer.choices[0].logprobs is None  # the app did not ask for logprobs
    request_id = headers["x-request-id"]
    final = ledger_row(request_id)
    assert final.route.startswith(f"route:{rule.id}:cascade:") and final.route_rule_id == rule.id
    cheap = LedgerEntry.objects.filter(request_id=request_id + "-cheap").first()
    if escalated:
        assert f"escalated(confidence={float(confidence):.3f}<0.7)" in final.route
        # Both calls are billed and recorded; the cheap one is the cascade's overhead.
        assert cheap is not None and cheap.served_model == "gpt-4o-mini" and cheap.cost > 0
        assert cheap.counterfactual_cost == 0
    else:
        assert "kept(confidence=" in final.route and cheap is None
        assert final.served_model == "gpt-4o-mini" and final.counterfactual_cost > final.cost


def test_cascade_keeps_logprobs_the_app_asked_for_and_streams_a_kept_answer(gateway: str, tenant: Tenant) -> None:
    rule_make(tenant, name="tiers", action="cascade", primaries="gpt-4o-mini\ngpt-4o", cascade_threshold=Decimal("0.6"))
    wait_policy(gateway, tenant.key.plaintext)
    text = "Summarise [[sim:gpt-4o-mini/confidence=0.8]]"
    answer, _ = _chat(gateway, tenant, text, logprobs=True)
    assert answer.model == "gpt-4o-mini" and answer.choices[0].logprobs.content

    stream = sdk(gateway, tenant.key.plaintext).chat.completions.create(model="gpt-4o", messages=ask(text), stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == answer.choices[0].message.content


def test_cascade_escalates_labels_it_has_not_seen(gateway: str, tenant: Tenant) -> None:
    rule_make(
        tenant,
        name="labels",
        action="cascade",
        primaries="gpt-4o-mini\ngpt-4o",
        cascade_threshold=Decimal("0.5"),
        cascade_escalate_new_labels=True,
        cascade_labels=["billing", "shipping"],
    )
    wait_policy(gateway, tenant.key.plaintext)
    known = "[[sim:gpt-4o-mini/confidence=0.99]] [[sim:answer=Billing.]]"
    answer, headers = _chat(gateway, tenant, known)
    assert answer.model == "gpt-4o-mini"
    novel = "[[sim:gpt-4o-mini/confidence=0.99]] [[sim:answer=Warranty]]"
    answer, headers = _chat(gateway, tenant, novel)
    assert answer.model == "gpt-4o" and "escalated(new-label)" in headers["x-route"]
    # The strong model said "Warranty": now a known label, so the cheap answer is kept next time.
    answer, headers = _chat(gateway, tenant, novel + " again")
    assert answer.model == "gpt-4o-mini"


@pytest.mark.parametrize(
    "failure", ["[[sim:gpt-4o-mini/500]]", "[[sim:gpt-4o-mini/429]]", "[[sim:gpt-4o-mini/timeout]]"]
)
def test_fallback_on_errors_and_timeouts(gateway: str, tenant: Tenant, failure: str) -> None:
    tenant.provider.first_byte_timeout_seconds = 0.5
    tenant.provider.save()
    rule = rule_make(tenant, name="with fallback", primaries="gpt-4o-mini", fallbacks="gpt-4.1-mini")
    wait_policy(gateway, tenant.key.plaintext)
    answer, headers = _chat(gateway, tenant, f"hello {failure}")
    assert answer.model == "gpt-4.1-mini"
    reason = {"500": "500", "429": "429", "timeout": "timeout"}[failure.split("/")[1].rstrip("]")]
    assert headers["x-route"] == f"route:{rule.id}:route;failed:gpt-4o-mini@sim({reason})"
    assert ledger_row(headers["x-request-id"]).route == headers["x-route"]


def test_the_last_failure_reaches_the_app_when_every_target_fails(gateway: str, tenant: Tenant) -> None:
    rule_make(tenant, name="both fail", primaries="gpt-4o-mini", fallbacks="gpt-4.1-mini")
    wait_policy(gateway, tenant.key.plaintext)
    with pytest.raises(openai.InternalServerError):
        _chat(gateway, tenant, "[[sim:gpt-4o-mini/500]] [[sim:gpt-4.1-mini/503]]")


def test_retries_count_against_the_breaker_window(gateway: str, tenant: Tenant) -> None:
    tenant.provider.max_retries = 2
    tenant.provider.save()
    rule_make(tenant, name="retrying", primaries="gpt-4o-mini", fallbacks="gpt-4.1-mini")
    wait_policy(gateway, tenant.key.plaintext)
    answer, headers = _chat(gateway, tenant, "[[sim:gpt-4o-mini/503]]")
    assert answer.model == "gpt-4.1-mini"
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    fails = client.get(names.breaker_failures(settings.REDIS_PREFIX, f"{tenant.provider.id}:gpt-4o-mini"))
    assert int(fails) == 3  # the first try and two retries


def test_a_model_on_two_providers_fails_over_without_a_rule(gateway: str, tenant: Tenant, upstream: str) -> None:
    dead = provider_create(
        organization=tenant.org,
        name="dead",
        kind=ProviderKind.OPENAI_COMPATIBLE,
        base_url="http://127.0.0.1:9/v1",
        seed_catalog=True,
    )
    from apps.tenancy.services import project_set_default_provider

    project_set_default_provider(project=tenant.project, provider=dead)
    wait_policy(gateway, tenant.key.plaintext)
    answer, headers = _chat(gateway, tenant, "hi", model="gpt-4o-mini")
    assert answer.model == "gpt-4o-mini"
    assert headers["x-route"] == "direct;failed:gpt-4o-mini@dead(unreachable)"
    assert ledger_row(headers["x-request-id"]).provider_id == tenant.provider.id


def test_shadow_never_changes_the_answer_or_the_bill(gateway: str, tenant: Tenant) -> None:
    text = "Explain the invoice [[sim:gpt-4.1/latency=1500]]"
    wait_policy(gateway, tenant.key.plaintext)
    plain, _ = _chat(gateway, tenant, text)
    rule = rule_make(tenant, name="shadow gpt-4.1", shadow="gpt-4.1", shadow_percent=Decimal("100"))
    wait_policy(gateway, tenant.key.plaintext)

    shadowed, headers = _chat(gateway, tenant, text)
    request_id = headers["x-request-id"]
    assert shadowed.model == plain.model == "gpt-4o"
    assert shadowed.choices[0].message.content == plain.choices[0].message.content
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    # The app had its answer while the shadow call was still waiting on its 1.5 s upstream.
    assert shadow_ingest_batch(client=client, consumer="tests") == 0

    def compared() -> ShadowComparison | None:
        shadow_ingest_batch(client=client, consumer="tests")
        return ShadowComparison.objects.filter(request_id=request_id).first()

    comparison = wait_until(compared, timeout=10)
    assert comparison.rule_id == rule.id
    assert (comparison.primary_model, comparison.shadow_model, comparison.shadow_status) == ("gpt-4o", "gpt-4.1", 200)
    assert comparison.primary_text == plain.choices[0].message.content
    assert comparison.shadow_latency_ms >= 1500 and comparison.shadow_cost > 0
    assert comparison.similarity is not None and -1.0 <= comparison.similarity <= 1.0
    assert comparison.exact_match == (comparison.primary_text == comparison.shadow_text)
    ingest_all()
    rows = LedgerEntry.objects.filter(project=tenant.project, request_id__startswith=request_id)
    assert [r.served_model for r in rows] == ["gpt-4o"]  # one row, the app's; the shadow call is not billed


def test_streams_fall_back_and_escalate_before_the_first_byte(gateway: str, tenant: Tenant) -> None:
    rule_make(tenant, name="fallback", match_features=["fb"], primaries="gpt-4o-mini", fallbacks="gpt-4.1-mini")
    rule_make(tenant, name="tiers", action="cascade", primaries="gpt-4o-mini\ngpt-4o", cascade_threshold=Decimal("0.9"))
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)

    def streamed(text: str, **kwargs: Any) -> tuple[str, str]:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=ask(text), stream=True, **kwargs))
        return chunks[0].model, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    model, text = streamed("hello [[sim:gpt-4o-mini/503]]", extra_headers={"X-Feature": "fb"})
    assert model == "gpt-4.1-mini" and text
    model, text = streamed("classify [[sim:gpt-4o-mini/confidence=0.2]]")
    assert model == "gpt-4o"
    assert (
        text
        == client.chat.completions.create(model="gpt-4o", messages=ask("classify [[sim:gpt-4o-mini/confidence=0.2]]"))
        .choices[0]
        .message.content
    )


def test_retry_after_is_honoured_before_the_retry(gateway: str, tenant: Tenant) -> None:
    tenant.provider.max_retries = 1
    tenant.provider.save()
    rule_make(tenant, name="retry then fall back", primaries="gpt-4o-mini", fallbacks="gpt-4.1-mini")
    wait_policy(gateway, tenant.key.plaintext)
    started = time.monotonic()
    answer, headers = _chat(gateway, tenant, "[[sim:gpt-4o-mini/429]]")  # the simulator sends Retry-After: 1
    waited = time.monotonic() - started
    assert answer.model == "gpt-4.1-mini" and headers["x-route"].endswith(";failed:gpt-4o-mini@sim(429)")
    client = redis_lib.Redis.from_url(settings.REDIS_URL)
    assert int(client.get(names.breaker_failures(settings.REDIS_PREFIX, f"{tenant.provider.id}:gpt-4o-mini"))) == 2
    assert waited >= 1.0  # the retry waited for the provider's Retry-After (a lower bound, not a speed target)


def test_shadow_samples_the_share_the_rule_asks_for(gateway: str, tenant: Tenant) -> None:
    rule = rule_make(tenant, name="20% shadow", shadow="gpt-4.1-nano", shadow_percent=Decimal("20"))
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    for i in range(600):
        client.chat.completions.create(model="gpt-4o", messages=ask(f"sample {i}"))
    redis = redis_lib.Redis.from_url(settings.REDIS_URL)

    def settled() -> int | None:
        before = ShadowComparison.objects.filter(rule=rule).count()
        while shadow_ingest_batch(client=redis, consumer="tests"):
            pass
        after = ShadowComparison.objects.filter(rule=rule).count()
        return after if after == before and after else None

    sampled = wait_until(settled, timeout=15, interval=0.5)
    assert abs(sampled / 600 - 0.20) <= 0.05  # ±5 points is over 3 standard deviations at n=600


def test_a_cache_hit_is_not_counted_as_the_rules_traffic(gateway: str, tenant: Tenant) -> None:
    from apps.cache.models import CachePolicy

    CachePolicy.objects.create(project=tenant.project, exact_enabled=True)
    rule = rule_make(tenant, name="mini", primaries="gpt-4o-mini")
    wait_policy(gateway, tenant.key.plaintext)
    _, first = _chat(gateway, tenant, "the same question")
    _, second = _chat(gateway, tenant, "the same question")
    assert first["x-cache"] == "miss"
    assert second["x-cache"] == "hit-exact"
    assert ledger_row(first["x-request-id"]).route_rule_id == rule.id
    assert ledger_row(second["x-request-id"]).route_rule_id is None
