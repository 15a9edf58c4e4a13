"""The Messages <-> Chat translation (apps/core/anthropic.py, anthropic_stream.py): the round-trip property,
answers, usage, errors and streams, and what garbage gets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.core.anthropic import (
    chat_to_messages,
    completion_to_message,
    error_to_anthropic,
    error_to_openai,
    message_to_completion,
    messages_to_chat,
    usage_to_chat,
    without_cache_control,
)
from apps.core.anthropic_stream import ChatToMessages, MessagesToChat
from apps.core.errors import GatewayError
from apps.core.pricing import PriceRow
from apps.core.request import validate

DEFAULT_MAX = 4096

text = st.text(max_size=30)
words = st.text(alphabet="abcdefghij _", min_size=1, max_size=12)
cache_mark = st.sampled_from([None, {"type": "ephemeral"}])


@st.composite
def text_part(draw: st.DrawFn) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "text", "text": draw(text)}
    mark = draw(cache_mark)
    if mark is not None:
        part["cache_control"] = mark
    return part


image_part = st.one_of(
    st.builds(lambda d: {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{d}"}}, words),
    st.builds(lambda d: {"type": "image_url", "image_url": {"url": f"https://img.example/{d}.png"}}, words),
)
tool_call = st.builds(
    lambda i, name, args: {
        "id": f"call_{i}",
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(args).decode()},
    },  # fmt: skip
    st.integers(0, 999),
    words,
    st.dictionaries(words, st.one_of(st.integers(-5, 5), text, st.booleans()), max_size=3),
)


@st.composite
def turn(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
    if role in ("system", "developer"):
        return {"role": role, "content": draw(st.one_of(text, st.lists(text_part(), min_size=1, max_size=3)))}
    if role == "user":
        parts = st.lists(st.one_of(text_part(), image_part), min_size=1, max_size=3)
        return {"role": "user", "content": draw(st.one_of(text, parts))}
    if role == "tool":
        return {"role": "tool", "tool_call_id": f"call_{draw(st.integers(0, 999))}", "content": draw(text)}
    calls = draw(st.lists(tool_call, max_size=2))
    if not calls:
        return {"role": "assistant", "content": draw(st.one_of(text, st.none()))}
    content = draw(st.one_of(st.none(), st.text(min_size=1, max_size=30)))
    return {"role": "assistant", "content": content, "tool_calls": calls}


tool = st.builds(
    lambda name, desc, params: {
        "type": "function",
        "function": {
            "name": name,
            **({"description": desc} if desc is not None else {}),
            **({"parameters": params} if params is not None else {}),
        },
    },  # fmt: skip
    words,
    st.one_of(st.none(), text),
    st.one_of(st.none(), st.just({"type": "object", "properties": {"q": {"type": "string"}}})),
)


@st.composite
def chat_request(draw: st.DrawFn) -> dict[str, Any]:
    messages = draw(st.lists(turn(), min_size=1, max_size=6))
    if all(m["role"] in ("system", "developer") for m in messages):
        messages.append({"role": "user", "content": draw(text)})  # Anthropic needs a turn: see the next test
    request: dict[str, Any] = {
        "model": draw(st.text(alphabet="abcdefghij-", min_size=1, max_size=12)),
        "messages": messages,
    }
    optional = {
        "max_tokens": st.integers(1, 10_000),
        "max_completion_tokens": st.integers(1, 10_000),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "stop": st.one_of(words, st.lists(words, min_size=1, max_size=3)),
        "stream": st.booleans(),
        "user": words,
        "tools": st.lists(tool, min_size=1, max_size=3),
        "tool_choice": st.one_of(
            st.sampled_from(["auto", "none", "required"]),
            st.builds(lambda n: {"type": "function", "function": {"name": n}}, words),
        ),
        "parallel_tool_calls": st.booleans(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            request[name] = draw(strategy)
    return request


def as_parts(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def expected_back(request: dict[str, Any]) -> dict[str, Any]:
    """``request`` as it should come back from Messages, with the module docstring's exceptions applied."""
    back: dict[str, Any] = {"model": request["model"]}
    back["max_tokens"] = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_MAX
    system = [m for m in request["messages"] if m["role"] in ("system", "developer")]
    parts = [part for m in system for part in as_parts(m["content"]) if part["text"]]
    messages: list[dict[str, Any]] = []
    if len(parts) == 1 and set(parts[0]) == {"type", "text"}:
        messages.append({"role": "system", "content": parts[0]["text"]})
    elif parts:
        messages.append({"role": "system", "content": parts})
    for message in request["messages"]:
        if message["role"] == "assistant":
            calls = message.get("tool_calls")
            if not calls:
                messages.append({"role": "assistant", "content": message["content"] or ""})
                continue
            content = as_parts(message["content"]) if message["content"] else None
            calls = [{**c, "function": {**c["function"], "arguments": orjson.dumps(
                orjson.loads(c["function"]["arguments"])).decode()}} for c in calls]  # fmt: skip
            messages.append({"role": "assistant", "content": content, "tool_calls": calls})
        elif message["role"] not in ("system", "developer"):
            messages.append(message)
    back["messages"] = messages
    if "temperature" in request:
        back["temperature"] = min(request["temperature"], 1)
    if "top_p" in request:
        back["top_p"] = request["top_p"]
    if request.get("stream"):
        back["stream"] = True
        back["stream_options"] = {"include_usage": True}
    if request.get("stop"):
        back["stop"] = [request["stop"]] if isinstance(request["stop"], str) else request["stop"]
    if request.get("user"):
        back["user"] = request["user"]
    if request.get("tools"):
        back["tools"] = [
            {"type": "function", "function": {**t["function"], "parameters": t["function"].get(
                "parameters", {"type": "object", "properties": {}})}} for t in request["tools"]
        ]  # fmt: skip
    choice = request.get("tool_choice")
    if choice is not None:
        back["tool_choice"] = choice
    elif request.get("parallel_tool_calls") is False:
        back["tool_choice"] = "auto"
    if request.get("parallel_tool_calls") is False:
        back["parallel_tool_calls"] = False
    return back


