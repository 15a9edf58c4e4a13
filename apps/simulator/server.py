"""A simulated OpenAI-compatible upstream: a plain ASGI app, fast and deterministic.

The demo, the tests and the benchmark point the gateway here instead of at
OpenAI. It has no framework and no Django so that it costs as little as
possible per request (it is the baseline of the throughput benchmark).

Endpoints (OpenAI request and response shapes):

- ``GET /health`` -> ``{"status": "ok"}`` (no auth, never delayed: it is polled for readiness).
- ``GET /v1/models`` and ``GET /v1/models/{id}``.
- ``POST /v1/chat/completions`` (``stream``, ``stream_options.include_usage``, ``n``,
  ``max_tokens``/``max_completion_tokens``, ``logprobs``/``top_logprobs``).
- ``POST /v1/completions`` (legacy; ``prompt`` is a string, a list of strings, a token
  list or a list of token lists; ``stream``, ``n``, ``max_tokens``, ``logprobs`` 0-5).
- ``POST /v1/embeddings`` (``input`` as OpenAI takes it; ``dimensions``;
  ``encoding_format`` ``float`` or ``base64``).
- ``/v1/files`` and ``/v1/batches``: a small Batch API (see ``apps/simulator/batch_api.py``).

Behaviour:

- Every ``/v1`` request needs an ``Authorization: Bearer <anything>`` header, else 401.
- Chat and legacy completions accept every listed text model (chat or instruct); an
  embedding model there is a 404, as is a text model on ``/v1/embeddings``; an
  unlisted model is a 404 with code ``model_not_found``.
- ``n`` from 1 to 128 is supported; each choice has its own deterministic text.
- The answer depends only on (model, messages) or (model, prompt): a sentence or a few
  of 8 to 60 words. ``max_tokens`` truncates it and sets ``finish_reason`` to ``length``.
- Tokens are word pieces (a word and its leading space, four characters at most per
  token), punctuation marks and whitespace runs. A chat prompt costs its tokens plus 3
  per message plus 3, as OpenAI counts.
- Streams send the role chunk, then content chunks of ``STREAM_TOKENS_PER_CHUNK`` tokens,
  the finish chunk, the usage chunk when ``stream_options.include_usage`` is true, and
  ``data: [DONE]``; each chunk is its own ASGI message, ``stream_chunk_delay_ms`` apart.
- ``latency_ms`` plus a uniform ``0..jitter_ms`` is waited before the first byte of every
  ``/v1`` response; a wait ends early if the client goes away.
- ``error_rate`` is the fraction of ``/v1`` requests answered with a 500 (drawn from a
  generator seeded with ``seed``).

Directives, written anywhere in a message's content, a prompt or an embedding input:

- ``[[sim:429]]``: 429 rate-limit error (type ``requests``, code ``rate_limit_exceeded``)
  with ``Retry-After: 1``.
- ``[[sim:500]]``: 500 server error.  ``[[sim:503]]``: 503 overloaded.
- ``[[sim:timeout]]``: wait 30 s before answering (the client will time out first).
- ``[[sim:latency=MS]]``: wait MS more milliseconds before answering.
- ``[[sim:confidence=P]]`` (0 < P <= 1): with logprobs, the first completion token's
  logprob is exactly ``ln(P)``; later tokens have probabilities in [0.9, 0.9999).
- ``[[sim:answer=TEXT]]``: the completion is exactly TEXT (which ends at the first ``]]``).
- ``[[sim:no_usage]]``: no ``usage`` in the response or stream.
- ``[[sim:fail_after=N]]``: a stream drops the connection after N content chunks.

Hostile directives, for fuzzing what the gateway does with a broken or malicious provider:

- ``[[sim:usage=JSON]]``: the answer's (or stream's) ``usage`` is exactly that JSON value
  (``"x"``, ``-5``, ``[1]``, ``{"prompt_tokens": 1e30}``…); a stream gets a usage chunk even unasked.
- ``[[sim:logprob=X]]``: the first answer token's logprob is exactly X (710 overflows ``exp``).
- ``[[sim:garbage=N]]``: variant N of a 200 answer that is not what OpenAI sends (non-JSON data
  lines, wrong-typed choices and usage, bytes that are not UTF-8, events without ``data``).
- ``[[sim:huge=BYTES]]``: the answer's content is BYTES long (streams: in 64 KiB events).
- ``[[sim:unframed=BYTES]]``: a stream of BYTES that never has a blank line (no event boundary).
- ``[[sim:drip=MS]]``: the response goes out a few bytes at a time, MS milliseconds apart.

Any directive can be scoped to one model as ``[[sim:MODEL/NAME=VALUE]]`` (``[[sim:gpt-4o-mini/500]]``,
``[[sim:gpt-4o/answer=refund]]``): it applies only to requests for MODEL, which lets one prompt
get different answers, confidences or failures from a cheap and a strong model.

An unknown directive or a bad value is a 400, so a typo in a test fails loudly.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import math
import os
import random
import re
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import count
from typing import Any

import orjson

from apps.simulator.batch_api import BatchEmulator

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

CONFIG_ENV = "SIMULATOR_CONFIG"
STREAM_TOKENS_PER_CHUNK = 3
TIMEOUT_DIRECTIVE_SECONDS = 30.0
MAX_CHOICES = 128
MAX_EMBEDDING_INPUTS = 2048

CHAT = "chat"
INSTRUCT = "instruct"
EMBEDDING = "embedding"

# id -> (kind, created, native embedding dimensions or 0)
MODELS: dict[str, tuple[str, int, int]] = {
    "gpt-4o": (CHAT, 1715367049, 0),
    "gpt-4o-2024-08-06": (CHAT, 1722814719, 0),
    "gpt-4o-mini": (CHAT, 1721172741, 0),
    "gpt-4o-mini-2024-07-18": (CHAT, 1721172717, 0),
    "gpt-4.1": (CHAT, 1744316542, 0),
    "gpt-4.1-mini": (CHAT, 1744318173, 0),
    "gpt-4.1-nano": (CHAT, 1744321707, 0),
    "gpt-5": (CHAT, 1754425777, 0),
    "gpt-5-mini": (CHAT, 1754425928, 0),
    "gpt-5-nano": (CHAT, 1754426384, 0),
    "o3": (CHAT, 1744225308, 0),
    "o3-mini": (CHAT, 1737146383, 0),
    "o4-mini": (CHAT, 1744225351, 0),
    "gpt-4-turbo": (CHAT, 1712361441, 0),
    "gpt-3.5-turbo": (CHAT, 1677610602, 0),
    "gpt-3.5-turbo-instruct": (INSTRUCT, 1692901427, 0),
    "text-embedding-3-small": (EMBEDDING, 1705948997, 1536),
    "text-embedding-3-large": (EMBEDDING, 1705953180, 3072),
    "text-embedding-ada-002": (EMBEDDING, 1671217299, 1536),
}

_VOCABULARY = (
    "the a an this that these our your system model request response answer question data value "
    "result cost budget token price service gateway cache user team project report network latency "
    "limit policy signal record update query process stream batch window summary detail example "
    "is are was can will should may must does helps keeps makes shows returns reduces improves "
    "checks tracks sends reads writes uses needs allows matches follows explains "
    "clear simple fast small large stable useful careful reliable precise quick steady common "
    "daily current recent total final early better lower higher "
    "and but so because while when if then also often usually rarely only just still "
    "in on for with from by about within across after before under over through between"
).split()

_TOKEN_RE = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")
# ``[[sim:NAME=VALUE]]``, or ``[[sim:MODEL/NAME=VALUE]]`` to apply only to requests for MODEL.
_DIRECTIVE_RE = re.compile(r"\[\[sim:(?:([A-Za-z0-9._:-]+)/)?([a-z_0-9]+)(?:=(.*?))?\]\]", re.S)

_JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
_STREAM_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_DONE = b"data: [DONE]\n\n"
_USAGE_DETAILS_PROMPT = {"cached_tokens": 0, "audio_tokens": 0}
_USAGE_DETAILS_COMPLETION = {
    "reasoning_tokens": 0,
    "audio_tokens": 0,
    "accepted_prediction_tokens": 0,
    "rejected_prediction_tokens": 0,
}
# A non-text content part (an image, audio) costs this many prompt tokens.
_NON_TEXT_PART_TOKENS = 85


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulated upstream behaves; see the module docstring."""

    latency_ms: float = 0
    jitter_ms: float = 0
    stream_chunk_delay_ms: float = 0
    error_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.stream_chunk_delay_ms < 0:
            raise ValueError("latency_ms, jitter_ms and stream_chunk_delay_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be between 0 and 1")


