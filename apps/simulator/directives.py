"""Directives in a prompt (``[[sim:…]]``) that make the simulator misbehave on purpose; see ``apps.simulator``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from apps.simulator.generation import (
    chat_usage,
)
from apps.simulator.replies import (
    DIRECTIVE_ERRORS,
    DONE,
    JSON_HEADERS,
    STREAM_HEADERS,
    Reply,
    invalid,
    sse,
)

TIMEOUT_DIRECTIVE_SECONDS = 30.0

# ``[[sim:echo_header=NAME]]``: rewritten, before the body is parsed, into ``[[sim:answer=VALUE]]``.
ECHO_HEADER_RE = re.compile(rb"\[\[sim:echo_header=([a-z0-9-]{1,64})\]\]")
ECHO_UNSAFE_RE = re.compile(rb"[^A-Za-z0-9._:/ -]")


# ``[[sim:NAME=VALUE]]``, or ``[[sim:MODEL/NAME=VALUE]]`` to apply only to requests for MODEL.
DIRECTIVE_RE = re.compile(r"\[\[sim:(?:([A-Za-z0-9._:-]+)/)?([a-z_0-9]+)(?:=(.*?))?\]\]", re.S)


@dataclass(slots=True)
class Hostile:
    """What a hostile directive does to an otherwise normal answer (see the module docstring)."""

    usage: bytes | None = None  # the raw JSON value
    logprob: float | None = None
    garbage: int | None = None
    huge: int = 0
    unframed: int = 0
    drip_ms: float = 0.0


@dataclass(slots=True)
class Directives:
    status: int | None = None
    delay_s: float = 0.0
    confidence: float | None = None
    answer: str | None = None
    no_usage: bool = False
    fail_after: int | None = None
    hostile: Hostile | None = None


def parse_directives(text: str, model: str) -> Directives | None:
    """The directives in ``text`` that apply to ``model``, or None when there are none (the common case)."""
    if "[[sim:" not in text:
        return None
    found = Directives()
    for scope, name, value in DIRECTIVE_RE.findall(text):
        if scope and scope != model:
            continue
        try:
            if name in DIRECTIVE_ERRORS:
                found.status = found.status or int(name)
            elif name == "timeout":
                found.delay_s += TIMEOUT_DIRECTIVE_SECONDS
            elif name == "latency":
                found.delay_s += max(float(value), 0.0) / 1000
            elif name == "confidence":
                found.confidence = float(value)
                if not 0.0 < found.confidence <= 1.0:
                    raise ValueError(value)
            elif name == "answer":
                found.answer = value
            elif name == "no_usage":
                found.no_usage = True
            elif name == "nul":
                found.answer = "nul \x00 inside"  # JSON carries it as \u0000, which Postgres cannot store
            elif name == "fail_after":
                found.fail_after = int(value)
                if found.fail_after < 0:
                    raise ValueError(value)
            elif name in HOSTILE:
                found.hostile = found.hostile or Hostile()
                HOSTILE[name](found.hostile, value)
            else:
                raise ValueError(name)
        except ValueError:
            raise invalid(f"Invalid simulator directive [[sim:{name}={value}]].") from None
    return found


def echo_headers(raw: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Replace each ``[[sim:echo_header=NAME]]`` with an answer directive naming that request header's
    value (``none`` when absent; characters that could break JSON or the directive dropped)."""
    received = dict(headers)

    def answer(match: re.Match[bytes]) -> bytes:
        value = ECHO_UNSAFE_RE.sub(b"", received.get(match.group(1), b"none"))[:256]
        return b"[[sim:answer=" + (value or b"none") + b"]]"

    return ECHO_HEADER_RE.sub(answer, raw)


def hostile_usage(hostile: Hostile, value: str) -> None:
    orjson.loads(value)  # a typo must fail loudly (JSONDecodeError is a ValueError)
    hostile.usage = value.encode()


def hostile_size(value: str) -> int:
    size = int(value)
    if not 0 <= size <= 256 * 1024 * 1024:
        raise ValueError(value)
    return size


def set_logprob(hostile: Hostile, value: str) -> None:
    hostile.logprob = float(value)


def set_garbage(hostile: Hostile, value: str) -> None:
    hostile.garbage = int(value or 0)


def set_huge(hostile: Hostile, value: str) -> None:
    hostile.huge = hostile_size(value)


def set_unframed(hostile: Hostile, value: str) -> None:
    hostile.unframed = hostile_size(value)


def set_drip(hostile: Hostile, value: str) -> None:
    hostile.drip_ms = max(float(value), 0.0)


