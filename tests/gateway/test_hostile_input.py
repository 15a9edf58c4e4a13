"""What buggy clients, hostile tenants and broken providers send: answered, never a 500, never a stuck ledger."""

from __future__ import annotations

import http.client
import json
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from apps.ledger.models import LedgerEntry
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy
from tests.routing.helpers import ask, rule_make

pytestmark = pytest.mark.live

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def raw_post(
    base_url: str, key: str, path: str, body: bytes, headers: dict[str, bytes]
) -> tuple[int, dict[str, str], Any]:
    """A request through http.client, which sends header bytes the SDK's HTTP stack refuses (tabs, C1 controls)."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=15)
    try:
        connection.putrequest("POST", parts.path + path)
        connection.putheader("Authorization", f"Bearer {key}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_poison_pills_are_answered_and_the_ledger_keeps_ingesting(
    gateway: str, client: openai.OpenAI, tenant: Tenant
) -> None:
    """Each of these once stopped the ledger consumer for every tenant: a value its column refuses."""
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.with_raw_response.create(model="m" * 300, messages=HELLO)
    long_model = missing.value.response.headers["x-request-id"]

    nul = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO, user="a\u0000b:feat")
    # Tabs and C1 controls (U+0085, U+009B as UTF-8) reach us; the HTTP parser itself refuses other C0 and DEL.
    feature_bytes = b"feat\tA\xc2\x85B" + b"x" * 500
    status, headers, body = raw_post(
        gateway, tenant.key.plaintext, "/chat/completions",
        json.dumps({"model": "gpt-4o-mini", "messages": HELLO}).encode(),
        {"X-Feature": feature_bytes, "X-End-User": b"\xc2\x9b" * 300},
    )  # fmt: skip
    assert status == 200 and body["choices"]

    after = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    assert ledger_row(after.headers["x-request-id"]).status_code == 200, "a normal request lands after them"

    row = LedgerEntry.objects.get(request_id=long_model)
    assert row.status_code == 404 and row.requested_model == "m" * 200
    row = LedgerEntry.objects.get(request_id=nul.headers["x-request-id"])
    assert (row.end_user, row.feature, row.status_code) == ("ab", "feat", 200)
    row = LedgerEntry.objects.get(request_id=headers["x-request-id"])
    assert row.feature == ("featAB" + "x" * 500)[:100] and row.end_user == ""


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
        ([{"type": "text", "text": None}], "messages[0].content[0].text"),
        (12345, "messages[0].content"),
    ],
)
def test_malformed_content_is_a_400_not_a_500_nor_forwarded(client: openai.OpenAI, content: Any, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])
    assert refused.value.param == param and refused.value.code == "invalid_type"
    row = ledger_row(refused.value.response.headers["x-request-id"])
    assert row.status_code == 400 and row.provider_id is None and row.served_model == "" and row.cost == 0


def test_completions_stream_options_of_the_wrong_type_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="hi",
            stream=True,
            stream_options="x",  # type: ignore[arg-type]
        )
    assert refused.value.param == "stream_options"


def test_a_prompt_nested_500_deep_is_a_400(client: openai.OpenAI) -> None:
    nested: Any = "deep"
    for _ in range(500):
        nested = [nested]
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt=nested)
    assert refused.value.param == "prompt"


def test_a_whole_number_past_64_bits_is_answered_not_a_500(gateway: str, client: openai.OpenAI, tenant: Tenant) -> None:
    """The request's key for the ledger made 1e300 an integer no JSON encoder writes: every such request got a 500."""
    answer = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, seed=10**30, temperature=1e300, extra_body={"x_unknown": -1e300}
    )
    assert answer.http_response.status_code == 200
    assert ledger_row(answer.headers["x-request-id"]).status_code == 200
    # A 30-digit integer as sent: JSON parsing makes it that float.
    status, _headers, body = raw_post(
        gateway, tenant.key.plaintext, "/chat/completions",
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "seed": ' + b"1" * 30 + b"}",
        {},
    )  # fmt: skip
    assert status == 200 and body["object"] == "chat.completion"


# (A directive's value ends at the first "]]": "[1] " is the array [1].)
@pytest.mark.parametrize("value", ['"x"', "-5", "[1] ", '{"prompt_tokens": "12", "completion_tokens": -4}', "1e30"])
@pytest.mark.parametrize("stream", [False, True])
def test_usage_of_the_wrong_type_is_estimated_never_negative(client: openai.OpenAI, value: str, stream: bool) -> None:
    messages = ask(f"Tell me something [[sim:usage={value}]]")
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=messages, stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            text = "".join(response.iter_lines())
        assert "[DONE]" in text
    else:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert raw.parse().choices
        request_id = raw.headers["x-request-id"]
    row = ledger_row(request_id)
    assert row.status_code == 200 and row.usage_estimated
    assert row.cost > 0 and row.prompt_tokens > 0 and row.completion_tokens > 0


def test_huge_and_negative_token_counts_from_upstream_are_bounded(client: openai.OpenAI) -> None:
    messages = ask('hi [[sim:usage={"prompt_tokens": 99999999999999, "completion_tokens": 3}]]')
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    row = ledger_row(raw.headers["x-request-id"])
    assert row.prompt_tokens == 2_147_483_647 and row.cost > 0 and not row.usage_estimated


def test_a_cascade_logprob_past_exp_range_escalates_instead_of_failing(
    gateway: str, client: openai.OpenAI, tenant: Tenant
) -> None:
    rule_make(tenant, name="tiers", action="cascade", primaries="gpt-4o-mini\ngpt-4o", cascade_threshold=Decimal("0.7"))
    wait_policy(gateway, tenant.key.plaintext)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=ask("Classify [[sim:gpt-4o-mini/logprob=710]]")
    )
    assert raw.parse().model == "gpt-4o"
    assert "escalated(no-logprobs)" in raw.headers["x-route"]


@pytest.mark.parametrize("variant", range(6))
def test_garbage_from_upstream_never_makes_a_500(client: openai.OpenAI, variant: int) -> None:
    messages = ask(f"hi [[sim:garbage={variant}]]")
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    # Not what OpenAI sends, but a 200 from the provider: passed through as it came, billed by estimate.
    assert raw.http_response.status_code == 200
    row = ledger_row(raw.headers["x-request-id"])
    assert row.status_code == 200 and row.cost >= 0
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=messages, stream=True
    ) as response:
        assert response.http_response.status_code == 200
        request_id = response.headers["x-request-id"]
        b"".join(response.iter_bytes())
    row = ledger_row(request_id)
    # The last variant never says [DONE]: a truncated stream. None carries a usage we can believe.
    assert row.status_code == (502 if variant == 5 else 200)
    assert row.usage_estimated and row.cost >= 0
