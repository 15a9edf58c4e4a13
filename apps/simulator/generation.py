"""Deterministic answers: the models, tokens, answer text, logprobs, embeddings and usage."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import re
import sys
from array import array
from functools import lru_cache
from typing import Any

import orjson

STREAM_TOKENS_PER_CHUNK = 3


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
    "gpt-5.4": (CHAT, 1772668800, 0),
    "gpt-5.4-mini": (CHAT, 1773705600, 0),
    "gpt-5.4-nano": (CHAT, 1773705600, 0),
    "gpt-5.5": (CHAT, 1776902400, 0),
    "o3": (CHAT, 1744225308, 0),
    "o3-mini": (CHAT, 1737146383, 0),
    "o4-mini": (CHAT, 1744225351, 0),
    "gpt-4-turbo": (CHAT, 1712361441, 0),
    "gpt-3.5-turbo": (CHAT, 1677610602, 0),
    "gpt-3.5-turbo-instruct": (INSTRUCT, 1692901427, 0),
    "claude-opus-4-6": (CHAT, 1770249600, 0),
    "claude-opus-4-5": (CHAT, 1764000000, 0),
    "claude-sonnet-4-5": (CHAT, 1759104000, 0),
    "claude-sonnet-4-6": (CHAT, 1771200000, 0),
    "claude-haiku-4-5": (CHAT, 1760572800, 0),
    "text-embedding-3-small": (EMBEDDING, 1705948997, 1536),
    "text-embedding-3-large": (EMBEDDING, 1705953180, 3072),
    "text-embedding-ada-002": (EMBEDDING, 1671217299, 1536),
}


VOCABULARY = (
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


TOKEN_RE = re.compile(r"\s?\w+|\s?[^\w\s]|\s+")


USAGE_DETAILS_PROMPT = {"cached_tokens": 0, "audio_tokens": 0}


USAGE_DETAILS_COMPLETION = {
    "reasoning_tokens": 0,
    "audio_tokens": 0,
    "accepted_prediction_tokens": 0,
    "rejected_prediction_tokens": 0,
}


def tokenize(text: str) -> list[str]:
    """Split ``text`` into tokens that join back to it exactly."""
    tokens: list[str] = []
    for piece in TOKEN_RE.findall(text):
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
    for piece in TOKEN_RE.findall(text):
        core = len(piece.lstrip())
        total += (core + 3) // 4 if core > 4 else 1
    return total


@lru_cache(maxsize=8192)
def answer_tokens(digest: bytes, index: int) -> tuple[str, ...]:
    """The tokens of the deterministic answer for a prompt digest and choice index."""
    rng = random.Random(digest + index.to_bytes(2, "big"))
    words_left = rng.randint(8, 60)
    sentences: list[str] = []
    while words_left > 0:
        length = min(words_left, rng.randint(5, 14))
        words_left -= length
        words = [rng.choice(VOCABULARY) for _ in range(length)]
        if length > 8:
            words[length // 2] += ","
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + ".")
    return tuple(tokenize(" ".join(sentences)))


def prompt_digest(*parts: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


def logprob_entries(
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
            start = rng.randrange(len(VOCABULARY))
            offset = 0
            while len(candidates) < top:
                alternative = " " + VOCABULARY[(start + offset) % len(VOCABULARY)]
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


def legacy_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
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
def embedding(model: str, key: bytes, dimensions: int) -> list[float]:
    """A unit vector drawn from a hash of (model, input); shortening keeps a prefix, as OpenAI does."""
    native = MODELS[model][2]
    values = array("h", hashlib.shake_256(model.encode() + b"\0" + key).digest(2 * native))[:dimensions]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


@lru_cache(maxsize=4096)
def embedding_base64(model: str, key: bytes, dimensions: int) -> str:
    packed = array("f", embedding(model, key, dimensions))
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": USAGE_DETAILS_PROMPT,
        "completion_tokens_details": USAGE_DETAILS_COMPLETION,
    }