@dataclass(slots=True)
class _Reply:
    """A response to send: a JSON body, or SSE chunks (``chunks``) cut off after ``cut`` of them."""

    status: int
    body: bytes = b""
    headers: Headers = field(default_factory=lambda: _JSON_HEADERS)
    chunks: list[bytes] | None = None
    cut: int | None = None
    delay_s: float = 0.0
    drip_s: float | None = None  # pause between chunks, instead of the configured one


class _Rejected(Exception):
    """Raised while handling a request to answer it with ``reply`` (an OpenAI error)."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@dataclass(slots=True)
class _Hostile:
    """What a hostile directive does to an otherwise normal answer (see the module docstring)."""

    usage: bytes | None = None  # the raw JSON value
    logprob: float | None = None
    garbage: int | None = None
    huge: int = 0
    unframed: int = 0
    drip_ms: float = 0.0


@dataclass(slots=True)
class _Directives:
    status: int | None = None
    delay_s: float = 0.0
    confidence: float | None = None
    answer: str | None = None
    no_usage: bool = False
    fail_after: int | None = None
    hostile: _Hostile | None = None


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Headers | None = None,
) -> _Reply:
    body = orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})
    return _Reply(status, body, _JSON_HEADERS + headers if headers else _JSON_HEADERS)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> _Rejected:
    return _Rejected(_error(400, message, param=param, code=code))


def _rate_limited() -> _Reply:
    return _error(
        429,
        "Rate limit reached for requests (simulated). Please try again in 1s.",
        type_="requests",
        code="rate_limit_exceeded",
        headers=[(b"retry-after", b"1")],
    )


def _server_error() -> _Reply:
    return _error(
        500,
        "The server had an error while processing your request. Sorry about that! (simulated)",
        type_="server_error",
    )


def _overloaded() -> _Reply:
    return _error(503, "The engine is currently overloaded, please try again later. (simulated)", type_="server_error")


_DIRECTIVE_ERRORS: dict[str, Callable[[], _Reply]] = {
    "429": _rate_limited,
    "500": _server_error,
    "503": _overloaded,
}


def _parse_directives(text: str, model: str) -> _Directives | None:
    """The directives in ``text`` that apply to ``model``, or None when there are none (the common case)."""
    if "[[sim:" not in text:
        return None
    found = _Directives()
    for scope, name, value in _DIRECTIVE_RE.findall(text):
        if scope and scope != model:
            continue
        try:
            if name in _DIRECTIVE_ERRORS:
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
            elif name == "fail_after":
                found.fail_after = int(value)
                if found.fail_after < 0:
                    raise ValueError(value)
            elif name in _HOSTILE:
                found.hostile = found.hostile or _Hostile()
                _HOSTILE[name](found.hostile, value)
            else:
                raise ValueError(name)
        except ValueError:
            raise _invalid(f"Invalid simulator directive [[sim:{name}={value}]].") from None
    return found


def _hostile_usage(hostile: _Hostile, value: str) -> None:
    orjson.loads(value)  # a typo must fail loudly (JSONDecodeError is a ValueError)
    hostile.usage = value.encode()


def _hostile_size(value: str) -> int:
    size = int(value)
    if not 0 <= size <= 256 * 1024 * 1024:
        raise ValueError(value)
    return size


def _set_logprob(hostile: _Hostile, value: str) -> None:
    hostile.logprob = float(value)


def _set_garbage(hostile: _Hostile, value: str) -> None:
    hostile.garbage = int(value or 0)


def _set_huge(hostile: _Hostile, value: str) -> None:
    hostile.huge = _hostile_size(value)


def _set_unframed(hostile: _Hostile, value: str) -> None:
    hostile.unframed = _hostile_size(value)


def _set_drip(hostile: _Hostile, value: str) -> None:
    hostile.drip_ms = max(float(value), 0.0)


_HOSTILE: dict[str, Callable[[_Hostile, str], None]] = {
    "usage": _hostile_usage,
    "logprob": _set_logprob,
    "garbage": _set_garbage,
    "huge": _set_huge,
    "unframed": _set_unframed,
    "drip": _set_drip,
}

# Streams no provider should send: each list is one variant of [[sim:garbage=N]] (after a normal role chunk).
_GARBAGE_STREAMS: tuple[tuple[bytes, ...], ...] = (
    (b"data: {not json\n\n", b"data: [1, 2]\n\n", b'data: {"choices": 5}\n\n', _DONE),
    (b'data: {"choices": ["x", {"delta": "y"}, {"delta": {"content": 7}, "index": "0"}]}\n\n', _DONE),
    (b'data: {"choices": [], "usage": "lots"}\n\n', b'data: {"choices": [], "usage": [1, 2]}\n\n', _DONE),
    (b'data: {"choices": [], "usage": {"prompt_tokens": -9, "completion_tokens": 1e30}}\n\n', _DONE),
    (b"event: message\nid: 7\n\n", b": a comment\n\n", b"\xff\xfe\x00\n\n", b"data:\n\n", _DONE),
    (b'data: {"choices": [{"delta": {"content": "cut"}}]}\n\n',),  # never says [DONE]
)
# Whole answers no provider should send, for [[sim:garbage=N]] without streaming.
_GARBAGE_BODIES: tuple[bytes, ...] = (
    b"{not json",
    b"[1, 2, 3]",
    b'{"choices": "nope", "usage": [1]}',
    b'{"choices": [5, {"message": "x"}], "usage": {"prompt_tokens": "12", "completion_tokens": -4}}',
    b'{"choices": [{"message": {"content": 7}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1e300}}',
    b"\xff\xfe\x00",
)


def _make_hostile(reply: _Reply, hostile: _Hostile, stream: bool, model: str) -> _Reply:
    """Turn a normal answer into what the hostile directive asks for."""
    if hostile.usage is not None or hostile.logprob is not None:
        if stream and reply.chunks is not None:
            usage = b'{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "' + model.encode()
            usage += b'", "choices": [], "usage": ' + (hostile.usage or b"null") + b"}"
            kept = [c for c in reply.chunks if b'"choices":[]' not in c and c != _DONE]
            reply.chunks = kept + ([b"data: " + usage + b"\n\n"] if hostile.usage is not None else []) + [_DONE]
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
            reply = _Reply(200, headers=_STREAM_HEADERS, chunks=[role, *_GARBAGE_STREAMS[hostile.garbage % 6]])
        else:
            reply = _Reply(200, _GARBAGE_BODIES[hostile.garbage % len(_GARBAGE_BODIES)])
    if hostile.huge:
        reply = _huge_reply(hostile.huge, stream, model)
    if hostile.unframed and stream:
        line = b"data: " + b"x" * 65_530 + b"\n"
        reply = _Reply(200, headers=_STREAM_HEADERS, chunks=[line] * max(hostile.unframed // len(line), 1))
    if hostile.drip_ms:
        data = b"".join(reply.chunks) if reply.chunks is not None else reply.body
        headers = reply.headers if reply.chunks is not None else _JSON_HEADERS
        reply = _Reply(reply.status, headers=headers, chunks=[data[i : i + 8] for i in range(0, len(data), 8)] or [b""])
        reply.drip_s = hostile.drip_ms / 1000
    return reply


def _huge_reply(size: int, stream: bool, model: str) -> _Reply:
    usage = _chat_usage(10, size // 4)
    if not stream:
        message = {"role": "assistant", "content": "a" * size}
        body = {"id": "chatcmpl-huge", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}], "usage": usage}  # fmt: skip
        return _Reply(200, orjson.dumps(body))
    piece = {"id": "chatcmpl-huge", "object": "chat.completion.chunk", "created": 0, "model": model,
             "choices": [{"index": 0, "delta": {"content": "a" * 65_536}, "finish_reason": None}]}  # fmt: skip
    chunks = [_sse(piece)] * max(size // 65_536, 1)
    end = {**piece, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    chunks += [_sse(end), _sse({**piece, "choices": [], "usage": usage}), _DONE]
    return _Reply(200, headers=_STREAM_HEADERS, chunks=chunks)


def tokenize(text: str) -> list[str]:
    """Split ``text`` into tokens that join back to it exactly."""
    tokens: list[str] = []
    for piece in _TOKEN_RE.findall(text):
        core = len(piece.lstrip())
        if core <= 4:
            tokens.append(piece)
            continue
        first = len(piece) - core + 4
        tokens.append(piece[:first])
        tokens.extend(piece[i : i + 4] for i in range(first, len(piece), 4))
    return tokens


# Cached because the same system prompts and messages recur across requests.
@lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """``len(tokenize(text))`` without building the token list."""
    total = 0
    for piece in _TOKEN_RE.findall(text):
        core = len(piece.lstrip())
        total += (core + 3) // 4 if core > 4 else 1
    return total


@lru_cache(maxsize=8192)
def _answer(digest: bytes, index: int) -> tuple[str, ...]:
    """The tokens of the deterministic answer for a prompt digest and choice index."""
    rng = random.Random(digest + index.to_bytes(2, "big"))
    words_left = rng.randint(8, 60)
    sentences: list[str] = []
    while words_left > 0:
        length = min(words_left, rng.randint(5, 14))
        words_left -= length
        words = [rng.choice(_VOCABULARY) for _ in range(length)]
        if length > 8:
            words[length // 2] += ","
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ".")
    return tuple(tokenize(" ".join(sentences)))


def _digest(*parts: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def _completion_tokens(
    digest: bytes, index: int, directives: _Directives | None, limit: int | None
) -> tuple[list[str], str]:
    """(tokens, finish_reason) of one choice, after the answer directive and ``limit``."""
    if directives is not None and directives.answer is not None:
        tokens = tokenize(directives.answer)
    else:
        tokens = list(_answer(digest, index))
    if limit is not None and len(tokens) > limit:
        return tokens[:limit], "length"
    return tokens, "stop"


def _logprob_entries(
    tokens: list[str], digest: bytes, index: int, confidence: float | None, top: int
) -> list[dict[str, Any]]:
    """Chat-style logprob entries, one per token; the first token's probability is ``confidence``."""
    rng = random.Random(digest + b"lp" + index.to_bytes(2, "big"))
    entries: list[dict[str, Any]] = []
    for position, token in enumerate(tokens):
        probability = confidence if position == 0 and confidence is not None else 0.9 + 0.0999 * rng.random()
        logprob = math.log(probability)
        entry: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
        if top:
            # The alternatives share what the chosen token leaves, in a falling geometric series.
            rest = max(1.0 - probability, 1e-9)
            candidates = [{"token": token, "logprob": logprob, "bytes": entry["bytes"]}]
            start = rng.randrange(len(_VOCABULARY))
            offset = 0
            while len(candidates) < top:
                alternative = " " + _VOCABULARY[(start + offset) % len(_VOCABULARY)]
                offset += 1
                if alternative == token:
                    continue
                share = rest * 0.6 * 0.4 ** (len(candidates) - 1)
                candidates.append(
                    {"token": alternative, "logprob": math.log(share), "bytes": list(alternative.encode())}
                )
            candidates.sort(key=lambda candidate: -candidate["logprob"])
            entry["top_logprobs"] = candidates
        entries.append(entry)
    return entries


