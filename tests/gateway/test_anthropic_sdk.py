"""The official anthropic SDK, unmodified, against a live gateway's /v1/messages and the simulated upstream.

The tenant has two providers: the OpenAI-kind simulator ("sim") and an Anthropic-kind one ("claude", the
same simulator speaking the Messages API). Every request leaves a priced ledger row.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import pytest

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.cache.models import CachePolicy
from apps.core.catalog import ANTHROPIC_CACHE_WRITE_PRICES, ANTHROPIC_PRICES, OPENAI_PRICES
from apps.ledger.models import LedgerEntry
from apps.providers.models import Provider, ProviderKind
from apps.providers.services import provider_create
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ingest_all, ledger_row, wait_key_live, wait_policy

pytestmark = pytest.mark.live

CLAUDE = "claude-haiku-4-5"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MTOK = Decimal(1_000_000)


@pytest.fixture
def claude(tenant: Tenant, upstream: str) -> Provider:
    return provider_create(
        organization=tenant.org, name="claude", kind=ProviderKind.SIMULATED_ANTHROPIC, base_url=upstream
    )


@pytest.fixture
def client(gateway: str, tenant: Tenant, claude: Provider) -> Iterator[anthropic.Anthropic]:
    wait_key_live(gateway, tenant.key.plaintext)
    wait_policy(gateway, tenant.key.plaintext)
    with anthropic.Anthropic(
        base_url=gateway.removesuffix("/v1"), api_key=tenant.key.plaintext, max_retries=0, timeout=15
    ) as sdk:
        yield sdk


def claude_cost(row: LedgerEntry, model: str = CLAUDE) -> Decimal:
    """What Anthropic bills for the row's tokens: fresh input, cache writes, cache reads and output at their prices."""
    input_, read, output = (ANTHROPIC_PRICES[model][i] for i in (0, 1, 2))
    fresh = row.prompt_tokens - row.cached_tokens - row.cache_write_tokens
    usd = (
        fresh * input_
        + row.cache_write_tokens * ANTHROPIC_CACHE_WRITE_PRICES[model]
        + row.cached_tokens * read
        + row.completion_tokens * output
    ) / MTOK
    return usd.quantize(Decimal("1e-8"))