@settings(max_examples=300, deadline=None)
@given(chat_request())
def test_chat_to_messages_and_back_keeps_its_meaning(request: dict[str, Any]) -> None:
    validate("chat.completions", request)
    messages = chat_to_messages(request, default_max_tokens=DEFAULT_MAX)
    assert orjson.loads(orjson.dumps(messages)) == messages  # plain JSON, as it goes on the wire
    assert messages_to_chat(messages) == expected_back(request)


def test_a_chat_request_of_system_messages_alone_is_refused() -> None:
    with pytest.raises(GatewayError) as refused:
        chat_to_messages({"model": "m", "messages": [{"role": "system", "content": "x"}]}, default_max_tokens=5)
    assert refused.value.status == 400 and refused.value.param == "messages"


@settings(max_examples=200, deadline=None)
@given(chat_request())
def test_what_a_messages_request_becomes_is_a_valid_chat_request(request: dict[str, Any]) -> None:
    messages = chat_to_messages(request, default_max_tokens=DEFAULT_MAX)
    validate("chat.completions", messages_to_chat(messages))


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | text, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(text, c, max_size=3), max_leaves=20))  # fmt: skip
def test_garbage_messages_requests_get_a_400_or_a_chat_request(garbage: Any) -> None:
    body = garbage if isinstance(garbage, dict) else {"model": "m", "max_tokens": 5, "messages": garbage}
    try:
        chat = messages_to_chat(body)
    except GatewayError as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(chat["messages"], list)


def test_answers_translate_both_ways_with_cache_usage() -> None:
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"order": 7}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 50,
                  "output_tokens": 7},
    }  # fmt: skip
    completion = message_to_completion(message)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"order":7}'}
    assert completion["usage"] == {
        "prompt_tokens": 160, "completion_tokens": 7, "total_tokens": 167,
        "prompt_tokens_details": {"cached_tokens": 50, "cache_write_tokens": 100},
    }  # fmt: skip
    back = completion_to_message(completion)
    assert back["content"] == message["content"] and back["stop_reason"] == "tool_use"
    assert back["usage"] == message["usage"]


def test_cache_writes_and_reads_are_priced_at_their_prices() -> None:
    price = PriceRow.per_mtok(
        effective_from=__import__("datetime").date(2025, 1, 1), input_per_mtok=Decimal(1),
        cached_input_per_mtok=Decimal("0.1"), output_per_mtok=Decimal(5), cache_write_per_mtok=Decimal("1.25"),
    )  # fmt: skip
    usd = price.cost(prompt_tokens=160, cached_tokens=50, completion_tokens=7, cache_write_tokens=100)
    assert usd == (10 * Decimal(1) + 50 * Decimal("0.1") + 100 * Decimal("1.25") + 7 * Decimal(5)) / 1_000_000
    # More writes than uncached prompt tokens are capped; no price for writes means the input price.
    plain = PriceRow.per_mtok(effective_from=price.effective_from, input_per_mtok=Decimal(1),
                              cached_input_per_mtok=Decimal("0.1"), output_per_mtok=Decimal(5))  # fmt: skip
    assert (
        plain.cost(prompt_tokens=10, cached_tokens=0, completion_tokens=0, cache_write_tokens=10**9)
        == Decimal(10) / 1_000_000
    )


