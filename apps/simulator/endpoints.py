"""The request handlers: chat completions, legacy completions, embeddings and models."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from itertools import count
from typing import Any

import orjson

from apps.simulator.chat_tools import check_tool_messages, tool_call, tool_call_reply
from apps.simulator.directives import Directives, make_hostile, parse_directives
from apps.simulator.generation import (
    CHAT,
    EMBEDDING,
    INSTRUCT,
    MODELS,
    STREAM_TOKENS_PER_CHUNK,
    chat_usage,
    count_tokens,
    embedding,
    embedding_base64,
    legacy_logprobs,
    logprob_entries,
    prompt_digest,
)
from apps.simulator.options import (
    MAX_CHOICES,
    bool_option,
    choice_tokens,
    embedding_inputs,
    include_usage_option,
    int_option,
    model_option,
    prompt_text,
    prompts_of,
)
from apps.simulator.replies import (
    DIRECTIVE_ERRORS,
    DONE,
    Reply,
    error,
    invalid,
    sse,
    stream_reply,
)


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


class Simulator:
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

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.id_prefix}{next(self.ids):010x}"

    def model(self, model: str) -> Reply:
        if model not in MODELS:
            return error(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        return Reply(200, orjson.dumps(self._model_object(model)))

    def chat(self, body: dict[str, Any]) -> Reply:
        model = model_option(body, (CHAT, INSTRUCT), "v1/chat/completions")
        messages = body.get("messages")
        text, prompt_tokens = prompt_text(messages)
        n = int_option(body, "n", 1, 1, MAX_CHOICES) or 1
        limit = int_option(body, "max_completion_tokens", None, 1, None)
        if limit is None:
            limit = int_option(body, "max_tokens", None, 1, None)
        stream = bool_option(body, "stream")
        include_usage = include_usage_option(body, stream)
        logprobs = bool_option(body, "logprobs")
        top = int_option(body, "top_logprobs", 0, 0, 20) or 0
        if top and not logprobs:
            raise invalid("logprobs must be set to true if top_logprobs is used.", "top_logprobs")
        directives = parse_directives(text, model)
        if directives is not None and directives.status is not None:
            reply = DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = directives.delay_s
            return reply
        assert isinstance(messages, list)  # prompt_text refuses anything else
        check_tool_messages(messages)
        call = tool_call(body, messages, self.new_id) if directives is None else None
        if call is not None:
            base = {"id": self.new_id("chatcmpl"), "created": int(time.time()), "model": model,
                    "system_fingerprint": "fp_sim"}  # fmt: skip
            return tool_call_reply(base, call, prompt_tokens, stream=stream, include_usage=include_usage)
        digest = prompt_digest(model, messages)
        confidence = directives.confidence if directives is not None else None
        choices: list[tuple[list[str], str, list[dict[str, Any]] | None]] = []
        for index in range(n):
            tokens, finish = choice_tokens(digest, index, directives, limit)
            entries = logprob_entries(tokens, digest, index, confidence, top) if logprobs else None
            choices.append((tokens, finish, entries))
        completion_tokens = sum(len(tokens) for tokens, _, _ in choices)
        usage = None if directives is not None and directives.no_usage else chat_usage(prompt_tokens, completion_tokens)
        delay_s = directives.delay_s if directives is not None else 0.0
        created = int(time.time())
        completion_id = self.new_id("chatcmpl")
        hostile = directives.hostile if directives is not None else None
        if stream:
            reply = self._chat_stream(completion_id, created, model, choices, usage, include_usage, directives, delay_s)
            return reply if hostile is None else make_hostile(reply, hostile, True, model)
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
        reply = Reply(200, orjson.dumps(response), delay_s=delay_s)
        return reply if hostile is None else make_hostile(reply, hostile, False, model)

    @staticmethod
    def _chat_stream(
        completion_id: str,
        created: int,
        model: str,
        choices: list[tuple[list[str], str, list[dict[str, Any]] | None]],
        usage: dict[str, Any] | None,
        include_usage: bool,
        directives: Directives | None,
        delay_s: float,
    ) -> Reply:
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
            return sse(payload)

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
                sse(
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
        chunks.append(DONE)
        return stream_reply(chunks, fail_at, delay_s)

    def completions(self, body: dict[str, Any]) -> Reply:
        model = model_option(body, (CHAT, INSTRUCT), "v1/completions")
        prompts = prompts_of(body)
        n = int_option(body, "n", 1, 1, MAX_CHOICES) or 1
        limit = int_option(body, "max_tokens", None, 1, None)
        stream = bool_option(body, "stream")
        include_usage = include_usage_option(body, stream)
        logprobs = int_option(body, "logprobs", None, 0, 5)
        directives = parse_directives("\n".join(text for _, text, _ in prompts), model)
        if directives is not None and directives.status is not None:
            reply = DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = directives.delay_s
            return reply
        confidence = directives.confidence if directives is not None else None
        choices: list[dict[str, Any]] = []
        texts: list[list[str]] = []
        for prompt, _, _ in prompts:
            digest = prompt_digest(model, prompt)
            for index in range(n):
                tokens, finish = choice_tokens(digest, index, directives, limit)
                legacy = None
                if logprobs is not None:
                    entries = logprob_entries(tokens, digest, index, confidence, logprobs)
                    legacy = legacy_logprobs(entries)
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
            "id": self.new_id("cmpl"),
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
            reply = Reply(200, orjson.dumps(response), delay_s=delay_s)
            return reply if hostile is None else make_hostile(reply, hostile, False, model)
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
                    sse(
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
                sse(
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
            chunks.append(sse({**base, "choices": [], "usage": usage}))
        chunks.append(DONE)
        reply = stream_reply(chunks, fail_at, delay_s)
        return reply if hostile is None else make_hostile(reply, hostile, True, model)

    def embeddings(self, body: dict[str, Any]) -> Reply:
        model = model_option(body, (EMBEDDING,), "v1/embeddings")
        native = MODELS[model][2]
        dimensions = int_option(body, "dimensions", native, 1, native) or native
        if "dimensions" in body and body["dimensions"] is not None and not model.startswith("text-embedding-3"):
            raise invalid("This model does not support specifying dimensions.", "dimensions")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise invalid(
                f"Invalid value for 'encoding_format': '{encoding}'. Expected 'float' or 'base64'.",
                "encoding_format",
                "invalid_value",
            )
        inputs = embedding_inputs(body.get("input"))
        directives = parse_directives("\n".join(item for item in inputs if isinstance(item, str)), model)
        delay_s = directives.delay_s if directives is not None else 0.0
        if directives is not None and directives.status is not None:
            reply = DIRECTIVE_ERRORS[str(directives.status)]()
            reply.delay_s = delay_s
            return reply
        vector = embedding_base64 if encoding == "base64" else embedding
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
        return Reply(200, orjson.dumps(response), delay_s=delay_s)
