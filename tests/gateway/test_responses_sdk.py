"""The Responses API with the official openai SDK, unmodified, against a live gateway and the simulator.

Every request leaves a ledger row priced from the usage the provider reported, at the tier it served.
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from apps.budgets.services import budget_create
from apps.cache.models import CachePolicy
from apps.cache.services import cache_policy_save
from apps.core.catalog import CATALOG
from apps.ledger.models import LedgerEntry
from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import WEATHER, ingest_all, ledger_row, sdk, wait_key_live, wait_policy
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.live


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def _expected(row: LedgerEntry, model: str, tier: str = "standard") -> Decimal:
    rates = CATALOG[model].tiers[tier]
    uncached = row.prompt_tokens - row.cached_tokens
    usd = uncached * rates.input + row.cached_tokens * rates.cached_input + row.completion_tokens * rates.output
    return (usd / Decimal(1_000_000)).quantize(Decimal("1e-8"))


def test_create_is_answered_and_billed_from_its_usage(client: openai.OpenAI, tenant: Tenant) -> None:
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="What is the capital of France?", instructions="Be brief.",
        extra_headers={"X-Feature": "faq"},
    )  # fmt: skip
    response = raw.parse()
    assert response.output_text and response.usage is not None
    row = ledger_row(raw.headers["x-request-id"])
    assert (row.endpoint, row.feature, row.project_id) == ("responses", "faq", tenant.project.id)
    assert (row.prompt_tokens, row.completion_tokens) == (response.usage.input_tokens, response.usage.output_tokens)
    assert row.cost == _expected(row, "gpt-4o-mini") and row.cost > 0
    assert (row.service_tier, row.reasoning_tokens, row.status_code) == ("standard", 0, 200)
    assert not row.usage_estimated and not row.streamed


def test_stream_relays_every_event_in_order_and_bills_response_completed(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="gpt-4o", input="Tell me about budgets", store=False).output_text
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Tell me about budgets", stream=True)
    events = list(raw.parse())
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole
    usage = events[-1].response.usage
    row = ledger_row(raw.headers["x-request-id"])
    assert row.streamed and not row.usage_estimated and row.ttft_ms is not None
    assert (row.prompt_tokens, row.completion_tokens) == (usage.input_tokens, usage.output_tokens)
    assert row.cost == _expected(row, "gpt-4o")


def test_tools_round_trip_across_two_turns_with_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.with_raw_response.create(model="gpt-4o", input="Weather in Paris?", tools=[WEATHER])
    call = first.parse().output[0]
    assert call.type == "function_call" and call.name == "get_weather" and '"city"' in call.arguments
    second = client.responses.with_raw_response.create(
        model="gpt-4o", previous_response_id=first.parse().id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}],
    )  # fmt: skip
    answer = second.parse()
    assert answer.output_text and answer.previous_response_id == first.parse().id
    for raw in (first, second):
        row = ledger_row(raw.headers["x-request-id"])
        assert row.status_code == 200 and row.cost == _expected(row, "gpt-4o") > 0
    # The second turn's prompt holds the first turn (the provider counts it): its worst case did too.
    assert answer.usage.input_tokens > first.parse().usage.input_tokens


def test_retrieve_input_items_and_delete(client: openai.OpenAI, tenant: Tenant) -> None:
    created = client.responses.create(model="gpt-4o-mini", input="Remember me")
    assert client.responses.retrieve(created.id).output_text == created.output_text
    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    # Each call is a ledger row at $0 (the provider bills none of them), the refused one included.
    ingest_all()
    rows = LedgerEntry.objects.filter(project=tenant.project).exclude(endpoint="responses").order_by("created_at")
    assert [(r.endpoint, r.status_code) for r in rows] == [
        ("responses.retrieve", 200), ("responses.input_items", 200), ("responses.delete", 200),
        ("responses.retrieve", 404),
    ]  # fmt: skip
    assert all(r.cost == 0 and r.prompt_tokens == 0 for r in rows) and rows[0].served_model == created.model
    assert rows[3].error_code == "not_found"


def test_another_projects_response_is_not_found(gateway: str, client: openai.OpenAI, upstream: str) -> None:
    created = client.responses.create(model="gpt-4o-mini", input="Private to my project")
    other = tenant_make(upstream_url=upstream, name="other")
    wait_key_live(gateway, other.key.plaintext)
    outsider = sdk(gateway, other.key.plaintext)
    with pytest.raises(openai.NotFoundError):
        outsider.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        outsider.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        outsider.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as exc:
        outsider.responses.create(model="gpt-4o-mini", input="Go on", previous_response_id=created.id)
    assert exc.value.param == "previous_response_id"
    assert client.responses.retrieve(created.id).id == created.id  # still there for its owner
    # The outsider's tries are the outsider's rows: nothing of them lands in the owner's project.
    ingest_all()
    refused = LedgerEntry.objects.filter(project=other.project, endpoint__startswith="responses.")
    assert sorted(r.endpoint for r in refused) == ["responses.delete", "responses.input_items", "responses.retrieve"]
    assert {r.status_code for r in refused} == {404}


def test_background_and_cancel_bill_the_worst_case(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Slow work [[sim:latency=5000]]", background=True, max_output_tokens=100
    )
    started = raw.parse()
    assert started.status == "in_progress"
    assert client.responses.cancel(started.id).status == "cancelled"
    row = ledger_row(raw.headers["x-request-id"])
    assert row.usage_estimated and row.completion_tokens == 100
    assert row.cost == _expected(row, "gpt-4o-mini")


def test_hard_budget_refuses_with_insufficient_quota(gateway: str, client: openai.OpenAI, tenant: Tenant) -> None:
    budget_create(organization=tenant.org, name="tiny", scope="project", project=tenant.project,
                  amount_usd=Decimal("0.0001"))  # fmt: skip
    wait_policy(gateway, tenant.key.plaintext)
    # o3 with no output cap may produce 100,000 tokens (reasoning included): far past the budget.
    with pytest.raises(openai.RateLimitError) as exc:
        client.responses.create(model="o3", input="Think hard", reasoning={"effort": "high"})
    assert exc.value.code == "insufficient_quota"
    ingest_all()
    assert LedgerEntry.objects.filter(project=tenant.project, endpoint="responses", status_code=429).count() == 1


def test_exact_cache_answers_a_repeated_stateless_create(gateway: str, client: openai.OpenAI, tenant: Tenant) -> None:
    cache_policy_save(policy=CachePolicy(project=tenant.project, exact_enabled=True))
    wait_policy(gateway, tenant.key.plaintext)
    ask = {"model": "gpt-4o-mini", "input": "Opening hours?", "store": False}
    first = client.responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert first.headers["x-cache"] == "miss"
    ledger_row(first.headers["x-request-id"])
    second = client.responses.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert second.headers["x-cache"] == "hit-exact"
    assert second.parse().output_text == first.parse().output_text and second.parse().id != first.parse().id
    row = ledger_row(second.headers["x-request-id"])
    assert row.cache_hit == "exact" and row.cost == 0 and row.counterfactual_cost > 0
    # A stored response is never answered from the cache: its id must be one the provider knows.
    stored = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Opening hours?")
    assert stored.headers.get("x-cache") is None


def test_fallback_to_a_second_provider_on_503(
    gateway: str, client: openai.OpenAI, tenant: Tenant, upstream: str
) -> None:
    backup = provider_create(organization=tenant.org, name="backup", kind=ProviderKind.SIMULATED, base_url=upstream)
    rule_make(tenant, name="with backup", primaries="gpt-4o-mini", fallbacks="gpt-4.1-mini @ backup")
    wait_policy(gateway, tenant.key.plaintext)
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="Hello [[sim:gpt-4o-mini/503]]")
    assert raw.parse().model == "gpt-4.1-mini"
    assert "failed:gpt-4o-mini" in raw.headers["x-route"] and "(503)" in raw.headers["x-route"]
    row = ledger_row(raw.headers["x-request-id"])
    assert (row.provider_id, row.served_model) == (backup.id, "gpt-4.1-mini")
    assert row.cost == _expected(row, "gpt-4.1-mini")


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_service_tier_is_priced_at_its_tier_with_reasoning_tokens(client: openai.OpenAI, tier: str) -> None:
    raw = client.responses.with_raw_response.create(
        model="o4-mini",
        input="Plan a trip",
        reasoning={"effort": "low"},
        service_tier=tier,  # type: ignore[arg-type]
    )
    response = raw.parse()
    assert response.service_tier == tier and response.usage.output_tokens_details.reasoning_tokens > 0
    row = ledger_row(raw.headers["x-request-id"])
    assert row.service_tier == tier
    assert row.reasoning_tokens == response.usage.output_tokens_details.reasoning_tokens
    assert row.cost == _expected(row, "o4-mini", tier) != _expected(row, "o4-mini", "standard")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o"}, "input"),
        ({"model": "gpt-4o", "input": 42}, "input"),
        ({"model": "gpt-4o", "input": [{"role": 1, "content": "x"}]}, "input[0].role"),
        ({"model": "gpt-4o", "input": "x", "max_output_tokens": -1}, "max_output_tokens"),
        ({"model": "gpt-4o", "input": "x", "service_tier": "gold"}, "service_tier"),
        ({"model": "gpt-4o", "input": "x", "previous_response_id": "../../etc"}, "previous_response_id"),
        ({"model": "gpt-4o", "input": "x", "background": True, "store": False}, "background"),
    ],
)
def test_garbage_is_a_400_in_openai_shape(client: openai.OpenAI, body: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.post("/responses", body=body, cast_to=object)
    assert exc.value.param == param


def test_unknown_ids_and_paths_are_404s(client: openai.OpenAI) -> None:
    for response_id in ("resp_unknown", "x" * 500, "bad%00id"):
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response_id)
    with pytest.raises(openai.NotFoundError):
        client.get("/responses/resp_x/nothing", cast_to=object)


def test_tier_and_reasoning_prices_set_through_the_api_price_the_next_request(
    gateway: str, client: openai.OpenAI, tenant: Tenant
) -> None:
    """A price row's flex tier and reasoning price, set by the owner over the management API, bill the request."""
    from django.test import Client  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415

    from apps.dashboard.services import api_token_rotate  # noqa: PLC0415

    api = Client(headers={"Authorization": f"Token {api_token_rotate(user=tenant.owner).key}"})
    base = {"provider": tenant.provider.pk, "model": "o4-mini", "input_per_mtok": "2", "output_per_mtok": "8",
            "effective_from": timezone.localdate().isoformat()}  # fmt: skip
    half_a_tier = api.post("/api/prices/", {**base, "flex_input_per_mtok": "1"}, content_type="application/json")
    assert half_a_tier.status_code == 400
    assert "all three flex prices" in half_a_tier.json()["error"]["fields"]["flex_input_per_mtok"][0]
    flex = {"flex_input_per_mtok": "0.5", "flex_cached_input_per_mtok": "0.25", "flex_output_per_mtok": "3",
            "reasoning_per_mtok": "7"}  # fmt: skip
    created = api.post("/api/prices/", {**base, **flex}, content_type="application/json")
    assert created.status_code == 201 and created.json()["flex_output_per_mtok"] == "3.000000"
    wait_policy(gateway, tenant.key.plaintext)
    raw = client.responses.with_raw_response.create(
        model="o4-mini", input="Plan a trip", reasoning={"effort": "low"}, service_tier="flex"
    )
    row = ledger_row(raw.headers["x-request-id"])
    assert row.service_tier == "flex" and row.reasoning_tokens > 0
    uncached = row.prompt_tokens - row.cached_tokens
    # A tier bills reasoning as its own output; the separate reasoning price is the standard tier's.
    usd = uncached * Decimal("0.5") + row.cached_tokens * Decimal("0.25") + row.completion_tokens * Decimal("3")
    assert row.cost == (usd / Decimal(1_000_000)).quantize(Decimal("1e-8"))

    raw = client.responses.with_raw_response.create(model="o4-mini", input="Plan a trip", reasoning={"effort": "low"})
    row = ledger_row(raw.headers["x-request-id"])
    assert row.service_tier == "standard" and row.reasoning_tokens > 0
    visible = row.completion_tokens - row.reasoning_tokens
    usd = row.prompt_tokens * Decimal("2") + visible * Decimal("8") + row.reasoning_tokens * Decimal("7")
    assert row.cost == (usd / Decimal(1_000_000)).quantize(Decimal("1e-8"))


