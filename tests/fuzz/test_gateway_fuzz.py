"""Property-based fuzzing of the /v1 surface over real HTTP, against a live gateway and a hostile upstream.

Properties, for every input:
- no 5xx from our own code (a 5xx may only relay an upstream failure: the provider's own error, or one
  of our upstream codes such as ``upstream_timeout``);
- every error has OpenAI's shape: ``{"error": {"message": str, "type": str, "param": …, "code": …}}``;
- afterwards, a normal request's ledger row lands within seconds (nothing the fuzzer sent stopped ingest);
- on Anthropic's /v1/messages, every error has Anthropic's shape, and none is our own code failing.

Inputs: whole bodies of garbage; valid requests with garbage in one field, for every body field the
official SDKs send to each endpoint (read from their request types, not listed by hand); garbage headers;
a hostile upstream.

``make test`` runs ``FUZZ_EXAMPLES`` inputs per property (default 150, the same ones every run; the
field property runs a fifteenth of that, each round one request per field: about half a minute in all
on two cores); ``make fuzz`` runs a long campaign of fresh random inputs and prints how
many were tried and how they were answered; hypothesis prints the smallest failing input it found.
"""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from anthropic.types import message_create_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types import batch_create_params, completion_create_params, embedding_create_params
from openai.types.chat import completion_create_params as chat_create_params
from openai.types.responses import response_create_params

from apps.providers.models import ProviderKind
from apps.providers.services import provider_create
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy

pytestmark = pytest.mark.live

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
CAMPAIGN = os.environ.get("FUZZ_CAMPAIGN") == "1"  # make fuzz: new random inputs each run
# Our 5xx codes that only say what an upstream did (it failed, timed out, truncated, sent too much).
UPSTREAM_CODES = {"upstream_unavailable", "upstream_timeout", "circuit_open", "upstream_stream_truncated",
                  "upstream_response_too_large"}  # fmt: skip
PATHS = ["/chat/completions", "/completions", "/embeddings", "/responses"]
MODELS = ["gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small", "", "m" * 300, "no-such-model"]

TALLY: Counter[str] = Counter()

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not CAMPAIGN,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# JSON values of every type, nested a little; plus the edge numbers buggy clients send.
edge_numbers = st.sampled_from([0, -1, 1, 2**31, 2**53, 10**18, -(10**9), 1.5, 1e300, -0.0])
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | edge_numbers | st.text(max_size=20)
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)  # fmt: skip
part_type = st.sampled_from(["text", "image_url", "file", "input_audio", "weird"])
text_part = st.fixed_dictionaries(
    {"type": part_type}, optional={"text": json_value, "image_url": json_value, "file": json_value}
)
content = st.text(max_size=50) | json_value | st.lists(text_part | json_value, max_size=3)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]) | json_value},
    optional={"content": content, "name": json_value, "tool_calls": json_value},
)
# Responses API input items: messages, function calls and their outputs, and things that are neither.
response_item = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call_output", "function_call", "reasoning", "weird"]) | json_value},
    optional={"role": st.sampled_from(["user", "assistant", "developer"]) | json_value, "content": content,
              "call_id": st.text(max_size=10) | json_value, "output": json_value, "arguments": json_value},
)  # fmt: skip
body = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS) | json_value},
    optional={
        "messages": st.lists(message, max_size=3) | json_value,
        "prompt": st.text(max_size=30) | json_value,
        "input": st.text(max_size=30) | json_value | st.lists(message | response_item, max_size=3),
        "max_tokens": edge_numbers | json_value,
        "max_completion_tokens": edge_numbers | json_value,
        "n": edge_numbers | json_value,
        "best_of": edge_numbers | json_value,
        "stream": st.booleans() | json_value,
        "stream_options": json_value,
        "tools": json_value,
        "response_format": json_value,
        "user": st.text(max_size=30) | json_value,
        "temperature": json_value,
        "logprobs": json_value,
        # Any other field is forwarded as sent, and keyed for the ledger (1e300 once failed that).
        "seed": edge_numbers | json_value,
        # The Responses API's own fields (input is above).
        "instructions": st.text(max_size=30) | json_value,
        "max_output_tokens": edge_numbers | json_value,
        "previous_response_id": st.sampled_from(["resp_nope", "", "../x", "r" * 300]) | json_value,
        "store": st.booleans() | json_value,
        "background": st.booleans() | json_value,
        "reasoning": st.fixed_dictionaries({}, optional={"effort": json_value}) | json_value,
        "service_tier": st.sampled_from(["flex", "priority", "auto", "gold"]) | json_value,
    },
)
# Header values as bytes the HTTP parser lets through (it refuses other C0 controls and DEL itself).
header_value = st.binary(max_size=300).map(lambda raw: bytes(b for b in raw if b == 9 or 32 <= b < 127 or b >= 128))
headers = st.fixed_dictionaries(
    {}, optional={"X-Feature": header_value, "X-End-User": header_value, "Cache-Control": header_value,
                  "X-Cache-Namespace": header_value, "traceparent": header_value},
)  # fmt: skip
# Fields the API does not name are forwarded as sent and keyed for the ledger: any name, any value.
unknown_fields = st.dictionaries(st.text(max_size=8), edge_numbers | json_value, max_size=3)
raw_body = st.one_of(
    body.map(lambda b: json.dumps(b).encode()),
    st.tuples(body, unknown_fields).map(lambda pair: json.dumps({**pair[1], **pair[0]}).encode()),
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
)


