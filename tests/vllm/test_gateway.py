"""The gateway in front of a real vLLM server, driven by the unmodified openai SDK."""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
from decimal import Decimal
from urllib.request import Request, urlopen

import openai
import pytest

from apps.providers.models import Provider, ProviderKind
from apps.providers.services import price_set, provider_create
from apps.tenancy.services import project_set_default_provider
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_policy
from tests.vllm import helpers

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not helpers.PYTHON.exists(), reason="no var/vllm-venv: `make test-vllm` installs it"),
]

INPUT_PER_MTOK, OUTPUT_PER_MTOK = Decimal("0.20"), Decimal("0.60")
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def provider(tenant: Tenant, vllm_server: str) -> Provider:
    """The vLLM server registered as the organisation's provider of ``tiny-llama`` and the project's default."""
    provider = provider_create(
        organization=tenant.org, name="vllm-cpu", kind=ProviderKind.OPENAI_COMPATIBLE, base_url=vllm_server
    )
    price_set(
        provider=provider,
        model=helpers.MODEL_NAME,
        input_per_mtok=INPUT_PER_MTOK,
        output_per_mtok=OUTPUT_PER_MTOK,
        effective_from=dt.date(2025, 1, 1),
    )
    project_set_default_provider(project=tenant.project, provider=provider)
    return provider


@pytest.fixture
def client(gateway: str, tenant: Tenant, provider: Provider) -> openai.OpenAI:
    wait_policy(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def _cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    cost = (prompt_tokens * INPUT_PER_MTOK + completion_tokens * OUTPUT_PER_MTOK) / Decimal(1_000_000)
    return cost.quantize(Decimal("1e-8"))


def _prompt_tokens(vllm_server: str, messages: list[dict[str, str]]) -> int:
    """What vLLM's own tokenizer and chat template make of ``messages``."""
    request = Request(
        vllm_server.removesuffix("/v1") + "/tokenize",
        data=json.dumps({"model": helpers.MODEL_NAME, "messages": messages}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urlopen(request, timeout=15) as answer:  # noqa: S310 (the loopback vLLM server)
        return int(json.load(answer)["count"])


def test_chat_completion_is_served_by_vllm_and_priced(
    client: openai.OpenAI, provider: Provider, vllm_server: str
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=helpers.MODEL_NAME, messages=HELLO, max_tokens=16)
    completion = raw.parse()
    assert completion.model == helpers.MODEL_NAME
    assert (completion.system_fingerprint or "").startswith("vllm-"), "answered by vLLM, not the simulator"
    assert completion.choices[0].message.role == "assistant"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens == _prompt_tokens(vllm_server, HELLO)
    assert 0 < usage.completion_tokens <= 16

    row = ledger_row(raw.headers["x-request-id"])
    assert (row.provider_id, row.requested_model, row.served_model) == (
        provider.id,
        helpers.MODEL_NAME,
        helpers.MODEL_NAME,
    )
    assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert row.status_code == 200 and not row.streamed and not row.usage_estimated
    assert row.cost == _cost(row.prompt_tokens, row.completion_tokens) and row.cost > 0


def test_stream_with_usage_bills_vllms_token_counts(client: openai.OpenAI, vllm_server: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=helpers.MODEL_NAME, messages=HELLO, max_tokens=16, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert len(chunks) > 2, "the answer arrives in several chunks"
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens == _prompt_tokens(vllm_server, HELLO)

    row = ledger_row(raw.headers["x-request-id"])
    assert row.streamed and not row.usage_estimated
    assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert row.cost == _cost(row.prompt_tokens, row.completion_tokens)
    assert row.ttft_ms is not None


def test_logprobs_come_back_through_the_gateway(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=helpers.MODEL_NAME, messages=HELLO, max_tokens=8, logprobs=True, top_logprobs=3
    )
    completion = raw.parse()
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert completion.usage is not None and len(logprobs.content) == completion.usage.completion_tokens
    for token in logprobs.content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert max(t.logprob for t in token.top_logprobs) >= token.logprob - 1e-6

    row = ledger_row(raw.headers["x-request-id"])
    assert row.completion_tokens == completion.usage.completion_tokens and row.cost > 0


def test_warm_latency_direct_and_through_the_gateway(client: openai.OpenAI, vllm_server: str) -> None:
    direct = openai.OpenAI(base_url=vllm_server, api_key="unused", max_retries=0, timeout=15)
    medians: dict[str, float] = {}
    for name, target in (("direct", direct), ("through the gateway", client)):
        seconds = []
        for _ in range(10):
            started = time.monotonic()
            completion = target.chat.completions.create(model=helpers.MODEL_NAME, messages=HELLO, max_tokens=8)
            seconds.append(time.monotonic() - started)
            assert completion.usage is not None and completion.usage.completion_tokens > 0
        medians[name] = statistics.median(seconds)
        helpers.timing(f"warm request median, {name} (8 tokens)", medians[name])
