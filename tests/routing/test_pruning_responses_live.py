"""Pruning policies on ``/v1/responses`` through a live gateway and the official SDK: the output cap on
``max_output_tokens``, the history window on ``input`` items, continuations, and who is left untouched.

The simulated provider stops at ``max_output_tokens`` (status ``incomplete``) and bills the input it
received, so its usage shows what reached it.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from apps.routing.services import prune_policy_save
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy
from tests.routing.helpers import STALE, SYSTEM, chat_turns

pytestmark = pytest.mark.live


def _ask(client: openai.OpenAI, feature: str, items: Any, **kwargs: Any) -> Any:
    return client.responses.with_raw_response.create(
        model="gpt-4o-mini", input=items, extra_headers={"X-Feature": feature}, **kwargs
    )


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def test_a_capped_feature_asks_for_the_cap_as_max_output_tokens(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    prune_policy_save(project=tenant.project, feature="summaries", changes={"cap_enabled": True, "max_tokens_cap": 20})
    wait_policy(gateway, tenant.key.plaintext)

    raw = _ask(client, "summaries", "Summarise our refund policy in detail.", max_output_tokens=500)
    answer = raw.parse()
    assert answer.status == "incomplete" and answer.usage is not None and answer.usage.output_tokens == 20
    assert raw.headers["x-route"] == "direct;pruned:max_output_tokens(500->20)"
    row = ledger_row(raw.headers["x-request-id"])
    assert row.completion_tokens == 20
    assert row.decision == {"kind": "direct", "pruned": [{"what": "max_output_tokens", "before": 500, "after": 20}]}
    # No cap asked for: the policy's is set. A smaller one is the app's own, kept.
    raw = _ask(client, "summaries", "Summarise our refund policy in detail.")
    assert raw.headers["x-route"] == "direct;pruned:max_output_tokens(0->20)" and raw.parse().usage.output_tokens == 20
    raw = _ask(client, "summaries", "Summarise our refund policy in detail.", max_output_tokens=17)
    assert raw.headers["x-route"] == "direct" and raw.parse().usage.output_tokens == 17


def test_a_cap_below_the_responses_minimum_is_sent_as_16(gateway: str, tenant: Tenant, client: openai.OpenAI) -> None:
    prune_policy_save(project=tenant.project, feature="tiny", changes={"cap_enabled": True, "max_tokens_cap": 3})
    wait_policy(gateway, tenant.key.plaintext)
    raw = _ask(client, "tiny", "Summarise our refund policy in detail.", max_output_tokens=500)
    assert raw.parse().usage.output_tokens == 16  # 3 would be refused by the provider
    assert raw.headers["x-route"] == "direct;pruned:max_output_tokens(500->16)"


def test_a_history_window_sends_the_system_message_and_the_last_items(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    prune_policy_save(project=tenant.project, feature="support", changes={"history_enabled": True, "history_turns": 3})
    wait_policy(gateway, tenant.key.plaintext)
    items = chat_turns(8)

    raw = _ask(client, "support", items)
    pruned = raw.parse()
    assert pruned.output_text != STALE, "the first turn, and its directive, were left out"
    assert raw.headers["x-route"] == "direct;pruned:history(9->4)"
    window = _ask(client, "unpruned", [SYSTEM, *items[-3:]]).parse()
    assert pruned.usage.input_tokens == window.usage.input_tokens
    assert ledger_row(raw.headers["x-request-id"]).prompt_tokens == pruned.usage.input_tokens
    # Short conversations, a string input and other features go as they are.
    assert _ask(client, "support", chat_turns(3)).parse().output_text == STALE
    assert _ask(client, "support", f"One question [[sim:answer={STALE}]]").headers["x-route"] == "direct"
    assert _ask(client, "unpruned", items).parse().output_text == STALE


def test_a_window_never_opens_on_a_function_call_output_whose_call_it_left_out(
    gateway: str, tenant: Tenant, client: openai.OpenAI
) -> None:
    prune_policy_save(project=tenant.project, feature="agent", changes={"history_enabled": True, "history_turns": 2})
    wait_policy(gateway, tenant.key.plaintext)
    items = [
        SYSTEM,
        {"role": "user", "content": f"Find order 7. [[sim:answer={STALE}]]"},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "shipped"},
        {"role": "user", "content": "And when does it arrive?"},
    ]
    raw = _ask(client, "agent", items)
    assert raw.headers["x-route"] == "direct;pruned:history(5->2)"
    assert raw.parse().output_text != STALE


def test_a_continuation_is_capped_but_not_windowed(gateway: str, tenant: Tenant, client: openai.OpenAI) -> None:
    changes = {"cap_enabled": True, "max_tokens_cap": 30, "history_enabled": True, "history_turns": 1}
    prune_policy_save(project=tenant.project, feature="support", changes=changes)
    wait_policy(gateway, tenant.key.plaintext)
    first = _ask(client, "support", f"Remember this. [[sim:answer={STALE}]]").parse()
    follow_up = [{"role": "user", "content": "One."}, {"role": "user", "content": "Two."}]
    raw = _ask(client, "support", follow_up, previous_response_id=first.id, max_output_tokens=500)
    # The earlier turn (with its directive) still reaches the provider: the window did not apply.
    assert raw.parse().output_text == STALE
    assert raw.headers["x-route"] == "direct;pruned:max_output_tokens(500->30)"


def test_garbage_input_is_still_a_400_under_a_policy(gateway: str, tenant: Tenant, client: openai.OpenAI) -> None:
    prune_policy_save(project=tenant.project, feature="support", changes={"history_enabled": True, "history_turns": 1})
    wait_policy(gateway, tenant.key.plaintext)
    for bad in ([5, "x"], [{"type": "message", "role": 7, "content": "x"}], {"role": "user"}):
        with pytest.raises(openai.BadRequestError) as refused:
            _ask(client, "support", bad)
        assert refused.value.status_code == 400 and refused.value.param is not None


def test_another_tenants_project_is_untouched(gateway: str, tenant: Tenant, upstream: str) -> None:
    other = tenant_make(upstream_url=upstream)
    changes = {"cap_enabled": True, "max_tokens_cap": 20, "history_enabled": True, "history_turns": 1}
    prune_policy_save(project=tenant.project, feature="summaries", changes=changes)
    wait_policy(gateway, tenant.key.plaintext)
    wait_key_live(gateway, other.key.plaintext)
    raw = _ask(sdk(gateway, other.key.plaintext), "summaries", chat_turns(4), max_output_tokens=500)
    assert raw.headers["x-route"] == "direct" and raw.parse().output_text == STALE