HOSTILE: dict[str, Callable[[Hostile, str], None]] = {
    "usage": hostile_usage,
    "logprob": set_logprob,
    "garbage": set_garbage,
    "huge": set_huge,
    "unframed": set_unframed,
    "drip": set_drip,
}


# Streams no provider should send: each list is one variant of [[sim:garbage=N]] (after a normal role chunk).
GARBAGE_STREAMS: tuple[tuple[bytes, ...], ...] = (
    (b"data: {not json\n\n", b"data: [1, 2]\n\n", b'data: {"choices": 5}\n\n', DONE),
    (b'data: {"choices": ["x", {"delta": "y"}, {"delta": {"content": 7}, "index": "0"}]}\n\n', DONE),
    (b'data: {"choices": [], "usage": "lots"}\n\n', b'data: {"choices": [], "usage": [1, 2]}\n\n', DONE),
    (b'data: {"choices": [], "usage": {"prompt_tokens": -9, "completion_tokens": 1e30}}\n\n', DONE),
    (b"event: message\nid: 7\n\n", b": a comment\n\n", b"\xff\xfe\x00\n\n", b"data:\n\n", DONE),
    (b'data: {"choices": [{"delta": {"content": "cut"}}]}\n\n',),  # never says [DONE]
)


# Whole answers no provider should send, for [[sim:garbage=N]] without streaming.
GARBAGE_BODIES: tuple[bytes, ...] = (
    b"{not json",
    b"[1, 2, 3]",
    b'{"choices": "nope", "usage": [1]}',
    b'{"choices": [5, {"message": "x"}], "usage": {"prompt_tokens": "12", "completion_tokens": -4}}',
    b'{"choices": [{"message": {"content": 7}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1e300}}',
    b"\xff\xfe\x00",
)


def make_hostile(reply: Reply, hostile: Hostile, stream: bool, model: str) -> Reply:
    """Turn a normal answer into what the hostile directive asks for."""
    if hostile.usage is not None or hostile.logprob is not None:
        if stream and reply.chunks is not None:
            usage = b'{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "' + model.encode()
            usage += b'", "choices": [], "usage": ' + (hostile.usage or b"null") + b"}"
            kept = [c for c in reply.chunks if b'"choices":[]' not in c and c != DONE]
            reply.chunks = kept + ([b"data: " + usage + b"\n\n"] if hostile.usage is not None else []) + [DONE]
        elif reply.chunks is None and reply.status == 200:
            body = orjson.loads(reply.body)
            if hostile.usage is not None:
                body["usage"] = orjson.loads(hostile.usage)
            if hostile.logprob is not None:
                for choice in body.get("choices") or ():
                    content = (choice.get("logprobs") or {}).get("content") or []
                    if content:
                        content[0]["logprob"] = hostile.logprob
            reply.body = orjson.dumps(body)
    if hostile.garbage is not None:
        if stream:
            role = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n'
            reply = Reply(200, headers=STREAM_HEADERS, chunks=[role, *GARBAGE_STREAMS[hostile.garbage % 6]])
        else:
            reply = Reply(200, GARBAGE_BODIES[hostile.garbage % len(GARBAGE_BODIES)])
    if hostile.huge:
        reply = huge_reply(hostile.huge, stream, model)
    if hostile.unframed and stream:
        line = b"data: " + b"x" * 65_530 + b"\n"
        reply = Reply(200, headers=STREAM_HEADERS, chunks=[line] * max(hostile.unframed // len(line), 1))
    if hostile.drip_ms:
        data = b"".join(reply.chunks) if reply.chunks is not None else reply.body
        headers = reply.headers if reply.chunks is not None else JSON_HEADERS
        reply = Reply(reply.status, headers=headers, chunks=[data[i : i + 8] for i in range(0, len(data), 8)] or [b""])
        reply.drip_s = hostile.drip_ms / 1000
    return reply


def huge_reply(size: int, stream: bool, model: str) -> Reply:
    usage = chat_usage(10, size // 4)
    if not stream:
        message = {"role": "assistant", "content": "a" * size}
        body = {"id": "chatcmpl-huge", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}  # fmt: skip
        return Reply(200, orjson.dumps(body))
    piece = {"id": "chatcmpl-huge", "object": "chat.completion.chunk", "created": 0, "model": model,
             "choices": [{"index": 0, "delta": {"content": "a" * 65_536}, "finish_reason": None}]}  # fmt: skip
    chunks = [sse(piece)] * max(size // 65_536, 1)
    end = {**piece, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    chunks += [sse(end), sse({**piece, "choices": [], "usage": usage}), DONE]
    return Reply(200, headers=STREAM_HEADERS, chunks=chunks)
