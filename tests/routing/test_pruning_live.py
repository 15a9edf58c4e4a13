"""Pruning policies through a live gateway and the official SDK: what the provider is asked, what the
budget reserves, what ``X-Route`` and the ledger say, and who is left untouched.

The simulated provider cuts its answer at ``max_tokens`` (``finish_reason: length``) and bills the
prompt it received, so its usage shows what reached it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.cache.models import CachePolicy
from apps.routing.services import prune_policy_save
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy
from tests.routing.helpers import STALE, SYSTEM, chat_turns

pytestmark = pytest.mark.live


def _ask(client: openai.OpenAI, feature: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, extra_headers={"X-Feature": feature}, **kwargs
    )


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def test_a_capped_feature_asks_the_provider_for_the_cap_and_says_so(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    prune_policy_save(project=tenant.project, feature="summaries", changes={"cap_enabled": True, "max_tokens_cap": 3})
    wait_policy(gateway, tenant.key.plaintext)

    raw = _ask(client, "summaries", [{"role": "user", "content": "Summarise our refund policy."}], max_tokens=500)
    answer = raw.parse()
    # The provider was asked for 3 tokens: it stopped there.
    assert answer.usage.completion_tokens == 3 and answer.choices[0].finish_reason == "length"
    assert raw.headers["x-route"] == "direct;pruned:max_tokens(500->3)"
    row = ledger_row(raw.headers["x-request-id"])
    assert row.max_tokens == 3 and row.completion_tokens == 3
    assert row.decision == {"kind": "direct", "pruned": [{"what": "max_tokens", "before": 500, "after": 3}]}

    # No cap asked for: the policy's is set (the budget no longer reserves the model's whole output limit).
    raw = _ask(client, "summaries", [{"role": "user", "content": "Summarise our refund policy."}])
    assert raw.parse().usage.completion_tokens == 3
    assert raw.headers["x-route"] == "direct;pruned:max_tokens(0->3)"
    # A smaller cap than the policy's is the app's own, kept as it is.
    raw = _ask(client, "summaries", [{"role": "user", "content": "Summarise our refund policy."}], max_tokens=2)
    assert raw.parse().usage.completion_tokens == 2 and raw.headers["x-route"] == "direct"

    # Another feature of the project is not capped.
    raw = _ask(client, "chat", [{"role": "user", "content": "Summarise our refund policy."}], max_tokens=500)
    assert raw.parse().usage.completion_tokens > 3 and raw.headers["x-route"] == "direct"


def test_the_budget_reserves_the_capped_output(gateway: str, tenant: Tenant, client: openai.OpenAI) -> None:
    # gpt-4o-mini: $0.60 per 1M output tokens, 16,384 at most. Asking for all of them reserves ~$0.0098;
    # the budget has $0.005 left, so only a request capped to 50 tokens gets through.
    budget_create(organization=tenant.org, name="tight", scope=BudgetScope.PROJECT, project=tenant.project,
                  amount_usd=Decimal("0.005"))  # fmt: skip
    prune_policy_save(project=tenant.project, feature="capped", changes={"cap_enabled": True, "max_tokens_cap": 50})
    wait_policy(gateway, tenant.key.plaintext)
    question = [{"role": "user", "content": "Write me a long essay."}]

    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client, "uncapped", question, max_tokens=16_384)
    assert refused.value.code == "insufficient_quota"
    raw = _ask(client, "capped", question, max_tokens=16_384)
    assert raw.parse().choices and raw.headers["x-route"] == "direct;pruned:max_tokens(16384->50)"
    assert ledger_row(raw.headers["x-request-id"]).status_code == 200


def test_a_history_window_sends_the_system_prompt_and_the_last_turns(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    prune_policy_save(project=tenant.project, feature="support", changes={"history_enabled": True, "history_turns": 3})
    wait_policy(gateway, tenant.key.plaintext)
    conversation = chat_turns(8)  # system + 8 turns

    raw = _ask(client, "support", conversation)
    pruned = raw.parse()
    assert pruned.choices[0].message.content != STALE, "the first turn, and its directive, were left out"
    assert raw.headers["x-route"] == "direct;pruned:history(9->4)"
    # What reached the provider is the system prompt and the last three turns: billed as that request is.
    window = _ask(client, "unpruned", [SYSTEM, *conversation[-3:]]).parse()
    assert pruned.usage.prompt_tokens == window.usage.prompt_tokens
    row = ledger_row(raw.headers["x-request-id"])
    assert row.turns == 4 and row.prompt_tokens == pruned.usage.prompt_tokens

    # Short conversations and other features go as they are.
    raw = _ask(client, "support", chat_turns(3))
    assert raw.parse().choices[0].message.content == STALE and raw.headers["x-route"] == "direct"
    raw = _ask(client, "unpruned", conversation)
    assert raw.parse().choices[0].message.content == STALE and raw.headers["x-route"] == "direct"


def test_a_window_never_opens_on_tool_results_whose_call_it_left_out(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    prune_policy_save(project=tenant.project, feature="agent", changes={"history_enabled": True, "history_turns": 2})
    wait_policy(gateway, tenant.key.plaintext)
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        SYSTEM,
        {"role": "user", "content": f"Find order 7. [[sim:answer={STALE}]]"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "shipped"},
        {"role": "user", "content": "And when does it arrive?"},
    ]
    raw = _ask(client, "agent", messages)
    # The last two turns would open on the tool result: it goes too, leaving the system prompt and the question.
    assert raw.headers["x-route"] == "direct;pruned:history(5->2)"
    assert raw.parse().choices[0].message.content != STALE


def test_another_tenants_project_is_untouched(gateway: str, tenant: Tenant, upstream: str) -> None:
    other = tenant_make(upstream_url=upstream)
    prune_policy_save(
        project=tenant.project,
        feature="summaries",
        changes={"cap_enabled": True, "max_tokens_cap": 3, "history_enabled": True, "history_turns": 1},
    )
    wait_policy(gateway, tenant.key.plaintext)
    wait_key_live(gateway, other.key.plaintext)
    raw = _ask(sdk(gateway, other.key.plaintext), "summaries", chat_turns(4), max_tokens=500)
    answer = raw.parse()
    assert raw.headers["x-route"] == "direct"
    assert answer.choices[0].message.content == STALE and answer.usage.completion_tokens > 3


def test_a_pruned_request_answered_from_the_cache_keeps_its_pruned_note(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    CachePolicy.objects.create(project=tenant.project)
    prune_policy_save(project=tenant.project, feature="summaries", changes={"cap_enabled": True, "max_tokens_cap": 3})
    wait_policy(gateway, tenant.key.plaintext)
    question = [{"role": "user", "content": "Summarise our cancellation policy."}]
    first = _ask(client, "summaries", question, max_tokens=500)
    assert first.headers["x-cache"] == "miss"
    again = _ask(client, "summaries", question, max_tokens=500)
    assert again.headers["x-cache"] == "hit-exact"
    assert again.headers["x-route"].endswith(";pruned:max_tokens(500->3)")
    row = ledger_row(again.headers["x-request-id"])
    assert row.cache_hit == "exact" and row.decision["pruned"] == [{"what": "max_tokens", "before": 500, "after": 3}]