def test_create_is_answered_priced_and_recorded(client: anthropic.Anthropic, tenant: Tenant, claude: Provider) -> None:
    raw = client.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=200, messages=HELLO, extra_headers={"X-Feature": "support"}
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.model == CLAUDE
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0

    row = ledger_row(raw.headers["x-request-id"])
    assert (row.endpoint, row.provider_id, row.served_model, row.feature) == ("messages", claude.id, CLAUDE, "support")
    assert row.project_id == tenant.project.id and row.status_code == 200 and not row.usage_estimated
    assert (row.prompt_tokens, row.completion_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert row.cost == claude_cost(row) > 0


def test_stream_gives_the_same_text_and_a_priced_row(client: anthropic.Anthropic, claude: Provider) -> None:
    whole = client.messages.create(model=CLAUDE, max_tokens=200, messages=HELLO)
    with client.messages.stream(model=CLAUDE, max_tokens=200, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text == whole.content[0].text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens

    row = ledger_row(request_id)
    assert row.streamed and row.status_code == 200 and not row.usage_estimated and row.provider_id == claude.id
    assert row.completion_tokens == whole.usage.output_tokens and row.prompt_tokens == whole.usage.input_tokens
    assert row.cost == claude_cost(row) > 0


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_round_trip(client: anthropic.Anthropic, streamed: bool) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    if streamed:
        with client.messages.stream(model=CLAUDE, max_tokens=200, messages=ask, tools=[WEATHER]) as stream:
            first = stream.get_final_message()
    else:
        first = client.messages.create(model=CLAUDE, max_tokens=200, messages=ask, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert (call.name, call.input) == ("get_weather", {"city": "simulated"}) and call.id

    follow_up = [
        *ask,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}]},
    ]
    raw = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=200, messages=follow_up, tools=[WEATHER])
    answer = raw.parse()
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    row = ledger_row(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.cost == claude_cost(row) > 0


def test_count_tokens_answers_our_estimate_without_a_ledger_row(client: anthropic.Anthropic, tenant: Tenant) -> None:
    short = client.messages.count_tokens(model=CLAUDE, messages=HELLO)
    longer = client.messages.count_tokens(
        model=CLAUDE, system="Answer briefly.", messages=[{"role": "user", "content": "word " * 200}], tools=[WEATHER]
    )
    assert 0 < short.input_tokens < longer.input_tokens
    ingest_all()
    assert not LedgerEntry.objects.filter(project=tenant.project).exists()


def test_budget_refusal_in_anthropics_shape_and_recorded(
    client: anthropic.Anthropic, gateway: str, tenant: Tenant
) -> None:
    budget_create(
        organization=tenant.org, name="tiny", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal("0.0001"),
    )  # fmt: skip
    wait_policy(gateway, tenant.key.plaintext)
    with pytest.raises(anthropic.RateLimitError) as refused:
        client.messages.create(model=CLAUDE, max_tokens=4000, messages=HELLO)
    assert refused.value.status_code == 429
    assert (
        refused.value.body["error"]["type"] == "rate_limit_error" and "tiny" in refused.value.body["error"]["message"]
    )
    row = ledger_row(refused.value.response.headers["x-request-id"])
    assert (row.status_code, row.error_code, row.cost, row.endpoint) == (429, "insufficient_quota", 0, "messages")


def test_prompt_cache_writes_then_reads_priced_at_their_prices(client: anthropic.Anthropic) -> None:
    system = [{"type": "text", "text": "You are a careful assistant. " * 60, "cache_control": {"type": "ephemeral"}}]
    rows = []
    for question in ("First question?", "Second question?"):
        raw = client.messages.with_raw_response.create(
            model=CLAUDE, max_tokens=100, system=system, messages=[{"role": "user", "content": question}]
        )
        rows.append((raw.parse().usage, ledger_row(raw.headers["x-request-id"])))
    (written, first), (read, second) = rows
    assert written.cache_creation_input_tokens > 0 and not written.cache_read_input_tokens
    assert read.cache_read_input_tokens == written.cache_creation_input_tokens and not read.cache_creation_input_tokens
    assert (first.cache_write_tokens, first.cached_tokens) == (written.cache_creation_input_tokens, 0)
    assert (second.cache_write_tokens, second.cached_tokens) == (0, read.cache_read_input_tokens)
    assert first.prompt_tokens == written.input_tokens + written.cache_creation_input_tokens
    assert first.cost == claude_cost(first) and second.cost == claude_cost(second)
    assert second.cost < first.cost  # reads cost a tenth of the input price, writes 1.25 times it


def test_exact_cache_hit_answers_in_anthropics_shape(client: anthropic.Anthropic, gateway: str, tenant: Tenant) -> None:
    CachePolicy.objects.create(project=tenant.project, exact_enabled=True)
    wait_policy(gateway, tenant.key.plaintext)
    ask = [{"role": "user", "content": "Which plan includes SSO?"}]
    first = client.messages.create(model=CLAUDE, max_tokens=100, messages=ask)
    hit = None
    for _ in range(50):  # the answer is stored by the cache consumer, a moment after it is sent
        raw = client.messages.with_raw_response.create(model=CLAUDE, max_tokens=100, messages=ask)
        row = ledger_row(raw.headers["x-request-id"])
        if row.cache_hit:
            hit = raw.parse()
            break
    assert hit is not None and row.cache_hit == "exact"
    assert hit.content[0].text == first.content[0].text and row.cost == 0
    with client.messages.stream(model=CLAUDE, max_tokens=100, messages=ask) as stream:
        assert "".join(stream.text_stream) == first.content[0].text


def test_a_claude_client_served_by_an_openai_model(client: anthropic.Anthropic, tenant: Tenant) -> None:
    raw = client.messages.with_raw_response.create(model="gpt-4o-mini", max_tokens=200, messages=HELLO)
    message = raw.parse()
    assert message.model == "gpt-4o-mini" and message.content[0].text and message.stop_reason == "end_turn"
    row = ledger_row(raw.headers["x-request-id"])
    assert (row.endpoint, row.provider_id, row.served_model) == ("messages", tenant.provider.id, "gpt-4o-mini")
    prices = OPENAI_PRICES["gpt-4o-mini"]
    expected = (row.prompt_tokens * prices[0] + row.completion_tokens * prices[2]) / MTOK
    assert row.cost == expected.quantize(Decimal("1e-8")) > 0 and not row.usage_estimated

    with client.messages.stream(model="gpt-4o-mini", max_tokens=200, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == message.content[0].text
        assert stream.get_final_message().usage.output_tokens == message.usage.output_tokens


def test_upstream_errors_reach_the_app_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        client.messages.create(model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "[[sim:529]]"}])
    assert overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "[[sim:429]]"}])
    assert limited.value.body["error"]["type"] == "rate_limit_error"


