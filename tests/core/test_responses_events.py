"""A Responses answer's logprob confidence and its replay as typed events: exact on well-formed answers,
never a crash on garbage (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.core.responses_events import events_from_response
from apps.core.routing import response_confidence

CAUGHT = (KeyError, TypeError, ValueError, AttributeError, OverflowError)  # what the cascade counts as no logprobs


def _message(text: str, logprobs: list[float]) -> dict[str, Any]:
    entries = [{"token": "t", "bytes": [116], "logprob": lp, "top_logprobs": []} for lp in logprobs]
    return {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": entries}]}  # fmt: skip


def test_confidence_is_the_lowest_over_output_texts_and_none_without_logprobs() -> None:
    response = {"output": [{"type": "reasoning", "id": "rs_1"}, _message("a", [math.log(0.8), math.log(0.5)]),
                           _message("b", [math.log(0.9)])]}  # fmt: skip
    assert abs(response_confidence(response, tokens=1, aggregate="min") - 0.8) < 1e-9  # type: ignore[operator]
    assert abs(response_confidence(response, tokens=2, aggregate="joint") - 0.4) < 1e-9  # type: ignore[operator]
    assert response_confidence({"output": [_message("a", [])]}, tokens=1, aggregate="min") is None
    assert response_confidence({"output": [{"type": "function_call"}]}, tokens=1, aggregate="min") is None


def test_events_replay_the_answer_in_order_ending_with_its_status() -> None:
    response = {"id": "resp_1", "status": "incomplete", "output": [
        {"type": "reasoning", "id": "rs_1", "summary": []}, _message("Hello there", [-0.1]),
        {"type": "function_call", "id": "fc_1", "call_id": "c", "name": "f", "arguments": "{}"}]}  # fmt: skip
    events = [orjson.loads(block.split(b"\ndata: ", 1)[1]) for block in events_from_response(response).split(b"\n\n")
              if block]  # fmt: skip
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"] == response
    delta = next(e for e in events if e["type"] == "response.output_text.delta")
    assert delta["delta"] == "Hello there" and delta["logprobs"][0]["logprob"] == -0.1
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.done"] == [0, 1, 2]


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
# Integers as orjson reads them (64 bits); the answers replayed are parsed provider bodies.
field = st.sampled_from(["output", "status", "type", "content", "logprobs", "logprob", "text", "id", "arguments"])
shaped = st.recursive(
    json_value, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field, inner, max_size=4), max_leaves=16
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field, shaped, max_size=4))
def test_garbage_answers_never_crash_the_replay_and_confidence_fails_only_as_the_cascade_expects(
    response: dict[str, Any],
) -> None:
    try:
        response_confidence(response, tokens=3, aggregate="mean")
    except CAUGHT:
        pass
    assert events_from_response(response).endswith(b"\n\n")
