"""The Responses <-> Chat translation (apps/core/responses_chat.py, responses_chat_stream.py): requests,
answers, streams, and what garbage gets (a 400, never an exception of another kind)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.core.errors import GatewayError
from apps.core.responses import usage_counts, validate_responses
from apps.core.responses_chat import completion_to_response, responses_to_chat, stored_items
from apps.core.responses_chat_stream import ChatToResponses

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 9,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 5},
}


def test_request_fields_are_translated() -> None:
    chat = responses_to_chat(
        {
            "model": "gpt-4o",
            "instructions": "Be brief.",
            "input": "Hi",
            "max_output_tokens": 50,
            "reasoning": {"effort": "low"},
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}},
            "temperature": 0.2,
            "store": True,
            "metadata": {"a": "b"},
            "stream": True,
            "service_tier": "flex",
        }
    )
    assert chat == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "temperature": 0.2,
        "service_tier": "flex",
        "max_completion_tokens": 50,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather.",
                    "parameters": WEATHER["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "reasoning_effort": "low",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_history_and_function_items_become_paired_chat_messages() -> None:
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
    ]
    chat = responses_to_chat(
        {
            "model": "m",
            "input": [
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": [{"type": "input_image", "image_url": "https://x.example/a.png"}]},
            ],
        },
        history,
    )
    assert chat["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]},
    ]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input"),
        ({"input": "x", "background": True}, "background"),
    ],
)
def test_what_chat_cannot_carry_is_a_400(payload: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as exc:
        responses_to_chat({"model": "m", **payload})
    assert (exc.value.status, exc.value.param) == (400, param)


def test_completion_becomes_a_response_with_usage_details() -> None:
    completion = {
        "model": "gpt-4o-2024",
        "service_tier": "default",
        "usage": USAGE,
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                    ],
                },
            }
        ],
    }
    response = completion_to_response(completion, response_id="resp_abc", payload={"model": "gpt-4o", "input": "x"})
    assert (response["id"], response["object"], response["status"], response["model"]) == (
        "resp_abc",
        "response",
        "completed",
        "gpt-4o-2024",
    )
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][0]["content"][0]["text"] == "Let me check."
    assert response["output"][1]["call_id"] == "call_9"
    counts = usage_counts(response["usage"])
    assert counts is not None and (counts.prompt_tokens, counts.cached_tokens) == (20, 4)
    assert (counts.completion_tokens, counts.reasoning_tokens) == (9, 5)


def test_a_cut_answer_is_incomplete() -> None:
    completion = {"choices": [{"finish_reason": "length", "message": {"content": "Once upon"}}], "usage": USAGE}
    response = completion_to_response(completion, response_id="resp_x", payload={"model": "m", "max_output_tokens": 2})
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["max_output_tokens"] == 2


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "c", "model": "gpt-4o", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _events(out: bytes) -> list[dict[str, Any]]:
    events = []
    for event in out.split(b"\n\n"):
        if event:
            kind, data = event.split(b"\n")
            events.append(orjson.loads(data[len(b"data: ") :]))
            assert kind == b"event: " + events[-1]["type"].encode()
    return events


def test_stream_events_are_typed_numbered_and_end_with_usage() -> None:
    stream = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk(
            {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get_weather", "arguments": '{"ci'}}]}
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]}),
        _chunk({}, "tool_calls"),
        b"data: " + orjson.dumps({"choices": [], "usage": USAGE}) + b"\n\n",
        b"data: [DONE]\n\n",
    ]
    translator = ChatToResponses(
        response_id="resp_1", payload={"model": "gpt-4o", "input": "x"}, model="gpt-4o", max_event_bytes=10_000
    )
    # Split anywhere: events wait for their end.
    whole = b"".join(stream)
    out = b"".join(translator.feed(whole[i : i + 7]) for i in range(0, len(whole), 7))
    events = _events(out)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens_details"]["reasoning_tokens"] == 5
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["output"][1]["arguments"] == '{"city":"Paris"}' and final["output"][1]["call_id"] == "call_1"


def test_stream_without_done_has_no_terminal_event_and_an_error_fails() -> None:
    translator = ChatToResponses(response_id="resp_1", payload={"model": "m"}, model="m", max_event_bytes=10_000)
    events = _events(translator.feed(_chunk({"content": "Hi"})))
    assert not any(e["type"].startswith("response.completed") for e in events)
    failed = _events(translator.feed(b'data: {"error": {"message": "boom", "type": "server_error"}}\n\n'))
    assert [e["type"] for e in failed] == ["response.failed"] and failed[0]["response"]["error"]["message"] == "boom"


def test_stored_items_get_ids_and_parts() -> None:
    items = stored_items(
        [{"role": "user", "content": "Hi"}, {"type": "function_call_output", "call_id": "c"}], "resp_7"
    )
    assert [i["id"] for i in items] == ["msg_7_0", "item_7_1"]
    assert items[0] == {
        "type": "message",
        "role": "user",
        "id": "msg_7_0",
        "content": [{"type": "input_text", "text": "Hi"}],
    }


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
field = st.sampled_from(
    [
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "temperature",
        "background",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field, json_value, max_size=5))
def test_garbage_is_validated_or_refused_never_crashes(payload: dict[str, Any]) -> None:
    """Whatever a client sends: validation or the translation answers a 400, or the result is JSON."""
    payload = {"model": "m", **payload}
    try:
        validate_responses(payload)
        orjson.dumps(responses_to_chat(payload))
    except GatewayError as exc:
        assert exc.status == 400


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.sampled_from([_chunk({"content": "a"}), b"data: [DONE]\n\n"]), max_size=8))
def test_garbage_stream_never_crashes(chunks: list[bytes]) -> None:
    translator = ChatToResponses(response_id="resp_1", payload={"model": "m"}, model="m", max_event_bytes=64)
    for chunk in chunks:
        assert isinstance(translator.feed(chunk), bytes)