@pytest.mark.parametrize("responses_api", [True, False], ids=["shadow-speaks-responses", "shadow-chat-only"])
def test_a_rules_shadow_compares_responses_without_touching_the_answer_or_the_bill(
    gateway: str, client: openai.OpenAI, tenant: Tenant, responses_api: bool
) -> None:
    import redis as redis_lib  # noqa: PLC0415
    from django.conf import settings  # noqa: PLC0415

    from apps.routing.models import ShadowComparison  # noqa: PLC0415
    from apps.routing.services import shadow_ingest_batch  # noqa: PLC0415
    from tests.live import wait_until  # noqa: PLC0415

    tenant.provider.responses_api = responses_api
    tenant.provider.save(update_fields=["responses_api"])
    rule = rule_make(tenant, name="shadow gpt-4.1", shadow="gpt-4.1", shadow_percent=Decimal("100"))
    wait_policy(gateway, tenant.key.plaintext)
    redis = redis_lib.Redis.from_url(settings.REDIS_URL)

    def compared(request_id: str) -> ShadowComparison:
        def found() -> ShadowComparison | None:
            shadow_ingest_batch(client=redis, consumer="tests")
            return ShadowComparison.objects.filter(request_id=request_id).first()

        return wait_until(found, timeout=15)  # type: ignore[no-any-return]

    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Explain the invoice", store=False)
    answer = raw.parse()
    comparison = compared(raw.headers["x-request-id"])
    assert comparison.rule_id == rule.id and comparison.shadow_status == 200
    assert (comparison.primary_model, comparison.shadow_model) == ("gpt-4o", "gpt-4.1")
    assert comparison.primary_text == answer.output_text and comparison.shadow_text and comparison.shadow_cost > 0
    with client.responses.stream(model="gpt-4o", input="Explain the refund", store=False) as stream:
        streamed = stream.get_final_response()
    ingest_all()
    rows = LedgerEntry.objects.filter(project=tenant.project, endpoint="responses").order_by("created_at")
    assert [row.served_model for row in rows] == ["gpt-4o", "gpt-4o"]  # the app's rows only; shadows are not billed
    streamed_comparison = compared(rows[1].request_id)
    assert streamed_comparison.primary_text == streamed.output_text and streamed_comparison.shadow_status == 200
