"""A cascade rule on ``/v1/responses``, with the unmodified openai SDK against a live gateway: the cheap
model's answer is kept when the logprobs the simulator returns (``include: ["message.output_text.logprobs"]``,
driven by ``[[sim:confidence=P]]``) clear the threshold, else the strong model answers; streams, the app's
own ``include``, and what gets no cheap call."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import openai
import pytest

from apps.ledger.models import LedgerEntry
from apps.routing.models import RoutingRule
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy
from tests.routing.helpers import rule_make

pytestmark = pytest.mark.live

LOGPROBS: Literal["message.output_text.logprobs"] = "message.output_text.logprobs"


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


@pytest.fixture
def rule(gateway: str, tenant: Tenant) -> RoutingRule:
    made = rule_make(
        tenant, name="tiers", action="cascade", primaries="gpt-4o-mini\ngpt-4o", cascade_threshold=Decimal("0.7")
    )
    wait_policy(gateway, tenant.key.plaintext)
    return made


def _logprobs(response: openai.types.responses.Response) -> list[list[Any]]:
    return [part.logprobs or [] for item in response.output if item.type == "message" for part in item.content]  # type: ignore[union-attr]


@pytest.mark.parametrize(("confidence", "escalated"), [("0.5", True), ("0.69", True), ("0.7", False), ("0.95", False)])
def test_the_cheap_answer_is_kept_above_the_threshold_and_escalated_below_it(
    client: openai.OpenAI, rule: RoutingRule, confidence: str, escalated: bool
) -> None:
    raw = client.responses.with_raw_response.create(
        model="gpt-4o", input=f"Classify this ticket [[sim:gpt-4o-mini/confidence={confidence}]]"
    )
    response = raw.parse()
    assert response.model == ("gpt-4o" if escalated else "gpt-4o-mini")
    assert _logprobs(response) == [[]]  # the app did not ask for logprobs
    request_id = raw.headers["x-request-id"]
    final = ledger_row(request_id)
    assert final.route.startswith(f"route:{rule.id}:cascade:") and final.route_rule_id == rule.id
    assert final.endpoint == "responses" and response.usage is not None
    assert (final.prompt_tokens, final.completion_tokens) == (response.usage.input_tokens, response.usage.output_tokens)
    cheap = LedgerEntry.objects.filter(request_id=request_id + "-cheap").first()
    if escalated:
        assert f"escalated(confidence={float(confidence):.3f}<0.7)" in final.route
        assert cheap is not None and cheap.served_model == "gpt-4o-mini" and cheap.cost > 0
        assert cheap.counterfactual_cost == 0 and cheap.endpoint == "responses"
    else:
        assert "kept(confidence=" in final.route and cheap is None
        assert final.served_model == "gpt-4o-mini" and final.counterfactual_cost > final.cost > 0
        # A kept stored answer is a real response at its provider: the app can retrieve it.
        assert client.responses.retrieve(response.id).output_text == response.output_text


def test_the_apps_own_include_is_respected_kept_or_escalated(client: openai.OpenAI, rule: RoutingRule) -> None:
    kept = client.responses.create(
        model="gpt-4o", input="Summarise [[sim:gpt-4o-mini/confidence=0.9]]", include=[LOGPROBS], top_logprobs=2
    )
    assert kept.model == "gpt-4o-mini"
    [entries] = _logprobs(kept)
    assert entries and abs(entries[0].logprob - (-0.10536)) < 1e-4 and len(entries[0].top_logprobs) == 2  # type: ignore[attr-defined]
    escalated = client.responses.create(
        model="gpt-4o", input="Summarise [[sim:gpt-4o-mini/confidence=0.2]]", include=[LOGPROBS]
    )
    assert escalated.model == "gpt-4o" and _logprobs(escalated)[0]


def test_a_kept_answer_is_streamed_as_typed_events_and_an_escalated_one_is_relayed(
    client: openai.OpenAI, rule: RoutingRule
) -> None:
    text = "Summarise [[sim:gpt-4o-mini/confidence=0.9]]"
    whole = client.responses.create(model="gpt-4o", input=text, store=False)
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=text, stream=True)
    events = list(raw.parse())
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert events[-1].response.model == "gpt-4o-mini"  # type: ignore[union-attr]
    row = ledger_row(raw.headers["x-request-id"])
    assert row.streamed and "kept(" in row.route and row.served_model == "gpt-4o-mini"

    low = "Summarise [[sim:gpt-4o-mini/confidence=0.1]]"
    stream = client.responses.create(model="gpt-4o", input=low, stream=True)
    done = [event for event in stream if event.type == "response.completed"]
    assert done and done[0].response.model == "gpt-4o"


@pytest.mark.parametrize("logprob", ["710", "0.5"])
def test_logprobs_that_are_not_log_probabilities_escalate(
    client: openai.OpenAI, rule: RoutingRule, logprob: str
) -> None:
    raw = client.responses.with_raw_response.create(model="gpt-4o", input=f"Hi [[sim:gpt-4o-mini/logprob={logprob}]]")
    assert raw.parse().model == "gpt-4o" and "escalated(no-logprobs)" in raw.headers["x-route"]


def test_background_and_continuations_go_to_the_strong_model_only(client: openai.OpenAI, rule: RoutingRule) -> None:
    first = client.responses.create(model="gpt-4o", input="Remember [[sim:gpt-4o-mini/confidence=0.9]]")
    assert first.model == "gpt-4o-mini"
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="And now?", previous_response_id=first.id)
    # The conversation is held where it was made: the continuation cannot go to another model's cheap call.
    assert "strong-only" in raw.headers["x-route"] and raw.parse().model == "gpt-4o"
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Later [[sim:latency=50]]", background=True)
    assert "strong-only" in raw.headers["x-route"] and raw.parse().model == "gpt-4o"
    assert ledger_row(raw.headers["x-request-id"]).usage_estimated  # billed at its worst case until read back


def test_garbage_include_is_a_400(client: openai.OpenAI, rule: RoutingRule) -> None:
    for extra in ({"include": "message.output_text.logprobs"}, {"include": [7]}, {"top_logprobs": 99}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(model="gpt-4o", input="Hi", extra_body=extra)
        assert refused.value.param in ("include", "top_logprobs")


def test_another_tenant_gets_no_cascade(gateway: str, rule: RoutingRule, upstream: str) -> None:
    other = tenant_make(upstream_url=upstream)
    wait_key_live(gateway, other.key.plaintext)
    raw = sdk(gateway, other.key.plaintext).responses.with_raw_response.create(
        model="gpt-4o", input="Classify [[sim:gpt-4o-mini/confidence=0.95]]"
    )
    assert raw.parse().model == "gpt-4o" and raw.headers["x-route"] == "direct"