@pytest.mark.parametrize("usage", [None, "lots", {"input_tokens": -1, "output_tokens": 3}, {"input_tokens": "9"}])
def test_usage_that_is_not_counts_is_not_believed(usage: Any) -> None:
    translated = usage_to_chat(usage)
    assert translated is None or type(translated["prompt_tokens"]) is not int or translated["prompt_tokens"] < 0


def test_errors_translate_both_ways() -> None:
    ours = GatewayError(429, "Budget 'x' is exhausted.", type="insufficient_quota", code="insufficient_quota")
    assert orjson.loads(error_to_anthropic(429, ours.body())) == {
        "type": "error", "error": {"type": "rate_limit_error", "message": "Budget 'x' is exhausted."}}  # fmt: skip
    overloaded = orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert orjson.loads(error_to_openai(529, overloaded))["error"]["code"] == "overloaded_error"
    assert orjson.loads(error_to_openai(502, b"<html>bad gateway</html>"))["error"]["type"] == "api_error"
    assert orjson.loads(error_to_anthropic(500, b"\xff"))["error"]["type"] == "api_error"


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


ANTHROPIC_STREAM = b"".join([
    _sse("message_start", {"message": {"id": "msg_1", "model": "claude-haiku-4-5", "content": [],
                                       "usage": {"input_tokens": 10, "cache_read_input_tokens": 5}}}),
    _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    _sse("ping", {}),
    _sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    _sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " there"}}),
    _sse("content_block_stop", {"index": 0}),
    _sse("content_block_start", {"index": 1, "content_block": {"type": "tool_use", "id": "toolu_1",
                                                               "name": "lookup", "input": {}}}),
    _sse("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"ord'}}),
    _sse("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": 'er": 7}'}}),
    _sse("content_block_stop", {"index": 1}),
    _sse("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
    _sse("message_stop", {}),
])  # fmt: skip


@pytest.mark.parametrize("size", [1, 7, 64, len(ANTHROPIC_STREAM)])
def test_streams_translate_both_ways_whatever_the_chunking(size: int) -> None:
    to_chat = MessagesToChat(model="claude-haiku-4-5", max_event_bytes=1 << 16)
    chat = b"".join(to_chat.feed(ANTHROPIC_STREAM[i : i + size]) for i in range(0, len(ANTHROPIC_STREAM), size))
    chunks = [orjson.loads(e[6:]) for e in chat.split(b"\n\n") if e.startswith(b"data: {")]
    assert chat.endswith(b"data: [DONE]\n\n")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Hello there"
    arguments = "".join(
        call["function"].get("arguments", "")
        for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or ()
    )  # fmt: skip
    assert orjson.loads(arguments) == {"order": 7}
    assert chunks[-1]["usage"]["prompt_tokens"] == 15 and chunks[-1]["usage"]["completion_tokens"] == 9

    to_messages = ChatToMessages(model="", max_event_bytes=1 << 16)
    events = b"".join(to_messages.feed(chat[i : i + size]) for i in range(0, len(chat), size))
    names = [line[7:].decode() for line in events.split(b"\n") if line.startswith(b"event: ")]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    delta = orjson.loads(events.split(b"event: message_delta\ndata: ")[1].split(b"\n\n")[0])
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {"input_tokens": 10, "output_tokens": 9, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 5}  # fmt: skip


def test_a_stream_without_event_boundaries_is_passed_on_unframed() -> None:
    to_chat = MessagesToChat(model="m", max_event_bytes=100)
    assert to_chat.feed(b"x" * 50) == b""
    assert to_chat.feed(b"x" * 60) == b"x" * 110  # the relay's own bound cuts this stream off
    error = _sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert b'"code":"overloaded_error"' in MessagesToChat(model="m", max_event_bytes=100).feed(error)


def test_cache_marks_are_removed_for_other_vendors() -> None:
    chat = messages_to_chat({"model": "gpt-4o", "max_tokens": 5, "system": [
        {"type": "text", "text": "Long policy", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert chat["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in orjson.dumps(without_cache_control(chat)).decode()
