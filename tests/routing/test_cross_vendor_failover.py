"""Failover across vendors with the unmodified openai SDK: an OpenAI-kind provider's 429 sends the request to a
Claude model on an Anthropic-kind provider, and the app still gets OpenAI's shapes, plain and streamed."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest
import redis as redis_lib
from django.conf import settings

from apps.core.catalog import ANTHROPIC_PRICES
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import provider_create
from apps.routing.models import ShadowComparison
from apps.routing.services import shadow_ingest_batch
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_policy
from tests.live import wait_until
from tests.routing.helpers import ask, rule_make

pytestmark = pytest.mark.live

CLAUDE = "claude-haiku-4-5"


@pytest.fixture
def claude(tenant: Tenant, upstream: str) -> Provider:
    return provider_create(
        organization=tenant.org, name="claude", kind=ProviderKind.SIMULATED_ANTHROPIC, base_url=upstream
    )


def _claude_cost(prompt: int, completion: int) -> Decimal:
    prices = ANTHROPIC_PRICES[CLAUDE]
    return ((prompt * prices[0] + completion * prices[2]) / Decimal(1_000_000)).quantize(Decimal("1e-8"))


def test_a_429_falls_back_to_claude_in_openai_shape(gateway: str, tenant: Tenant, claude: Provider) -> None:
    rule = rule_make(tenant, name="gpt then claude", primaries="gpt-4o @ sim", fallbacks=f"{CLAUDE} @ claude")
    wait_policy(gateway, tenant.key.plaintext)
    raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ask("[[sim:gpt-4o/429]] Summarise our refund policy."), max_tokens=300
    )
    completion = raw.parse()
    assert completion.object == "chat.completion" and completion.model == CLAUDE
    assert completion.choices[0].message.content and completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-route"] == f"route:{rule.id}:route;failed:gpt-4o@sim(429)"

    row = ledger_row(raw.headers["x-request-id"])
    assert (row.provider_id, row.served_model, row.requested_model) == (claude.id, CLAUDE, "gpt-4o")
    assert (row.prompt_tokens, row.completion_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row.cost == _claude_cost(row.prompt_tokens, row.completion_tokens) > 0
    assert row.route == raw.headers["x-route"] and not row.usage_estimated


def test_a_streamed_429_falls_back_to_claude_as_chat_chunks(gateway: str, tenant: Tenant, claude: Provider) -> None:
    rule = rule_make(tenant, name="gpt then claude", primaries="gpt-4o @ sim", fallbacks=f"{CLAUDE} @ claude")
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    text = "[[sim:gpt-4o/429]] Summarise our refund policy."
    whole = client.chat.completions.create(model="gpt-4o", messages=ask(text), max_tokens=300)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ask(text), max_tokens=300, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert all(chunk.object == "chat.completion.chunk" and chunk.model == CLAUDE for chunk in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert raw.headers["x-route"] == f"route:{rule.id}:route;failed:gpt-4o@sim(429)"

    row = ledger_row(raw.headers["x-request-id"])
    assert row.streamed and row.provider_id == claude.id and not row.usage_estimated
    assert row.cost == _claude_cost(row.prompt_tokens, row.completion_tokens) > 0


def test_claude_overloaded_529_is_retryable_and_falls_back(gateway: str, tenant: Tenant, claude: Provider) -> None:
    rule = rule_make(tenant, name="claude then gpt", primaries=f"{CLAUDE} @ claude", fallbacks="gpt-4o-mini @ sim")
    wait_policy(gateway, tenant.key.plaintext)
    raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
        model=CLAUDE, messages=ask(f"[[sim:{CLAUDE}/529]] hello")
    )
    assert raw.parse().model == "gpt-4o-mini"
    assert raw.headers["x-route"] == f"route:{rule.id}:route;failed:{CLAUDE}@claude(529)"


def test_claude_tool_calls_come_back_as_openai_tool_calls(gateway: str, tenant: Tenant, claude: Provider) -> None:
    wait_policy(gateway, tenant.key.plaintext)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"order": {"type": "integer"}}, "required": ["order"]}}}]  # fmt: skip
    client = sdk(gateway, tenant.key.plaintext)
    first = client.chat.completions.create(model=CLAUDE, messages=ask("Where is order 7?"), tools=tools)
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == ("lookup", '{"order":1}')
    follow_up = [
        *ask("Where is order 7?"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Shipped yesterday."},
    ]
    answer = client.chat.completions.create(model=CLAUDE, messages=follow_up, tools=tools)
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content


def test_errors_of_a_claude_model_reach_openai_apps_in_openai_shape(
    gateway: str, tenant: Tenant, claude: Provider
) -> None:
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model=CLAUDE, messages=ask("[[sim:429]]"))
    assert limited.value.code == "rate_limit_error"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CLAUDE, messages=ask("hi"), n=2)
    assert refused.value.param == "n"


def test_a_claude_shadow_is_asked_in_its_own_api_and_compared(gateway: str, tenant: Tenant, claude: Provider) -> None:
    rule = rule_make(tenant, name="shadow claude", shadow=f"{CLAUDE} @ claude", shadow_percent=Decimal("100"))
    wait_policy(gateway, tenant.key.plaintext)
    raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ask("Explain the invoice")
    )
    request_id = raw.headers["x-request-id"]
    client = redis_lib.Redis.from_url(settings.REDIS_URL)

    def compared() -> ShadowComparison | None:
        shadow_ingest_batch(client=client, consumer="tests")
        return ShadowComparison.objects.filter(request_id=request_id).first()

    # The first comparison in a gateway process builds the local embedder (seconds on a busy box).
    comparison = wait_until(compared, timeout=60)
    assert (comparison.rule_id, comparison.shadow_model, comparison.shadow_status) == (rule.id, CLAUDE, 200)
    assert comparison.shadow_text and comparison.shadow_cost > 0