def _usage_json(value: Any) -> str:
    # A directive's value ends at the first "]]".
    text = json.dumps(value)
    while "]]" in text:
        text = text.replace("]]", "] ]")
    return text


hostile_directive = st.one_of(
    json_value.map(lambda v: f"[[sim:usage={_usage_json(v)}]]"),
    st.integers(0, 11).map(lambda n: f"[[sim:garbage={n}]]"),
    st.integers(0, 2_000_000).map(lambda n: f"[[sim:huge={n}]]"),
    st.integers(0, 3_000_000).map(lambda n: f"[[sim:unframed={n}]]"),
    st.sampled_from(["[[sim:drip=1]] [[sim:answer=ok]]", "[[sim:500]]", "[[sim:503]]", "[[sim:429]]",
                     "[[sim:no_usage]]", "[[sim:fail_after=1]]", "[[sim:nul]]"]),
)  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_gateway(django_db_setup: None, upstream: str) -> Iterator[str]:
    """A gateway of its own whose circuit breaker never opens: the fuzzer's upstream failures must not turn
    the rest of the campaign into 503 circuit_open (which would hide what later inputs do)."""
    process, url = live.start_gateway(
        GATEWAY_UPSTREAM_TIMEOUT_SECONDS="3", GATEWAY_RETRIES="0", GATEWAY_BREAKER_FAILURES="1000000000"
    )
    yield url
    process.stop()


@pytest.fixture
def fuzz_target(fuzz_gateway: str, tenant: Tenant) -> Iterator[tuple[str, str]]:
    gateway = fuzz_gateway
    wait_key_live(gateway, tenant.key.plaintext)
    yield gateway, tenant.key.plaintext
    # Whatever was sent, the ledger still ingests: a normal request's row lands within seconds.
    raw = sdk(gateway, tenant.key.plaintext).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "still there?"}]
    )
    assert ledger_row(raw.headers["x-request-id"]).status_code == 200


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nfuzz: {TALLY['inputs']} inputs tried; statuses {dict(sorted(TALLY.items()))}")


