"""The SSE relay, without a network: whole events out, the usage chunk noted, no unbounded buffering."""

from __future__ import annotations

import orjson

from apps.gateway.stages.relay import SseRelay, sse_from_completion


def _event(data: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _delta(text: str, finish: str | None = None) -> bytes:
    return _event(
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    )


USAGE = _event({"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"


def test_only_whole_events_pass_and_a_split_event_waits_for_its_end() -> None:
    relay = SseRelay(strip_usage_chunk=False, max_event_bytes=1024)
    first, second = _delta("Hel"), _delta("lo")
    assert relay.feed(first + second[:10]) == first
    assert relay.feed(second[10:]) == second
    assert relay.flush() == b""


def test_the_usage_chunk_is_noted_and_removed_when_the_app_did_not_ask_for_it() -> None:
    stripping = SseRelay(strip_usage_chunk=True, max_event_bytes=1024)
    out = stripping.feed(_delta("Hi", "stop") + USAGE + DONE)
    assert out == _delta("Hi", "stop") + DONE
    assert stripping.usage == {"prompt_tokens": 5, "completion_tokens": 2} and stripping.done
    keeping = SseRelay(strip_usage_chunk=False, max_event_bytes=1024)
    assert keeping.feed(_delta("Hi", "stop") + USAGE + DONE) == _delta("Hi", "stop") + USAGE + DONE


def test_garbage_usage_and_non_json_events_pass_through_unbelieved() -> None:
    relay = SseRelay(strip_usage_chunk=True, max_event_bytes=1024)
    garbage = b'data: {"choices": [], "usage": "lots"}\n\n' + b"data: {not json\n\n" + b'data: {"usage": null}\n\n'
    assert relay.feed(garbage) == garbage
    assert relay.usage is None and not relay.done


def test_an_upstream_without_event_boundaries_overflows_instead_of_buffering() -> None:
    relay = SseRelay(strip_usage_chunk=False, max_event_bytes=100)
    assert relay.feed(b"data: " + b"x" * 60) == b""
    assert not relay.overflowed
    assert relay.feed(b"x" * 60) == b""
    assert relay.overflowed and relay.flush() == b""


def test_crlf_and_cr_framed_streams_are_framed_even_when_a_crlf_is_split_across_chunks() -> None:
    events = _delta("Hel") + _delta("lo", "stop") + USAGE + DONE
    for newline in (b"\r\n", b"\r"):
        framed = events.replace(b"\n", newline)
        relay = SseRelay(strip_usage_chunk=True, max_event_bytes=1024)
        out = b"".join(relay.feed(framed[i : i + 7]) for i in range(0, len(framed), 7)) + relay.flush()
        assert out == _delta("Hel") + _delta("lo", "stop") + DONE
        assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 2} and relay.done
        assert not relay.overflowed


def test_a_crlf_framed_stream_longer_than_one_event_limit_does_not_overflow() -> None:
    relay = SseRelay(strip_usage_chunk=False, max_event_bytes=200)
    framed = (_delta("x" * 50) * 20).replace(b"\n", b"\r\n")
    out = b"".join(relay.feed(framed[i : i + 64]) for i in range(0, len(framed), 64))
    assert not relay.overflowed and out == _delta("x" * 50) * 20


def test_completion_tokens_are_estimated_from_what_was_seen() -> None:
    relay = SseRelay(strip_usage_chunk=False, max_event_bytes=1024)
    relay.feed(_delta("abcd" * 5) + _delta("efgh" * 5))
    assert relay.estimate_completion_tokens() == 10


def test_a_stored_answer_replays_as_a_stream_and_rebuilds_to_the_same_text() -> None:
    stored = {"id": "c1", "model": "gpt-4o-mini", "usage": {"prompt_tokens": 3, "completion_tokens": 4},
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello  there, friend."},
                           "finish_reason": "stop"}]}  # fmt: skip
    events = b"".join(sse_from_completion(stored, include_usage=True, request_id="req_1"))
    relay = SseRelay(strip_usage_chunk=False, max_event_bytes=1024)
    assert relay.feed(events) == events and relay.done
    rebuilt = relay.completion()
    assert rebuilt is not None
    assert rebuilt["choices"][0]["message"]["content"] == "Hello  there, friend."
    assert rebuilt["usage"] == stored["usage"]


def test_a_stream_that_did_not_finish_is_not_rebuilt_for_the_cache() -> None:
    relay = SseRelay(strip_usage_chunk=False, max_event_bytes=1024)
    relay.feed(_delta("cut"))
    assert relay.completion() is None
