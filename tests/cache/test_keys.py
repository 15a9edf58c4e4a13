"""What must and must not change the exact key, the compatibility fingerprint and the embedded text."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.cache.keys import DELIVERY_ONLY, TRACE_CHARS, compatibility_fingerprint, exact_key, semantic_text


def request(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a support agent for Acme."},
            {"role": "user", "content": "How do I reset my password?"},
        ],
        "temperature": 0.7,
    }
    payload.update(overrides)
    return payload


def with_messages(*contents: tuple[str, Any]) -> dict[str, Any]:
    return request(messages=[{"role": role, "content": content} for role, content in contents])


# ---- exact_key ---------------------------------------------------------------------------------


def _reference_canonical(value: Any) -> Any:
    # The key's definition as first written (isinstance chains, two passes a message): the fast code in
    # apps.cache.keys must give the same digest, or keys written before it stop matching the ledger's.
    # The one change since: a whole float past orjson's integers stays a float (it used to raise).
    if isinstance(value, float) and value.is_integer() and -(2**63) <= value < 2**64:
        return int(value)
    if isinstance(value, dict):
        return {k: _reference_canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_reference_canonical(v) for v in value]
    return value


def _reference_key(payload: dict[str, Any]) -> str:
    def content(value: Any) -> Any:
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, list):
            return [
                {**p, "text": p["text"].strip()} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                for p in value
            ]
        return value

    def message(value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        normalised = dict(value)
        if "content" in normalised:
            normalised["content"] = content(normalised["content"])
        return _reference_canonical(normalised)

    params = {k: v for k, v in payload.items() if k != "messages" and k not in DELIVERY_ONLY}
    if params.get("n") == 1:
        del params["n"]
    value = {"messages": [message(m) for m in payload.get("messages", [])], "parameters": _reference_canonical(params)}
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
_message = st.dictionaries(
    st.sampled_from(["role", "content", "name", "tool_calls", "x"]),
    _json | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=12)}), max_size=3),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(_message | _json, max_size=4),
    parameters=st.dictionaries(st.sampled_from(["model", "temperature", "n", "stream", "tools", "seed"]), _json),
)
def test_exact_key_is_the_digest_it_always_was(messages: list[Any], parameters: dict[str, Any]) -> None:
    payload = {**parameters, "messages": messages}
    # Through JSON, as the gateway gets it (orjson's types, floats as they round-trip).
    payload = orjson.loads(orjson.dumps(payload))
    assert exact_key(payload) == _reference_key(payload)


@pytest.mark.parametrize(
    "variant",
    [
        request(stream=True),
        request(stream=True, stream_options={"include_usage": True}),
        request(user="end-user-42"),
        request(metadata={"feature": "chat"}, store=True),
        request(service_tier="flex", prompt_cache_key="abc", safety_identifier="u1"),
        request(temperature=0.70),
        request(seed=None),
        request(n=1),
        with_messages(("system", "  You are a support agent for Acme.\n"), ("user", "\nHow do I reset my password?  ")),
    ],
)
def test_exact_key_ignores_delivery_and_surrounding_whitespace(variant: dict[str, Any]) -> None:
    assert exact_key(variant) == exact_key(request())


def test_exact_key_strips_text_parts_too() -> None:
    padded = with_messages(
        ("user", [{"type": "text", "text": " Hi \n"}, {"type": "image_url", "image_url": {"url": "u"}}])
    )
    plain = with_messages(("user", [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "u"}}]))
    other_image = with_messages(
        ("user", [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "v"}}])
    )
    assert exact_key(padded) == exact_key(plain)
    assert exact_key(other_image) != exact_key(plain)


def test_exact_key_treats_whole_floats_as_ints() -> None:
    assert exact_key(request(temperature=1)) == exact_key(request(temperature=1.0))
    assert exact_key(request(max_tokens=100)) == exact_key(request(max_tokens=100.0))


@pytest.mark.parametrize(
    "variant",
    [
        request(model="gpt-4o"),
        request(temperature=0.71),
        request(temperature=0),
        request(top_p=0.9),
        request(max_tokens=50),
        request(max_completion_tokens=50),
        request(n=2),
        request(seed=7),
        request(stop=["\n"]),
        request(logprobs=True),
        request(logprobs=True, top_logprobs=3),
        request(presence_penalty=0.5),
        request(frequency_penalty=0.5),
        request(logit_bias={"50256": -100}),
        request(response_format={"type": "json_object"}),
        request(tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}]),
        request(tool_choice="none"),
        request(parallel_tool_calls=False),
        request(reasoning_effort="high"),
        request(some_future_parameter="x"),
        with_messages(("system", "You are a support agent for Acme."), ("user", "How do I reset my Password?")),
        with_messages(("system", "You are a support agent for Acme."), ("user", "How do I  reset my password?")),
        with_messages(("system", "You are terse."), ("user", "How do I reset my password?")),
        with_messages(("user", "How do I reset my password?")),
        with_messages(
            ("system", "You are a support agent for Acme."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "How do I reset my password?"),
        ),
    ],
)
def test_exact_key_changes_with_anything_that_changes_the_answer(variant: dict[str, Any]) -> None:
    assert exact_key(variant) != exact_key(request())


def test_missing_temperature_is_not_assumed_to_be_the_default() -> None:
    without = request()
    del without["temperature"]
    assert exact_key(without) != exact_key(request(temperature=1))


def test_exact_key_does_not_mutate_the_payload() -> None:
    payload = with_messages(("user", "  padded  "))
    before = copy.deepcopy(payload)
    exact_key(payload)
    compatibility_fingerprint(payload)
    semantic_text(payload["messages"])
    assert payload == before


@pytest.mark.parametrize("value", [1e300, -1e300, 2.0**64, -(2.0**63) * 2, 1.2345678901234568e29])
def test_a_whole_float_too_big_for_an_integer_still_gets_a_key(value: float) -> None:
    # Sent as 1e300 (or as a 30-digit integer, which JSON parsing makes this float), it failed the request.
    keys = {
        exact_key(request(seed=value)),
        exact_key(request(temperature=value)),
        compatibility_fingerprint(request(x=value)),
    }
    assert len(keys) == 3 and all(len(key) == 64 for key in keys)
    assert exact_key(request(seed=value)) != exact_key(request(seed=1))


def test_exact_key_is_sha256_hex() -> None:
    key = exact_key(request())
    assert len(key) == 64
    int(key, 16)


# ---- compatibility_fingerprint -----------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        with_messages(("system", "You are a support agent for Acme."), ("user", "I forgot my password, help")),
        with_messages(
            ("system", "You are a support agent for Acme."),
            ("user", "Hi"),
            ("assistant", "Hello! How can I help?"),
            ("user", "Password reset?"),
        ),
        with_messages(("system", " You are a support agent for Acme. "), ("user", "x")),
        request(stream=True, user="someone-else", metadata={"a": "b"}),
    ],
)
def test_fingerprint_ignores_the_conversation_and_delivery(variant: dict[str, Any]) -> None:
    base = compatibility_fingerprint(request())
    variant.setdefault("temperature", 0.7)
    assert compatibility_fingerprint(variant) == base


@pytest.mark.parametrize(
    "variant",
    [
        request(model="gpt-4o"),
        request(temperature=0.71),
        request(top_p=0.5),
        request(tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}]),
        request(tool_choice="required"),
        request(response_format={"type": "json_object"}),
        request(max_tokens=10),
        request(n=3),
        request(seed=1),
        request(stop="END"),
        request(logprobs=True),
        request(presence_penalty=1),
        request(frequency_penalty=1),
        with_messages(("system", "You are a pirate."), ("user", "How do I reset my password?")),
        with_messages(("developer", "You are a support agent for Acme."), ("user", "How do I reset my password?")),
        with_messages(("user", "How do I reset my password?")),
    ],
)
def test_fingerprint_changes_with_parameters_and_system_prompt(variant: dict[str, Any]) -> None:
    variant.setdefault("temperature", 0.7)
    assert compatibility_fingerprint(variant) != compatibility_fingerprint(request())


# ---- semantic_text -----------------------------------------------------------------------------


def test_a_single_question_is_embedded_alone_without_the_system_prompt() -> None:
    assert semantic_text(request()["messages"]) == "How do I reset my password?"


def test_text_parts_are_joined_and_whitespace_collapsed() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Sync\nfails"}, {"type": "image_url"},
                                             {"type": "text", "text": "  on iOS "}]}]  # fmt: skip
    assert semantic_text(messages) == "Sync fails on iOS"


def test_the_same_follow_up_differs_after_different_conversations() -> None:
    ios = [
        {"role": "user", "content": "Sync fails on iOS"},
        {"role": "assistant", "content": "Update the app, then sign out and back in."},
        {"role": "user", "content": "and for Android?"},
    ]
    billing = [
        {"role": "user", "content": "Can I pay by invoice?"},
        {"role": "assistant", "content": "Yes, on the Team plan."},
        {"role": "user", "content": "and for Android?"},
    ]
    assert semantic_text(ios) != semantic_text(billing)
    assert semantic_text(ios).startswith("and for Android?")
    # Most recent turn first.
    assert semantic_text(ios).index("assistant: Update") < semantic_text(ios).index("user: Sync fails on iOS")


def test_turns_after_the_last_user_message_are_in_the_trace() -> None:
    call = {"name": "weather", "arguments": '{"city":"Paris"}'}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": "1", "content": "18C, sunny"},
    ]
    text = semantic_text(messages)
    assert text.startswith("Weather in Paris?")
    assert "tool: 18C, sunny" in text
    assert 'weather({"city":"Paris"})' in text


def test_the_trace_is_bounded() -> None:
    messages: list[dict[str, Any]] = []
    for i in range(50):
        messages += [
            {"role": "user", "content": f"question {i} " * 30},
            {"role": "assistant", "content": "answer " * 60},
        ]
    messages.append({"role": "user", "content": "final question"})
    text = semantic_text(messages)
    question, trace = text.split("\n\n", 1)
    assert question == "final question"
    assert len(trace) <= TRACE_CHARS + 3 * 10  # the turns plus their " | " separators
    assert "question 49" in trace
    assert "question 0 " not in trace


def test_a_conversation_without_a_user_message_is_only_its_trace() -> None:
    messages = [{"role": "system", "content": "x"}, {"role": "assistant", "content": "Hi there"}]
    assert semantic_text(messages) == "assistant: Hi there"