def _post(target: tuple[str, str], path: str, payload: bytes, extra: dict[str, bytes]) -> tuple[int, bytes]:
    base, key = target
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.putrequest("POST", parts.path + path)
        connection.putheader("Authorization", f"Bearer {key}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(payload)))
        for name, value in extra.items():
            connection.putheader(name, value)
        connection.endheaders(payload)
        response = connection.getresponse()
        return response.status, response.read(8 * 1024 * 1024)
    finally:
        connection.close()


def _check(status: int, answer: bytes) -> None:
    TALLY["inputs"] += 1
    TALLY[str(status)] += 1
    if status < 400:
        return
    error = json.loads(answer)["error"]  # every error is OpenAI-shaped JSON
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and "param" in error and "code" in error
    if status >= 500:
        relayed = error["type"] == "server_error" or error.get("code") in UPSTREAM_CODES
        assert relayed, f"a {status} from our own code: {error}"


@FUZZ
@given(path=st.sampled_from(PATHS), payload=raw_body, extra=headers)
def test_any_request_gets_an_answer_or_an_openai_error(
    fuzz_target: tuple[str, str], path: str, payload: bytes, extra: dict[str, bytes]
) -> None:
    _check(*_post(fuzz_target, path, payload, extra))


def sdk_fields(params: Any, *, streams: bool = True) -> list[str]:
    """Every body field the official SDK sends to an endpoint: the keys of its request TypedDict, and
    ``stream`` where it streams, which the SDK adds in its streaming and non-streaming variants."""
    return sorted({*params.__required_keys__, *params.__optional_keys__, *(["stream"] if streams else [])})


# A valid request for each endpoint, and the fields the official SDK (the version pinned) knows for it: a
# field the API gains shows up here when the SDK is upgraded, without anyone adding it to a list.
SDK_REQUESTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "/chat/completions": ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                          sdk_fields(chat_create_params.CompletionCreateParamsBase)),
    "/completions": ({"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
                     sdk_fields(completion_create_params.CompletionCreateParamsBase)),
    "/embeddings": ({"model": "text-embedding-3-small", "input": "hi"},
                    sdk_fields(embedding_create_params.EmbeddingCreateParams)),
    "/responses": ({"model": "gpt-4o-mini", "input": "hi"},
                   sdk_fields(response_create_params.ResponseCreateParamsBase)),
}  # fmt: skip
MESSAGES_REQUEST = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES_FIELDS = sdk_fields(message_create_params.MessageCreateParamsBase)
# Each example sends one request per field of every endpoint (about a hundred), so fewer examples.
FIELD_FUZZ = settings(FUZZ, max_examples=max(3, EXAMPLES // 15))


@FIELD_FUZZ
@given(data=st.data())
def test_garbage_in_any_field_the_sdk_sends_gets_an_answer_or_an_openai_error(
    fuzz_target: tuple[str, str], data: st.DataObject
) -> None:
    """Every field of every endpoint in turn holds garbage, in a request otherwise valid (random bodies are
    nearly all refused by validation: these get past it to routing, the keys and the provider), beside
    fields the API does not name."""
    for path, (valid, fields) in SDK_REQUESTS.items():
        for field in fields:
            payload = {**data.draw(unknown_fields, label="unknown fields"), **valid}
            payload[field] = data.draw(edge_numbers | json_value, label=f"POST {path} {field}")
            _check(*_post(fuzz_target, path, json.dumps(payload).encode(), {}))


@pytest.fixture
def batch_input(fuzz_target: tuple[str, str]) -> str:
    """An uploaded batch input file of the fuzzing key's project, for batches that are otherwise valid."""
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}  # fmt: skip
    return sdk(*fuzz_target).files.create(file=("in.jsonl", json.dumps(line).encode()), purpose="batch").id


@FIELD_FUZZ
@given(data=st.data())
def test_garbage_in_any_field_of_a_batch_gets_a_batch_or_an_openai_error(
    fuzz_target: tuple[str, str], batch_input: str, data: st.DataObject
) -> None:
    valid = {"input_file_id": batch_input, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for field in sdk_fields(batch_create_params.BatchCreateParams, streams=False):
        payload = {**data.draw(unknown_fields, label="unknown fields"), **valid}
        payload[field] = data.draw(edge_numbers | json_value, label=f"POST /batches {field}")
        _check(*_post(fuzz_target, "/batches", json.dumps(payload).encode(), {}))


def test_the_field_lists_come_from_the_sdk() -> None:
    """The lists above are the SDK's, not a hand-picked few: the fields most often sent are in them."""
    assert {"temperature", "tools", "response_format", "max_completion_tokens", "stream"} <= set(
        SDK_REQUESTS["/chat/completions"][1]
    )
    assert {"instructions", "previous_response_id", "store", "background"} <= set(SDK_REQUESTS["/responses"][1])
    assert {"dimensions", "encoding_format"} <= set(SDK_REQUESTS["/embeddings"][1])
    assert {"system", "thinking", "stop_sequences", "tools"} <= set(MESSAGES_FIELDS)
    assert {"input_file_id", "endpoint", "completion_window", "metadata"} <= set(
        sdk_fields(batch_create_params.BatchCreateParams, streams=False)
    )


@FUZZ
@given(directive=hostile_directive, stream=st.booleans(), max_tokens=st.none() | st.integers(1, 50))
def test_a_hostile_upstream_never_makes_our_code_fail(
    fuzz_target: tuple[str, str], directive: str, stream: bool, max_tokens: int | None
) -> None:
    request: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {directive}"}],
                               "stream": stream}  # fmt: skip
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    _check(*_post(fuzz_target, "/chat/completions", json.dumps(request).encode(), {}))


# Anthropic's Messages API (/v1/messages): its own shapes, garbage at every level.
block = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image", "tool_use", "tool_result", "thinking", "video"]) | json_value},
    optional={"text": st.text(max_size=30) | json_value, "source": json_value, "id": json_value, "name": json_value,
              "input": json_value, "tool_use_id": json_value, "content": json_value, "cache_control": json_value},
)  # fmt: skip
anthropic_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant"]) | json_value,
     "content": st.text(max_size=30) | st.lists(block, max_size=3) | json_value},
)  # fmt: skip
messages_body = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-haiku-4-5", "gpt-4o-mini", "", "no-such-model"]) | json_value},
    optional={"max_tokens": st.integers(-2, 60) | json_value, "messages": st.lists(anthropic_message, max_size=3)
              | json_value, "system": st.text(max_size=30) | st.lists(block, max_size=2) | json_value,
              "stream": st.booleans() | json_value, "tools": json_value, "tool_choice": json_value,
              "stop_sequences": json_value, "metadata": json_value, "temperature": json_value},
)  # fmt: skip


