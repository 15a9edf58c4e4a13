"""The request contract: validation, attribution and the worst case, as pure functions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.core.errors import GatewayError
from apps.core.request import (
    ENDPOINT_CHAT,
    ENDPOINT_COMPLETIONS,
    ENDPOINT_EMBEDDINGS,
    FILE_WORST_CASE_TOKENS,
    IMAGE_WORST_CASE_TOKENS,
    MAX_DEPTH,
    _too_deep,
    attribution,
    prompt_estimate,
    shallow_json,
    validate,
    worst_case,
)
from apps.core.text import text_tokens

HELLO = [{"role": "user", "content": "hello"}]


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": HELLO, **extra}


def _refused(endpoint: str, payload: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        validate(endpoint, payload)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "n"])
@pytest.mark.parametrize("value", [-1_000_000_000, -1, 0, 1.5, 16.0, "16", True, None.__class__, 10**18])
def test_token_counts_must_be_sane_integers(name: str, value: Any) -> None:
    if value is type(None):
        value = [5]
    error = _refused(ENDPOINT_CHAT, _chat(**{name: value}))
    assert error.param == name
    assert error.code in ("invalid_type", "integer_below_min_value", "integer_above_max_value")


def test_best_of_is_bounded_and_at_least_n() -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
    assert _refused(ENDPOINT_COMPLETIONS, {**body, "best_of": 21}).param == "best_of"
    assert _refused(ENDPOINT_COMPLETIONS, {**body, "best_of": 2, "n": 3}).param == "best_of"
    validate(ENDPOINT_COMPLETIONS, {**body, "best_of": 3, "n": 2})


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (12345, "messages[0].content"),
        ({"text": "x"}, "messages[0].content"),
        ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
        ([{"type": "text", "text": None}], "messages[0].content[0].text"),
        ([{"type": "text"}], "messages[0].content[0].text"),
        (["just a string"], "messages[0].content[0]"),
        ([{"text": "no type"}], "messages[0].content[0]"),
        ([{"type": "image_url", "image_url": "http://x"}], "messages[0].content[0].image_url"),
        ([{"type": "file", "file": "abc"}], "messages[0].content[0].file"),
        (None, "messages[0].content"),
    ],
)
def test_content_must_be_a_string_or_well_formed_parts(content: Any, param: str) -> None:
    error = _refused(ENDPOINT_CHAT, _chat(messages=[{"role": "user", "content": content}]))
    assert error.param == param and error.code == "invalid_type"


def test_assistant_turns_may_have_null_content() -> None:
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]  # fmt: skip
    validate(ENDPOINT_CHAT, _chat(messages=messages))


@pytest.mark.parametrize("endpoint", [ENDPOINT_CHAT, ENDPOINT_COMPLETIONS])
@pytest.mark.parametrize("options", ["x", 1, [True], {"include_usage": "yes"}])
def test_stream_options_must_be_an_object(endpoint: str, options: Any) -> None:
    body = _chat() if endpoint == ENDPOINT_CHAT else {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
    error = _refused(endpoint, {**body, "stream": True, "stream_options": options})
    assert error.param.startswith("stream_options")


@pytest.mark.parametrize("tools", ["x", {"type": "function"}, [1], ["x"]])
def test_tools_must_be_an_array_of_objects(tools: Any) -> None:
    assert _refused(ENDPOINT_CHAT, _chat(tools=tools)).param == "tools"


def test_deep_nesting_is_refused_before_anything_recurses() -> None:
    nested: Any = "x"
    for _ in range(500):
        nested = [nested]
    assert _refused(ENDPOINT_COMPLETIONS, {"model": "m", "prompt": nested}).param == "prompt"
    deep: Any = {}
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    _refused(ENDPOINT_CHAT, _chat(response_format=deep))
    shallow: Any = {}
    for _ in range(MAX_DEPTH - 2):
        shallow = {"a": shallow}
    validate(ENDPOINT_CHAT, _chat(response_format=shallow))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(alphabet='ab{[]}"\\'),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="k{[", max_size=2), inner, max_size=3),
    max_leaves=80,
)


@given(_JSON, st.integers(min_value=0, max_value=70))
@settings(max_examples=300)
def test_a_body_judged_shallow_from_its_bytes_is_never_too_deep(value: Any, wrap: int) -> None:
    for _ in range(wrap):  # some deep enough to matter
        value = {"a": value}
    raw = orjson.dumps({"model": "m", "messages": HELLO, "response_format": {"x": value}})
    if shallow_json(raw):  # the shortcut may only skip the walk where the walk would find nothing
        assert not _too_deep(orjson.loads(raw), MAX_DEPTH)


def test_a_deep_body_is_refused_whether_or_not_its_bytes_are_counted() -> None:
    deep: Any = {}
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    raw = orjson.dumps(_chat(response_format=deep))
    assert not shallow_json(raw)
    _refused(ENDPOINT_CHAT, orjson.loads(raw))


@pytest.mark.parametrize(
    "value",
    ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
)
def test_prompt_and_input_take_the_shapes_openai_takes(value: Any) -> None:
    validate(ENDPOINT_COMPLETIONS, {"model": "m", "prompt": value})
    validate(ENDPOINT_EMBEDDINGS, {"model": "m", "input": value})


@pytest.mark.parametrize("value", [[None], [1.5], [[1, "a"]], [[[1]]], [-1], [True], {"a": 1}, 7])
def test_prompt_and_input_refuse_other_shapes(value: Any) -> None:
    assert _refused(ENDPOINT_COMPLETIONS, {"model": "m", "prompt": value}).param == "prompt"
    assert _refused(ENDPOINT_EMBEDDINGS, {"model": "m", "input": value}).param == "input"


# --- attribution -------------------------------------------------------------------------------


def test_attribution_headers_then_user_then_the_keys_default() -> None:
    assert attribution(feature="hdr", end_user="eu", user="u:f", default_feature="dflt") == ("hdr", "eu")
    assert attribution(feature="", end_user="", user="u:f", default_feature="dflt") == ("f", "u")
    assert attribution(feature="", end_user="", user="u", default_feature="dflt") == ("dflt", "u")
    assert attribution(feature="", end_user="", user=None, default_feature="dflt") == ("dflt", "")
    assert attribution(feature="", end_user="", user=5, default_feature="") == ("", "")


def test_attribution_is_clean_for_the_columns() -> None:
    feature, end_user = attribution(feature="x" * 300 + "\x00", end_user="", user="a\x00b:feat\r\n", default_feature="")
    assert feature == "x" * 100
    assert end_user == "ab"
    assert attribution(feature="", end_user="", user="u:f\x1b[31m", default_feature="") == ("f[31m", "u")


# --- the worst case ----------------------------------------------------------------------------


def test_output_is_the_larger_cap_within_the_models_limit_times_copies() -> None:
    def output(model_max: int | None, **fields: Any) -> int:
        body = _chat(**fields)
        validate(ENDPOINT_CHAT, body)
        return worst_case(
            ENDPOINT_CHAT, body, model_max_output=model_max, unknown_model_max_output=128_000
        ).output_tokens

    assert output(16_384) == 16_384
    assert output(16_384, max_tokens=30_000, max_completion_tokens=100) == 16_384
    assert output(None, max_tokens=30_000, max_completion_tokens=100) == 30_000
    assert output(None) == 128_000
    assert output(16_384, max_tokens=100, n=3) == 300
    body = {"model": "m", "prompt": "hi", "max_tokens": 10, "n": 2, "best_of": 5}
    assert worst_case(ENDPOINT_COMPLETIONS, body, model_max_output=None, unknown_model_max_output=9).output_tokens == 45
    assert worst_case(ENDPOINT_EMBEDDINGS, {"model": "m", "input": "hi"}, model_max_output=None,
                      unknown_model_max_output=9).output_tokens == 0  # fmt: skip


def test_prompt_estimate_counts_tools_schemas_images_and_files() -> None:
    plain = prompt_estimate(ENDPOINT_CHAT, _chat())
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object",
            "properties": {f"field_{i}": {"type": "string", "description": "d" * 40} for i in range(20)}}}}  # fmt: skip
    with_tools = prompt_estimate(ENDPOINT_CHAT, _chat(tools=[tool]))
    assert with_tools - plain >= text_tokens(str(tool)) // 2
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": tool["function"]["parameters"]}}
    assert prompt_estimate(ENDPOINT_CHAT, _chat(response_format=schema)) > plain + 200
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    image = {"role": "user", "content": [{"type": "text", "text": "what is this?"}, picture]}
    assert prompt_estimate(ENDPOINT_CHAT, _chat(messages=[image])) >= IMAGE_WORST_CASE_TOKENS
    pdf = {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
    assert prompt_estimate(ENDPOINT_CHAT, _chat(messages=[pdf])) >= FILE_WORST_CASE_TOKENS


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "messages", "max_tokens", "n", "stream", "stream_options", "tools",
                                        "user", "temperature", "max_completion_tokens", "response_format"]),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                               inner, max_size=3),
                                    max_leaves=12)))  # fmt: skip
def test_any_body_is_accepted_or_refused_with_a_400_never_a_crash(body: dict[str, Any]) -> None:
    """Property: validation answers every JSON body with acceptance or a 400, and an accepted body has a
    non-negative worst case."""
    for endpoint in (ENDPOINT_CHAT, ENDPOINT_COMPLETIONS, ENDPOINT_EMBEDDINGS):
        try:
            validate(endpoint, body)
        except GatewayError as exc:
            assert exc.status == 400 and exc.message
            continue
        worst = worst_case(endpoint, body, model_max_output=None, unknown_model_max_output=1000)
        assert worst.prompt_tokens >= 0 and worst.output_tokens >= 0