def _legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object for the same entries."""
    text_offset = 0
    offsets: list[int] = []
    for entry in entries:
        offsets.append(text_offset)
        text_offset += len(entry["token"])
    return {
        "tokens": [entry["token"] for entry in entries],
        "token_logprobs": [entry["logprob"] for entry in entries],
        "top_logprobs": [
            {top["token"]: top["logprob"] for top in entry["top_logprobs"]} or {entry["token"]: entry["logprob"]}
            for entry in entries
        ],
        "text_offset": offsets,
    }


@lru_cache(maxsize=4096)
def _embedding(model: str, key: bytes, dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of (model, input); shortening keeps a prefix, as OpenAI does."""
    native = MODELS[model][2]
    values = array("h", hashlib.shake_256(model.encode() + b"\0" + key).digest(2 * native))[:dimensions]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


@lru_cache(maxsize=4096)
def _embedding_base64(model: str, key: bytes, dimensions: int) -> str:
    packed = array("f", _embedding(model, key, dimensions))
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _int_option(body: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _invalid(f"Invalid '{name}': {value}. Expected a value {bound}.", name, "invalid_value")
    return value


def _bool_option(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(f"Invalid type for '{name}': expected a boolean.", name, "invalid_type")
    return value


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise _invalid("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    if not isinstance(options, dict):
        raise _invalid("Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
    return _bool_option(options, "include_usage")


def _model(body: dict[str, Any], kinds: tuple[str, ...], endpoint: str) -> str:
    model = body.get("model")
    if model is None:
        raise _invalid("you must provide a model parameter")
    if not isinstance(model, str):
        raise _invalid("Invalid type for 'model': expected a string.", "model", "invalid_type")
    known = MODELS.get(model)
    if known is None:
        raise _Rejected(
            _error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        )
    if known[0] not in kinds:
        raise _Rejected(_error(404, f"The model `{model}` is not supported in the {endpoint} endpoint.", param="model"))
    return model


def _prompt_text(messages: Any) -> tuple[str, int]:
    """(all message text, prompt tokens) of validated chat ``messages``."""
    if messages is None:
        raise _invalid("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _invalid("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    if not messages:
        raise _invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", "empty_array"
        )
    texts: list[str] = []
    tokens = 3
    for position, message in enumerate(messages):
        param = f"messages[{position}]"
        if not isinstance(message, dict):
            raise _invalid(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise _invalid(
                f"Invalid value for '{param}.role': expected one of 'system', 'developer', 'user', "
                "'assistant', 'tool' or 'function'.",
                f"{param}.role",
                "invalid_value",
            )
        tokens += 3
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            tokens += count_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise _invalid(f"Invalid type for '{param}.content': expected parts.", f"{param}.content")
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                    tokens += count_tokens(part["text"])
                else:
                    tokens += _NON_TEXT_PART_TOKENS
        elif content is None:
            if role != "assistant":
                raise _invalid(f"Missing required parameter: '{param}.content'.", f"{param}.content")
        else:
            raise _invalid(f"Invalid type for '{param}.content'.", f"{param}.content", "invalid_type")
        name = message.get("name")
        if isinstance(name, str):
            tokens += 1 + count_tokens(name)
        tool_calls = message.get("tool_calls")
        if tool_calls:
            tokens += count_tokens(orjson.dumps(tool_calls).decode())
    return "\n".join(texts), tokens


def _prompts(body: dict[str, Any]) -> list[tuple[str | list[int], str, int]]:
    """(prompt, its text, its tokens) per prompt of a legacy completions request; token arrays have no text."""
    prompt = body.get("prompt")
    if prompt is None:
        raise _invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if isinstance(prompt, str):
        return [(prompt, prompt, count_tokens(prompt))]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            return [(item, item, count_tokens(item)) for item in prompt]
        if all(isinstance(item, int) for item in prompt):
            return [(prompt, "", len(prompt))]
        if all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in prompt):
            return [(item, "", len(item)) for item in prompt]
    raise _invalid(
        "Invalid 'prompt': expected a string, an array of strings, an array of tokens or an array of token arrays.",
        "prompt",
        "invalid_value",
    )


def _chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": _USAGE_DETAILS_PROMPT,
        "completion_tokens_details": _USAGE_DETAILS_COMPLETION,
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _stream_reply(chunks: list[bytes], fail_at: int | None, delay_s: float) -> _Reply:
    return _Reply(200, headers=_STREAM_HEADERS, chunks=chunks, cut=fail_at, delay_s=delay_s)


class _Simulator:
    """The request handlers; one instance per app, holding its config and random generator."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.ids = count(1)
        self.id_prefix = os.urandom(6).hex()
        self.models_body = orjson.dumps({"object": "list", "data": [self._model_object(model) for model in MODELS]})

    @staticmethod
    def _model_object(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": MODELS[model][1], "owned_by": "simulator"}

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.id_prefix}{next(self.ids):010x}"

    def model(self, model: str) -> _Reply:
        if model not in MODELS:
            return _error(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return _Reply(200, orjson.dumps(self._model_object(model)))

    def chat(self, body: dict[str, Any]) -> _Reply:
        model = _model(body, (CHAT, INSTRUCT), "v1/chat/completions")
        messages = body.get("messages")
        text, prompt_tokens = _prompt_text(messages)
        n = _int_option(body, "n", 1, 1, MAX_CHOICES) or 1
        limit = _int_option(body, "max_completion_tokens", None, 1, None)
        if limit is None:
            limit = _int_option(body, "max_tokens", None, 1, None)
        stream = _bool_option(body, "stream")
        include_usage = _include_usage(body, stream)
        logprobs = _bool_option(body, "logprobs")
        top = _int_option(body, "top_logprobs", 0, 0, 20) or 0
        if top and not logprobs:
            raise _invalid("logprobs must be set to true if top_logprobs is used.", "top_logprobs")
        directives = _parse_directives(text, model)
        if directives is not None and directives.status is not None:
            reply = _DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = directives.delay_s
            return reply
        digest = _digest(model, messages)
        confidence = directives.confidence if directives is not None else None
        choices: list[tuple[list[str], str, list[dict[str, Any]] | None]] = []
        for index in range(n):
            tokens, finish = _completion_tokens(digest, index, directives, limit)
            entries = _logprob_entries(tokens, digest, index, confidence, top) if logprobs else None
            choices.append((tokens, finish, entries))
        completion_tokens = sum(len(tokens) for tokens, _, _ in choices)
        usage = (
            None if directives is not None and directives.no_usage else _chat_usage(prompt_tokens, completion_tokens)
        )
        delay_s = directives.delay_s if directives is not None else 0.0
        created = int(time.time())
        completion_id = self._new_id("chatcmpl")
        hostile = directives.hostile if directives is not None else None
        if stream:
            reply = self._chat_stream(completion_id, created, model, choices, usage, include_usage, directives, delay_s)
            return reply if hostile is None else _make_hostile(reply, hostile, True, model)
        response: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": "".join(tokens), "refusal": None, "annotations": []},
                    "logprobs": None if entries is None else {"content": entries, "refusal": None},
                    "finish_reason": finish,
                }
                for index, (tokens, finish, entries) in enumerate(choices)
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_sim",
        }
        if usage is not None:
            response["usage"] = usage
        reply = _Reply(200, orjson.dumps(response), delay_s=delay_s)
        return reply if hostile is None else _make_hostile(reply, hostile, False, model)

    @staticmethod
    def _chat_stream(
        completion_id: str,
        created: int,
        model: str,
        choices: list[tuple[list[str], str, list[dict[str, Any]] | None]],
        usage: dict[str, Any] | None,
        include_usage: bool,
        directives: _Directives | None,
        delay_s: float,
    ) -> _Reply:
        null_usage = include_usage and usage is not None

        def chunk(choice: dict[str, Any]) -> bytes:
            payload: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_sim",
                "choices": [choice],
            }
            if null_usage:
                payload["usage"] = None
            return _sse(payload)

        fail_after = directives.fail_after if directives is not None else None
        chunks: list[bytes] = []
        fail_at: int | None = None
        content_chunks = 0
        for index, (tokens, finish, entries) in enumerate(choices):
            chunks.append(
                chunk(
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": "", "refusal": None},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
            )
            for start in range(0, len(tokens), STREAM_TOKENS_PER_CHUNK):
                if content_chunks == fail_after:
                    fail_at = len(chunks)
                content_chunks += 1
                end = start + STREAM_TOKENS_PER_CHUNK
                chunks.append(
                    chunk(
                        {
                            "index": index,
                            "delta": {"content": "".join(tokens[start:end])},
                            "logprobs": None if entries is None else {"content": entries[start:end], "refusal": None},
                            "finish_reason": None,
                        }
                    )
                )
            chunks.append(chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}))
        if fail_at is None and fail_after is not None and content_chunks == fail_after:
            fail_at = len(chunks) - 1
        if include_usage and usage is not None:
            chunks.append(
                _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "fp_sim",
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        chunks.append(_DONE)
        return _stream_reply(chunks, fail_at, delay_s)

    def completions(self, body: dict[str, Any]) -> _Reply:
        model = _model(body, (CHAT, INSTRUCT), "v1/completions")
        prompts = _prompts(body)
        n = _int_option(body, "n", 1, 1, MAX_CHOICES) or 1
        limit = _int_option(body, "max_tokens", None, 1, None)
        stream = _bool_option(body, "stream")
        include_usage = _include_usage(body, stream)
        logprobs = _int_option(body, "logprobs", None, 0, 5)
        directives = _parse_directives("\n".join(text for _, text, _ in prompts), model)
        if directives is not None and directives.status is not None:
            reply = _DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = directives.delay_s
            return reply
        confidence = directives.confidence if directives is not None else None
        choices: list[dict[str, Any]] = []
        texts: list[list[str]] = []
        for prompt, _, _ in prompts:
            digest = _digest(model, prompt)
            for index in range(n):
                tokens, finish = _completion_tokens(digest, index, directives, limit)
                legacy = None
                if logprobs is not None:
                    entries = _logprob_entries(tokens, digest, index, confidence, logprobs)
                    legacy = _legacy_logprobs(entries)
                texts.append(tokens)
                choices.append(
                    {"text": "".join(tokens), "index": len(choices), "logprobs": legacy, "finish_reason": finish}
                )
        prompt_tokens = sum(tokens for _, _, tokens in prompts)
        completion_tokens = sum(len(tokens) for tokens in texts)
        usage = None
        if directives is None or not directives.no_usage:
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
        delay_s = directives.delay_s if directives is not None else 0.0
        base = {
            "id": self._new_id("cmpl"),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_sim",
        }
        hostile = directives.hostile if directives is not None else None
        if not stream:
            response: dict[str, Any] = {**base, "choices": choices}
            if usage is not None:
                response["usage"] = usage
            reply = _Reply(200, orjson.dumps(response), delay_s=delay_s)
            return reply if hostile is None else _make_hostile(reply, hostile, False, model)
        fail_after = directives.fail_after if directives is not None else None
        chunks: list[bytes] = []
        fail_at: int | None = None
        content_chunks = 0
        for choice, tokens in zip(choices, texts, strict=True):
            for start in range(0, len(tokens), STREAM_TOKENS_PER_CHUNK):
                if content_chunks == fail_after:
                    fail_at = len(chunks)
                content_chunks += 1
                piece = tokens[start : start + STREAM_TOKENS_PER_CHUNK]
                piece_logprobs = None
                if choice["logprobs"] is not None:
                    piece_logprobs = {
                        key: values[start : start + len(piece)] for key, values in choice["logprobs"].items()
                    }
                text = "".join(piece)
                chunks.append(
                    _sse(
                        {
                            **base,
                            "choices": [
                                {
                                    "text": text,
                                    "index": choice["index"],
                                    "logprobs": piece_logprobs,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                )
            chunks.append(
                _sse(
                    {
                        **base,
                        "choices": [
                            {
                                "text": "",
                                "index": choice["index"],
                                "logprobs": None,
                                "finish_reason": choice["finish_reason"],
                            }
                        ],
                    }
                )
            )
        if fail_at is None and fail_after is not None and content_chunks == fail_after:
            fail_at = len(chunks) - 1
        if include_usage and usage is not None:
            chunks.append(_sse({**base, "choices": [], "usage": usage}))
        chunks.append(_DONE)
        reply = _stream_reply(chunks, fail_at, delay_s)
        return reply if hostile is None else _make_hostile(reply, hostile, True, model)

    def embeddings(self, body: dict[str, Any]) -> _Reply:
        model = _model(body, (EMBEDDING,), "v1/embeddings")
        native = MODELS[model][2]
        dimensions = _int_option(body, "dimensions", native, 1, native) or native
        if "dimensions" in body and body["dimensions"] is not None and not model.startswith("text-embedding-3"):
            raise _invalid("This model does not support specifying dimensions.", "dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _invalid(
                f"Invalid value for 'encoding_format': '{encoding}'. Expected 'float' or 'base64'.",
                "encoding_format",
                "invalid_value",
            )
        inputs = _embedding_inputs(body.get("input"))
        directives = _parse_directives("\n".join(item for item in inputs if isinstance(item, str)), model)
        delay_s = directives.delay_s if directives is not None else 0.0
        if directives is not None and directives.status is not None:
            reply = _DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = delay_s
            return reply
        vector = _embedding_base64 if encoding == "base64" else _embedding
        data: list[dict[str, Any]] = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                key = item.encode()
                prompt_tokens += count_tokens(item)
            else:
                key = orjson.dumps(item)
                prompt_tokens += len(item)
            data.append({"object": "embedding", "index": index, "embedding": vector(model, key, dimensions)})
        response: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if directives is None or not directives.no_usage:
            response["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return _Reply(200, orjson.dumps(response), delay_s=delay_s)


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    """The inputs of an embeddings request, each a non-empty string or token list."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and 0 < len(value) <= MAX_EMBEDDING_INPUTS:
        if all(isinstance(item, str) and item for item in value):
            return list(value)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return [value]
        if all(isinstance(item, list) and item and all(isinstance(t, int) for t in item) for item in value):
            return list(value)
    raise _invalid(
        "'$.input' is invalid: expected a non-empty string, array of strings, array of tokens or array of "
        f"token arrays (at most {MAX_EMBEDDING_INPUTS} items).",
        "input",
        "invalid_value",
    )


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _wait(seconds: float, receive: Receive) -> bool:
    """Sleep ``seconds``; False as soon as the client disconnects (the request body is read by now)."""
    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    listener = asyncio.ensure_future(receive())
    done, _ = await asyncio.wait((sleeper, listener), return_when=asyncio.FIRST_COMPLETED)
    if sleeper in done:
        listener.cancel()
        return True
    sleeper.cancel()
    return False


async def _send_json(send: Send, status: int, body: bytes, headers: Headers = _JSON_HEADERS) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_HEALTH_BODY = orjson.dumps({"status": "ok"})
_MISSING_KEY = _error(
    401,
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
    code="invalid_api_key",
)


def _authorized(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value[:7].lower() == b"bearer " and bool(value[7:].strip())
    return False


def build_app(config: SimConfig) -> ASGIApp:
    """An ASGI app simulating the OpenAI API as ``config`` says (see the module docstring)."""
    simulator = _Simulator(config)
    rng = simulator.rng
    base_delay_s = config.latency_ms / 1000
    jitter_s = config.jitter_ms / 1000
    chunk_delay_s = config.stream_chunk_delay_ms / 1000
    error_rate = config.error_rate
    handlers: dict[str, Callable[[dict[str, Any]], _Reply]] = {
        "/v1/chat/completions": simulator.chat,
        "/v1/completions": simulator.completions,
        "/v1/embeddings": simulator.embeddings,
    }

    def answer(handler: Callable[[dict[str, Any]], _Reply], body: dict[str, Any]) -> _Reply:
        try:
            return handler(body)
        except _Rejected as rejected:
            return rejected.reply

    batch_api = BatchEmulator(
        {path: functools.partial(answer, handler) for path, handler in handlers.items()},
        _error,
        lambda status, body, headers=None: _Reply(status, body, headers or _JSON_HEADERS),
    )

    async def route(scope: Scope, receive: Receive) -> _Reply:
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(("/v1/files", "/v1/batches")):
            if not _authorized(scope):
                return _MISSING_KEY
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            reply: _Reply = batch_api.handle(method, path, content_type, await _read_body(receive))
            return reply
        handler = handlers.get(path)
        if handler is not None:
            allowed = "POST"
        elif path == "/v1/models" or path.startswith("/v1/models/"):
            allowed = "GET"
        else:
            return _error(404, f"Invalid URL ({method} {path})")
        if method != allowed:
            return _error(405, f"Method {method} not allowed for {path}", headers=[(b"allow", allowed.encode())])
        if not _authorized(scope):
            return _MISSING_KEY
        if error_rate and rng.random() < error_rate:
            return _server_error()
        if handler is None:
            if path == "/v1/models":
                return _Reply(200, simulator.models_body)
            return simulator.model(path[len("/v1/models/") :])
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "We could not parse the JSON body of your request. (simulated)")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        return answer(handler, body)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await _send_json(send, 200, _HEALTH_BODY)
            return
        reply = await route(scope, receive)
        delay_s = base_delay_s + reply.delay_s + (rng.uniform(0, jitter_s) if jitter_s else 0.0)
        if delay_s > 0 and not await _wait(delay_s, receive):
            return
        if reply.chunks is None:
            await _send_json(send, reply.status, reply.body, reply.headers)
            return
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        last = len(reply.chunks) - 1
        for position, chunk in enumerate(reply.chunks):
            if position == reply.cut:
                # Returning mid-body makes the server drop the connection: a truncated stream.
                return
            pause = reply.drip_s if reply.drip_s is not None else chunk_delay_s
            if position and pause:
                await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": chunk, "more_body": position != last})

    return app


def app_from_environment() -> ASGIApp:
    """The app for uvicorn's worker processes, configured from ``SIMULATOR_CONFIG`` (JSON)."""
    return build_app(SimConfig(**orjson.loads(os.environ[CONFIG_ENV])))


def run(host: str, port: int, config: SimConfig, workers: int = 1) -> None:
    """Serve the simulator with uvicorn until interrupted."""
    import uvicorn

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        # A [[sim:timeout]] request still waiting must not hold up shutdown.
        "timeout_graceful_shutdown": 1,
    }
    if workers == 1:
        uvicorn.run(build_app(config), **options)
        return
    # Worker processes import the app, so the config travels in the environment.
    os.environ[CONFIG_ENV] = orjson.dumps(asdict(config)).decode()
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=workers, **options)
