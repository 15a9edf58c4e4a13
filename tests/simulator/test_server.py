"""The simulated upstream, through the official openai SDK and raw HTTP against a real process."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from apps.simulator.generation import count_tokens, tokenize

pytestmark = pytest.mark.live

SYSTEM = "You are terse."
QUESTION = "Summarise the monthly spending report."
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": QUESTION},
]


def user(content: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": content}]


def chat_text(client: openai.OpenAI, content: str) -> str:
    response = client.chat.completions.create(model="gpt-4o-mini", messages=user(content))
    return response.choices[0].message.content or ""


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    required = {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "o4-mini",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
        "text-embedding-3-large",
    }
    assert required <= ids
    model = client.models.retrieve("gpt-4.1-nano")
    assert (model.id, model.object, model.owned_by) == ("gpt-4.1-nano", "model", "simulator")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9000")


def test_chat_is_deterministic_and_counts_tokens(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    second = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    other = client.chat.completions.create(model="gpt-4o", messages=user("Something else."))

    content = first.choices[0].message.content
    assert content and content == second.choices[0].message.content
    assert content != other.choices[0].message.content
    assert 8 <= len(content.split()) <= 60
    assert first.id.startswith("chatcmpl-") and first.id != second.id
    assert (first.object, first.model, first.system_fingerprint) == ("chat.completion", "gpt-4o", "fp_sim")
    choice = first.choices[0]
    assert (choice.finish_reason, choice.message.role, choice.message.refusal) == ("stop", "assistant", None)
    usage = first.usage
    assert usage is not None
    assert usage.prompt_tokens == 3 + (3 + count_tokens(SYSTEM)) + (3 + count_tokens(QUESTION))
    assert usage.completion_tokens == len(tokenize(content))
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 0


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="gpt-5", messages=MESSAGES)
    for short in (
        client.chat.completions.create(model="gpt-5", messages=MESSAGES, max_tokens=4),
        client.chat.completions.create(model="gpt-5", messages=MESSAGES, max_completion_tokens=4),
    ):
        assert short.choices[0].finish_reason == "length"
        assert short.usage is not None and short.usage.completion_tokens == 4
        assert short.choices[0].message.content == "".join(tokenize(full.choices[0].message.content or "")[:4])


def test_n_choices_differ_and_usage_sums(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, n=2)
    texts = [choice.message.content or "" for choice in response.choices]
    assert [choice.index for choice in response.choices] == [0, 1]
    assert texts[0] != texts[1]
    assert response.usage is not None
    assert response.usage.completion_tokens == sum(len(tokenize(text)) for text in texts)


def test_stream_matches_non_stream_and_reports_usage_last(client: openai.OpenAI) -> None:
    expected = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.choices[0].message.content
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage == expected.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_follow_the_confidence_directive(client: openai.OpenAI) -> None:
    messages = user("Classify this. [[sim:confidence=0.37]]")
    response = client.chat.completions.create(model="gpt-4o-mini", messages=messages, logprobs=True, top_logprobs=3)
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    entries = logprobs.content
    assert abs(entries[0].logprob - math.log(0.37)) < 1e-9
    assert all(entry.logprob > math.log(0.9) - 1e-12 for entry in entries[1:])
    assert "".join(entry.token for entry in entries) == response.choices[0].message.content
    assert all(entry.bytes == list(entry.token.encode()) for entry in entries)
    assert all(len(entry.top_logprobs) == 3 for entry in entries)
    assert all(
        [top.logprob for top in entry.top_logprobs] == sorted((top.logprob for top in entry.top_logprobs), reverse=True)
        for entry in entries
    )

    streamed = [
        entry
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, logprobs=True, top_logprobs=3, stream=True
        )
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [(entry.token, entry.logprob) for entry in streamed] == [(entry.token, entry.logprob) for entry in entries]


def test_logprobs_absent_unless_requested(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert response.choices[0].logprobs is None


def test_answer_and_no_usage_directives(client: openai.OpenAI) -> None:
    content = "Reply exactly. [[sim:answer=Paris, of course!]] [[sim:no_usage]]"
    response = client.chat.completions.create(model="gpt-4o", messages=user(content))
    assert response.choices[0].message.content == "Paris, of course!"
    assert response.usage is None

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=user(content),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "Paris, of course!"
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)


def test_legacy_completions(client: openai.OpenAI) -> None:
    single = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time")
    again = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time")
    assert single.object == "text_completion" and single.id.startswith("cmpl-")
    assert single.choices[0].text and single.choices[0].text == again.choices[0].text
    assert single.usage is not None
    assert single.usage.prompt_tokens == count_tokens("Once upon a time")
    assert single.usage.completion_tokens == len(tokenize(single.choices[0].text))

    several = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=["Once upon a time", "Hello"], n=2)
    assert [choice.index for choice in several.choices] == [0, 1, 2, 3]
    assert several.choices[0].text == single.choices[0].text

    streamed = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="Once upon a time",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == single.choices[0].text
    assert streamed[-2].choices[0].finish_reason == "stop"
    assert streamed[-1].choices == [] and streamed[-1].usage == single.usage

    limited = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=2, logprobs=2
    )
    assert limited.choices[0].finish_reason == "length"
    assert limited.choices[0].logprobs is not None
    assert "".join(limited.choices[0].logprobs.tokens or []) == limited.choices[0].text

    tokens = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=[[1, 2, 3], [4, 5]])
    assert len(tokens.choices) == 2 and tokens.usage is not None and tokens.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("model", "dimensions", "size"),
    [
        ("text-embedding-3-small", None, 1536),
        ("text-embedding-3-large", None, 3072),
        ("text-embedding-3-large", 256, 256),
    ],
)
def test_embeddings_are_deterministic_unit_vectors(
    client: openai.OpenAI, model: str, dimensions: int | None, size: int
) -> None:
    shorten = openai.omit if dimensions is None else dimensions
    # The SDK asks for base64 unless told otherwise; check both encodings agree.
    packed = client.embeddings.create(model=model, input=["alpha", "beta"], dimensions=shorten)
    floats = client.embeddings.create(model=model, input="alpha", encoding_format="float", dimensions=shorten)

    alpha, beta = (item.embedding for item in packed.data)
    assert [item.index for item in packed.data] == [0, 1]
    assert len(alpha) == len(beta) == len(floats.data[0].embedding) == size
    assert abs(math.fsum(value * value for value in alpha) - 1) < 1e-5
    assert max(abs(a - b) for a, b in zip(alpha, floats.data[0].embedding, strict=True)) < 1e-6
    assert alpha != beta
    assert packed.usage.prompt_tokens == packed.usage.total_tokens == count_tokens("alpha") + count_tokens("beta")


def test_shortened_embedding_is_the_normalised_prefix(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float")
    short = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", dimensions=8, encoding_format="float"
    )
    prefix = full.data[0].embedding[:8]
    norm = math.sqrt(math.fsum(value * value for value in prefix))
    assert short.data[0].embedding == pytest.approx([value / norm for value in prefix], abs=1e-12)


def test_embeddings_of_token_arrays(client: openai.OpenAI) -> None:
    response = client.embeddings.create(
        model="text-embedding-3-small", input=[[1, 2, 3], [4, 5]], encoding_format="float"
    )
    assert len(response.data) == 2 and response.usage.prompt_tokens == 5


def test_error_directives_map_to_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rate_limited:
        chat_text(client, "hi [[sim:429]]")
    assert rate_limited.value.response.headers["retry-after"] == "1"
    assert rate_limited.value.code == "rate_limit_exceeded" and rate_limited.value.type == "requests"

    with pytest.raises(openai.InternalServerError) as server_error:
        chat_text(client, "hi [[sim:500]]")
    assert server_error.value.status_code == 500

    with pytest.raises(openai.InternalServerError) as overloaded:
        chat_text(client, "hi [[sim:503]]")
    assert overloaded.value.status_code == 503

    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="text-embedding-3-small", input="x [[sim:429]]")


def test_invalid_requests_are_400_or_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-9000", messages=MESSAGES)
    assert unknown.value.code == "model_not_found"

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-4o", input="x")

    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="gpt-4o", messages=[])
    assert (empty.value.param, empty.value.type) == ("messages", "invalid_request_error")

    with pytest.raises(openai.BadRequestError) as role:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc,list-item]
    assert role.value.param == "messages[0].role"

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, top_logprobs=2)

    with pytest.raises(openai.BadRequestError):
        chat_text(client, "[[sim:confidence=2]]")

    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=4096)


def raw(url: str, method: str = "GET", body: bytes | None = None, key: str | None = "x") -> tuple[int, Any, Any]:
    """(status, headers, decoded JSON body) of one plain HTTP request."""
    request = Request(url, data=body, method=method)
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urlopen(request, timeout=5) as response:  # noqa: S310 (loopback test server)
            return response.status, response.headers, json.loads(response.read())
    except HTTPError as error:
        return error.code, error.headers, json.loads(error.read())


def test_raw_http_errors(simulator_url: str) -> None:
    chat_url = f"{simulator_url}/chat/completions"
    valid = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()

    status, _, body = raw(chat_url, "POST", valid, key=None)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")

    status, _, body = raw(chat_url, "POST", b"{not json")
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")

    status, _, body = raw(chat_url, "POST", json.dumps({"messages": MESSAGES}).encode())
    assert status == 400 and body["error"]["message"]

    status, _, body = raw(f"{simulator_url}/nothing-here")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"

    status, headers, _ = raw(chat_url)
    assert (status, headers["allow"]) == (405, "POST")

    status, _, body = raw(chat_url, "POST", valid)
    assert status == 200 and body["object"] == "chat.completion"

    status, _, body = raw(simulator_url.removesuffix("/v1") + "/health", key=None)
    assert (status, body) == (200, {"status": "ok"})


def test_fail_after_truncates_the_stream(client: openai.OpenAI) -> None:
    received: list[str] = []
    with pytest.raises((httpx2.RemoteProtocolError, openai.APIError)):
        for chunk in client.chat.completions.create(
            model="gpt-4o", messages=user("Go [[sim:fail_after=2]]"), stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 2


def test_timeout_and_latency_directives(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).chat.completions.create(model="gpt-4o", messages=user("[[sim:timeout]]"))
    assert time.monotonic() - started < 5

    started = time.monotonic()
    chat_text(client, "slow please [[sim:latency=300]]")
    assert time.monotonic() - started >= 0.3


def test_configured_latency_and_chunk_delay(start_simulator: Callable[..., openai.OpenAI]) -> None:
    client = start_simulator(latency_ms="150", stream_chunk_delay_ms="40")
    started = time.monotonic()
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    first = next(iter(stream))
    time_to_first_chunk = time.monotonic() - started
    rest = list(stream)
    total = time.monotonic() - started
    assert first.choices[0].delta.role == "assistant"
    assert time_to_first_chunk >= 0.15
    assert total - time_to_first_chunk >= 0.04 * len(rest) * 0.9


def test_error_rate_one_fails_every_request(start_simulator: Callable[..., openai.OpenAI]) -> None:
    client = start_simulator(error_rate="1")
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)


def test_chat_calls_a_function_tool_and_answers_its_result(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
    first = client.chat.completions.create(model="gpt-4o-mini", messages=user("Weather?"), tools=tools)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert first.choices[0].finish_reason == "tool_calls" and call.function.arguments == '{"city":"Paris"}'
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=user("Weather?"), tools=tools,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    pieces = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert pieces[0].function.name == "lookup" and "".join(p.function.arguments for p in pieces) == '{"city":"Paris"}'
    assert chunks[-1].usage is not None and chunks[-2].choices[0].finish_reason == "tool_calls"
    answered: Any = [*user("Weather?"), first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]  # fmt: skip
    second = client.chat.completions.create(model="gpt-4o-mini", messages=answered, tools=tools)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    orphan: Any = [*user("Weather?"), {"role": "tool", "tool_call_id": "call_nobody", "content": "sunny"}]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=orphan)
