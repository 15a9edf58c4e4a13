"""The batches tests again, with /v1/responses lines: priced to the token, at batch or list prices."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from apps.batches.models import Batch
from apps.batches.services import batch_run
from apps.core.catalog import CATALOG
from apps.ledger.models import LedgerEntry
from tests.batches.test_batches_live import _sync_only
from tests.factories import Tenant
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.django_db(transaction=True)


def _jsonl(n: int, *, model: str, **extra: Any) -> bytes:
    lines = []
    for i in range(n):
        body = {"model": model, "input": f"Summarise ticket {i}", "max_output_tokens": 300, **extra}
        lines.append(json.dumps({"custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def _create(client: openai.OpenAI, content: bytes) -> openai.types.Batch:
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")


def _usd(tokens: int, rate: Decimal) -> Decimal:
    return tokens * rate / Decimal(1_000_000)


def test_provider_batch_api_runs_responses_lines_at_batch_prices(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(12, model="o4-mini", reasoning={"effort": "low"}))
    assert Batch.objects.get(pk=batch.id).backend == "provider"
    batch_run(batch_id=batch.id, worker="test")
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 12)
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert all(o["response"]["body"]["object"] == "response" for o in output)
    rows = list(LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-"))
    assert len(rows) == 12
    batch_rates, list_rates = CATALOG["o4-mini"].tiers["batch"], CATALOG["o4-mini"].tiers["standard"]
    for row in rows:
        assert (row.endpoint, row.service_tier) == ("batch.responses", "batch")
        assert 0 < row.reasoning_tokens < row.completion_tokens
        cost = _usd(row.prompt_tokens, batch_rates.input) + _usd(row.completion_tokens, batch_rates.output)
        assert row.cost == cost.quantize(Decimal("1e-8"))
        listed = _usd(row.prompt_tokens, list_rates.input) + _usd(row.completion_tokens, list_rates.output)
        assert row.counterfactual_cost == listed.quantize(Decimal("1e-8"))


def test_sync_path_runs_responses_lines_at_list_prices(gateway: str, tenant: Tenant) -> None:
    _sync_only(tenant)
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(5, model="gpt-4o-mini", store=False))
    assert Batch.objects.get(pk=batch.id).backend == "sync"
    batch_run(batch_id=batch.id, worker="test")
    assert client.batches.retrieve(batch.id).status == "completed"
    rows = list(LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-"))
    rates = CATALOG["gpt-4o-mini"].tiers["standard"]
    assert len(rows) == 5
    for row in rows:
        assert (row.endpoint, row.service_tier) == ("batch.responses", "standard") and row.completion_tokens > 0
        cost = _usd(row.prompt_tokens, rates.input) + _usd(row.completion_tokens, rates.output)
        assert row.cost == cost.quantize(Decimal("1e-8"))


def test_bad_responses_lines_fail_the_batch_with_line_numbers(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    good = _jsonl(1, model="gpt-4o-mini").decode().strip()
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/responses", "body": {"model": "gpt-4o-mini"}}
    batch = _create(client, (good + "\n" + json.dumps(bad) + "\n").encode())
    assert batch.status == "failed"
    assert [(e.line, e.param) for e in batch.errors.data] == [(2, "input")]


def test_a_chat_only_provider_gets_responses_lines_translated_and_priced(gateway: str, tenant: Tenant) -> None:
    """Lines for a provider that speaks only Chat Completions go as chat requests and come back as Responses."""
    _sync_only(tenant)
    tenant.provider.responses_api = False
    tenant.provider.save(update_fields=["responses_api"])
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    second_turn = {"model": "gpt-4o-mini", "input": "and then?", "previous_response_id": "resp_abc"}
    follow_up = {"custom_id": "turn-2", "method": "POST", "url": "/v1/responses", "body": second_turn}
    batch = _create(client, _jsonl(3, model="gpt-4o-mini", instructions="Be brief.") + json.dumps(follow_up).encode())
    batch_run(batch_id=batch.id, worker="test")
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 3, 1)
    output = {o["custom_id"]: o for o in map(json.loads, client.files.content(done.output_file_id).text.splitlines())}
    for i in range(3):
        body = output[f"r-{i}"]["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed" and body["instructions"] == "Be brief."
        assert body["output"][0]["type"] == "message" and body["output"][0]["content"][0]["text"]
        assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("turn-2", 400)]
    assert errors[0]["response"]["body"]["error"]["param"] == "previous_response_id"
    rates = CATALOG["gpt-4o-mini"].tiers["standard"]
    rows = list(LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-", status_code=200))
    assert len(rows) == 3
    for row in rows:
        assert row.endpoint == "batch.responses" and row.prompt_tokens > 0 and row.completion_tokens > 0
        cost = _usd(row.prompt_tokens, rates.input) + _usd(row.completion_tokens, rates.output)
        assert row.cost == cost.quantize(Decimal("1e-8"))