def test_bearer_auth_and_bad_keys(gateway: str, tenant: Tenant, claude: Provider) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    base = gateway.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base, auth_token=tenant.key.plaintext, api_key=None, max_retries=0) as bearer:
        assert bearer.messages.create(model=CLAUDE, max_tokens=50, messages=HELLO).content
    with anthropic.Anthropic(base_url=base, api_key="cc_live_nope", max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            wrong.messages.create(model=CLAUDE, max_tokens=50, messages=HELLO)
    assert refused.value.body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "body",
    [
        {"model": CLAUDE, "messages": HELLO},  # no max_tokens
        {"model": CLAUDE, "max_tokens": "16", "messages": HELLO},
        {"model": CLAUDE, "max_tokens": 10, "messages": []},
        {"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "robot", "content": "hi"}]},
        {"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
        {"model": CLAUDE, "max_tokens": 10, "messages": HELLO, "system": 7},
        {"model": CLAUDE, "max_tokens": 10, "messages": HELLO, "tools": [{"name": "x"}]},
        {"model": CLAUDE, "max_tokens": 10, "messages": HELLO, "tool_choice": {"type": "maybe"}},
        {"model": CLAUDE, "max_tokens": -1, "messages": HELLO},
        {"model": 5, "max_tokens": 10, "messages": HELLO},
    ],
)
def test_garbage_gets_an_anthropic_shaped_400(client: anthropic.Anthropic, body: dict[str, object]) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.post("/v1/messages", body=body, cast_to=object)
    assert refused.value.body["error"]["type"] == "invalid_request_error" and refused.value.body["error"]["message"]
    if body.get("max_tokens") == 10:  # count_tokens takes no max_tokens: the other faults apply to it too
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.post("/v1/messages/count_tokens", body=body, cast_to=object)
        assert refused.value.body["error"]["type"] == "invalid_request_error"


def test_another_tenant_cannot_reach_our_anthropic_provider(gateway: str, tenant: Tenant, claude: Provider) -> None:
    other = tenant_make(upstream_url=claude.base_url, name="other")
    wait_key_live(gateway, other.key.plaintext)
    with anthropic.Anthropic(
        base_url=gateway.removesuffix("/v1"), api_key=other.key.plaintext, max_retries=0
    ) as outsider:
        with pytest.raises(anthropic.NotFoundError) as refused:
            outsider.messages.create(model=CLAUDE, max_tokens=50, messages=HELLO)
    assert refused.value.body["error"]["type"] == "not_found_error"
    row = ledger_row(refused.value.response.headers["x-request-id"])
    assert row.organization_id == other.org.id and row.provider_id is None
    ingest_all()
    assert not LedgerEntry.objects.filter(organization=tenant.org).exists()
