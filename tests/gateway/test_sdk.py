"""The official openai SDK against a live gateway and the simulated upstream."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import openai
import pytest

from apps.core.catalog import OPENAI_PRICES
from apps.keys.services import key_issue, key_revoke
from apps.providers.services import alias_set
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live
from tests.live import wait_until

pytestmark = pytest.mark.live

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def _usd_per_token(model: str, column: int) -> Decimal:
    return OPENAI_PRICES[model][column] / Decimal(1_000_000)


def test_chat_completion_is_answered_and_billed(client: openai.OpenAI, tenant: Tenant) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers={"X-Feature": "faq", "X-End-User": "alice"}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    row = ledger_row(raw.headers["x-request-id"])
    assert row.project_id == tenant.project.id
    assert row.api_key_id == tenant.key.api_key.id
    assert (row.feature, row.end_user) == ("faq", "alice")
    assert (row.requested_model, row.served_model, row.provider_id) == (
        "gpt-4o-mini",
        "gpt-4o-mini",
        tenant.provider.id,
    )
    assert (row.prompt_tokens, row.completion_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    expected = row.prompt_tokens * _usd_per_token("gpt-4o-mini", 0) + row.completion_tokens * _usd_per_token(
        "gpt-4o-mini", 2
    )
    assert row.cost == expected.quantize(Decimal("1e-8"))
    assert row.counterfactual_cost == row.cost  # no routing, no cache: nothing saved
    assert row.status_code == 200 and not row.streamed and not row.usage_estimated
    assert row.latency_ms >= 0 and row.route == "direct"


def test_a_whole_answer_has_its_length_and_the_provider_is_asked_for_no_compression(client: openai.OpenAI) -> None:
    """The provider is asked for an uncompressed answer: the gateway reads it and relays it as it came, so a
    gzipped body would reach the app without the header that says so. The app gets the answer's length."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "[[sim:echo_header=accept-encoding]]"}]
    )
    assert raw.parse().choices[0].message.content == "identity"
    assert int(raw.headers["content-length"]) == len(raw.content)
    assert "transfer-encoding" not in raw.headers


def test_user_field_carries_end_user_and_feature(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, user="9f2c:ticket-triage"
    )
    row = ledger_row(raw.headers["x-request-id"])
    assert (row.end_user, row.feature) == ("9f2c", "ticket-triage")


def test_stream_passes_chunks_and_records_real_usage(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="gpt-4o", messages=HELLO).choices[0].message.content

    stream = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO, stream=True).parse()
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len(chunks) > 2, "the answer arrives in several chunks"
    assert all(c.choices for c in chunks), "the usage-only chunk is not shown to an app that did not ask for it"

    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    row = ledger_row(raw.headers["x-request-id"])
    assert row.streamed and not row.usage_estimated
    assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert row.ttft_ms is not None and row.cost > 0


def test_stream_without_provider_usage_is_counted_locally(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a story [[sim:no_usage]]"}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    row = ledger_row(raw.headers["x-request-id"])
    assert row.usage_estimated
    assert row.completion_tokens == math.ceil(len(text) / 4)
    assert row.cost > 0


def test_completions_embeddings_and_models(client: openai.OpenAI, tenant: Tenant) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
    assert completion.choices[0].text

    embedding = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    vectors = embedding.parse().data
    assert len(vectors) == 2 and len(vectors[0].embedding) == 1536
    row = ledger_row(embedding.headers["x-request-id"])
    assert row.endpoint == "embeddings" and row.prompt_tokens > 0 and row.completion_tokens == 0

    alias_set(project=tenant.project, alias="default-chat", provider=tenant.provider, model="gpt-4o-mini")
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"} <= ids
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"


def test_alias_is_served_by_its_model(gateway: str, client: openai.OpenAI, tenant: Tenant) -> None:
    alias_set(project=tenant.project, alias="default-chat", provider=tenant.provider, model="gpt-4o-mini")

    wait_until(lambda: "default-chat" in {m.id for m in client.models.list()})
    raw = client.chat.completions.with_raw_response.create(model="default-chat", messages=HELLO)
    assert raw.parse().model == "gpt-4o-mini"
    row = ledger_row(raw.headers["x-request-id"])
    assert (row.requested_model, row.served_model, row.route) == ("default-chat", "gpt-4o-mini", "alias:default-chat")


# --- errors, each as the SDK's own exception class ------------------------------


def test_bad_key_is_authentication_error(gateway: str, tenant: Tenant) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        sdk(gateway, "cc_live_nope1234" + "x" * 40).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert exc.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, tenant.key.plaintext[:-1] + "?").models.list()


def _refused_because(client: openai.OpenAI, reason: str) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError as exc:
        return reason in exc.message
    return False


def test_revoked_and_expired_keys_are_refused(gateway: str, client: openai.OpenAI, tenant: Tenant) -> None:
    key_revoke(api_key=tenant.key.api_key)
    wait_until(lambda: _refused_because(client, "revoked"), timeout=2)

    expired = key_issue(
        project=tenant.project, name="old", expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    )
    wait_until(lambda: _refused_because(sdk(gateway, expired.plaintext), "expired"), timeout=2)


def test_model_outside_key_allow_list_is_permission_denied(gateway: str, tenant: Tenant) -> None:
    limited = key_issue(project=tenant.project, name="mini only", allowed_models=["gpt-4o-mini"])
    wait_key_live(gateway, limited.plaintext)
    client = sdk(gateway, limited.plaintext)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert exc.value.code == "model_not_allowed"
    assert {m.id for m in client.models.list()} == {"gpt-4o-mini"}


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-9-ultra", messages=HELLO)
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9-ultra")


def test_upstream_429_is_rate_limit_error_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "[[sim:429]]"}])
    assert exc.value.response.headers.get("retry-after") == "1"


def test_upstream_500_and_timeout_are_api_status_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "[[sim:500]]"}])
    assert exc.value.status_code == 500
    # The test gateway gives the provider 3 s (GATEWAY_UPSTREAM_TIMEOUT_SECONDS).
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "[[sim:timeout]]"}])
    assert exc.value.status_code == 504 and exc.value.code == "upstream_timeout"


def test_truncated_upstream_stream_raises_in_the_sdk(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Long answer please [[sim:fail_after=2]]"}]
    with pytest.raises(openai.APIError):
        for _chunk in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True):
            pass


def _post_raw(url: str, key: str, body: bytes) -> tuple[int, dict]:
    request = Request(url, data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            return response.status, json.loads(response.read())
    except HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 42, "messages": []}', "model"),
        (b'{"model": "gpt-4o"}', "messages"),
        (b'{"model": "gpt-4o", "messages": "hi"}', "messages"),
        (b'{"model": "gpt-4o", "messages": [{"content": "no role"}]}', "messages[0]"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": "10"}', "max_tokens"),
        (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ],
)
def test_malformed_requests_get_400_in_openai_shape(
    gateway: str, tenant: Tenant, body: bytes, param: str | None
) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    status, payload = _post_raw(f"{gateway}/chat/completions", tenant.key.plaintext, body)
    assert status == 400
    assert payload["error"]["type"] == "invalid_request_error"
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]


def test_missing_model_raises_bad_request_in_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="", messages=HELLO)
    assert exc.value.param == "model"