@pytest.fixture
def claude_target(fuzz_target: tuple[str, str], tenant: Tenant, upstream: str) -> tuple[str, str]:
    provider_create(organization=tenant.org, name="claude", kind=ProviderKind.SIMULATED_ANTHROPIC, base_url=upstream)
    wait_policy(*fuzz_target)
    return fuzz_target


def _check_anthropic(status: int, answer: bytes) -> None:
    TALLY["inputs"] += 1
    TALLY[f"messages {status}"] += 1
    if status < 400:
        return
    body = json.loads(answer)  # every error is Anthropic-shaped JSON
    assert body["type"] == "error" and isinstance(body["error"]["type"], str)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["message"] != "The gateway failed to process the request.", body


@FUZZ
@given(path=st.sampled_from(["/messages", "/messages/count_tokens"]), payload=st.one_of(
    messages_body.map(lambda b: json.dumps(b).encode()), st.binary(max_size=100)), extra=headers)  # fmt: skip
def test_any_messages_request_gets_an_answer_or_an_anthropic_error(
    claude_target: tuple[str, str], path: str, payload: bytes, extra: dict[str, bytes]
) -> None:
    _check_anthropic(*_post(claude_target, path, payload, extra))


def test_the_sdk_sees_its_own_error_classes(fuzz_target: tuple[str, str]) -> None:
    """The shape the fuzzer checks is the one the official SDK turns into its exception classes."""
    client = sdk(*fuzz_target)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": 5}])  # type: ignore[misc]


@FIELD_FUZZ
@given(data=st.data())
def test_garbage_in_any_field_the_anthropic_sdk_sends_gets_an_answer_or_an_anthropic_error(
    claude_target: tuple[str, str], data: st.DataObject
) -> None:
    # The sampling fields earlier API versions took (this SDK no longer types them; apps still send them).
    for field in [*MESSAGES_FIELDS, "top_k", "top_p", "temperature"]:
        payload = {**data.draw(unknown_fields, label="unknown fields"), **MESSAGES_REQUEST}
        payload[field] = data.draw(edge_numbers | json_value, label=f"POST /messages {field}")
        _check_anthropic(*_post(claude_target, "/messages", json.dumps(payload).encode(), {}))
