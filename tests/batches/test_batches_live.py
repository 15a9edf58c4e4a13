"""The Batch API through the gateway with the official SDK; lines run by a real worker process."""

from __future__ import annotations

import datetime as dt
import json
import signal
from decimal import Decimal
from typing import Any

import openai
import pytest

from apps.batches.models import Batch, BatchLine
from apps.core import names
from apps.ledger.models import LedgerEntry
from apps.providers.models import ProviderKind
from tests import live
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import sdk, wait_key_live

pytestmark = pytest.mark.django_db(transaction=True)


def _jsonl(n: int, *, model: str = "gpt-4o-mini", start: int = 0) -> bytes:
    lines = []
    for i in range(start, start + n):
        body = {"model": model, "messages": [{"role": "user", "content": f"Summarise ticket {i}"}], "max_tokens": 40}
        lines.append(json.dumps({"custom_id": f"t-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}))
    return ("\n".join(lines) + "\n").encode()


def _create(client: openai.OpenAI, content: bytes) -> openai.types.Batch:
    uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(content)
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def _sync_only(tenant: Tenant) -> None:
    """A provider without a Batch API of its own: lines run on our sync path."""
    tenant.provider.kind = ProviderKind.OPENAI_COMPATIBLE
    tenant.provider.save(update_fields=["kind"])


def test_ten_thousand_lines_survive_a_killed_worker(gateway: str, tenant: Tenant) -> None:
    _sync_only(tenant)
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(10_000))
    assert (batch.status, batch.request_counts.total) == ("in_progress", 10_000)

    env = {"BATCH_SYNC_CONCURRENCY": "16", "BATCH_LEASE_SECONDS": "1"}
    first = live.start_manage("run_batch", batch.id, "--chunk", "200", name="batch worker", **env)
    live.wait_until(lambda: Batch.objects.get(pk=batch.id).completed >= 2_000, timeout=60, interval=0.05)
    first.kill(signal.SIGKILL)  # mid-run: it holds claimed lines that it never finishes
    first.proc.wait(timeout=10)
    done_at_kill = Batch.objects.get(pk=batch.id).completed
    left_running = BatchLine.objects.filter(batch_id=batch.id, status="running").count()
    assert 2_000 <= done_at_kill < 10_000

    second = live.start_manage("run_batch", batch.id, "--chunk", "200", name="batch worker 2", **env)
    assert second.proc.wait(timeout=120) == 0, second.output()

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (10_000, 0)
    output = client.files.content(done.output_file_id).text.splitlines()
    assert sorted(json.loads(line)["custom_id"] for line in output) == sorted(f"t-{i}" for i in range(10_000))
    assert all(json.loads(line)["response"]["status_code"] == 200 for line in output)

    rows = LedgerEntry.objects.filter(project=tenant.project, request_id__startswith=f"{batch.id}-")
    assert rows.count() == rows.values("request_id").distinct().count() == 10_000  # none lost, none billed twice
    lines_cost = sum(BatchLine.objects.filter(batch_id=batch.id).values_list("cost", flat=True))
    ledger_cost = sum(rows.values_list("cost", flat=True))
    assert ledger_cost == lines_cost == Batch.objects.get(pk=batch.id).cost > 0
    if left_running:
        # The killed worker's claimed lines were taken over after its lease ran out.
        assert BatchLine.objects.filter(batch_id=batch.id, attempts__gt=1).exists()


def test_invalid_lines_fail_the_batch_with_line_numbers(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    good = _jsonl(2).decode().splitlines()
    bad = [
        good[0],
        "{not json",
        json.dumps({"custom_id": "t-0", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}),
        json.dumps({"custom_id": "x", "method": "GET", "url": "/v1/embeddings", "body": {}}),
        good[1],
    ]
    batch = _create(client, ("\n".join(bad) + "\n").encode())
    assert batch.status == "failed"
    by_line = {e.line: e for e in batch.errors.data}
    assert sorted({e.line for e in batch.errors.data}) == [2, 3, 4]
    assert "not valid JSON" in by_line[2].message and "used twice" in by_line[3].message
    assert {e.param for e in batch.errors.data if e.line == 4} == {"method", "url", "body"}
    assert not BatchLine.objects.filter(batch_id=batch.id).exists()


def test_cancel_keeps_what_ran_and_stops_the_rest(gateway: str, tenant: Tenant) -> None:
    _sync_only(tenant)
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(50))
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    worker = live.start_manage("run_batch", batch.id, name="late worker")
    assert worker.proc.wait(timeout=60) == 0
    assert not LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-").exists()
    assert client.batches.retrieve(batch.id).status == "cancelled"


def test_other_projects_files_and_batches_are_invisible(gateway: str, tenant: Tenant, upstream: str) -> None:
    other = tenant_make(upstream_url=upstream)
    wait_key_live(gateway, tenant.key.plaintext)
    wait_key_live(gateway, other.key.plaintext)
    mine = sdk(gateway, tenant.key.plaintext)
    theirs = sdk(gateway, other.key.plaintext)
    batch = _create(mine, _jsonl(3))
    with pytest.raises(openai.NotFoundError):
        theirs.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(batch.input_file_id)
    with pytest.raises(openai.NotFoundError):
        theirs.batches.cancel(batch.id)
    assert [b.id for b in theirs.batches.list()] == []
    with pytest.raises(openai.BadRequestError, match="No batch file"):
        theirs.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_bad_requests_get_openai_errors(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", _jsonl(1)), purpose="fine-tune")
    uploaded = client.files.create(file=("x.jsonl", _jsonl(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "cc_live_nope").batches.list()
    assert Decimal(0) == sum(LedgerEntry.objects.filter(project=tenant.project).values_list("cost", flat=True))


def test_batches_page_shows_progress_to_members_only(gateway: str, tenant: Tenant) -> None:
    from django.test import Client

    from apps.batches.services import batch_run
    from tests.factories import login, tenant_make

    _sync_only(tenant)
    wait_key_live(gateway, tenant.key.plaintext)
    batch = _create(sdk(gateway, tenant.key.plaintext), _jsonl(20))
    batch_run(batch_id=batch.id, worker="test", chunk=5)
    page = login(Client(), tenant.owner).get(f"/projects/{tenant.project.slug}/batches/")
    assert page.status_code == 200
    assert (
        batch.id.encode() in page.content and b"20 / 0 / 20" in page.content and b'aria-valuenow="100"' in page.content
    )
    outsider = tenant_make().owner
    assert login(Client(), outsider).get(f"/projects/{tenant.project.slug}/batches/").status_code == 404


def test_provider_batch_api_runs_at_batch_prices(gateway: str, tenant: Tenant) -> None:
    from apps.batches.services import batch_run

    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(30))
    row = Batch.objects.get(pk=batch.id)
    assert (row.backend, row.provider_id) == ("provider", tenant.provider.id)  # the simulator has a Batch API
    batch_run(batch_id=batch.id, worker="test")  # submits to the provider, then takes in its results
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 30)
    output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"t-{i}" for i in range(30))
    rows = list(LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-"))
    assert len(rows) == 30 and all(r.route == f"batch:{batch.id}:provider" for r in rows)
    # gpt-4o-mini's batch prices are half its list prices: the saving is recorded.
    assert all(r.counterfactual_cost == 2 * r.cost > 0 for r in rows)


def test_a_hostile_provider_output_file_loses_no_line_and_no_ledger_row(gateway: str, tenant: Tenant) -> None:
    """The provider's output file is hostile input: records that are not JSON, not ours, or hold what
    Postgres cannot store are not taken; their lines run again on our sync path, each with one row."""
    from apps.batches.services import batch_run

    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    uploaded = client.files.create(file=("in.jsonl", _jsonl(16)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"sim_garbage_output": "true"},  # see apps/simulator/batch_api.py: 8 variants, in turn
    )  # fmt: skip
    batch_run(batch_id=batch.id, worker="test")  # submits, then takes in what it can of the provider's file
    row = Batch.objects.get(pk=batch.id)
    assert row.backend == "sync" and BatchLine.objects.filter(batch=row, status="pending").count() == 12
    batch_run(batch_id=batch.id, worker="test")  # the 12 lines the file did not give run here
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (16, 14, 2)
    assert not BatchLine.objects.filter(batch=row, status__in=("pending", "running", "submitted")).exists()
    rows = LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-")
    # Taken from the file: records 0 and 8 (as they should be, U+2028 and U+0085 inside a string: one line
    # each) and 6 and 14 (a garbage response and status: the provider's failure, a 500).
    assert sorted((r.route.rsplit(":", 1)[1], r.status_code) for r in rows) == sorted(
        [("provider", 200)] * 2 + [("provider", 500)] * 2 + [("sync", 200)] * 12
    )


def test_an_answer_holding_nul_is_stored_and_billed_on_the_sync_path(gateway: str, tenant: Tenant) -> None:
    """An upstream's answer is hostile input: one with a NUL (which jsonb cannot hold) failed its line's
    commit on every try, so the line was never done and the batch never finished."""
    from apps.batches.services import batch_run

    _sync_only(tenant)
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    lines = _jsonl(3).decode().splitlines()
    lines[1] = lines[1].replace("Summarise ticket 1", "Summarise ticket 1 [[sim:nul]]")
    batch = _create(client, ("\n".join(lines) + "\n").encode())
    batch_run(batch_id=batch.id, worker="test")
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 3)
    output = {o["custom_id"]: o for o in map(json.loads, client.files.content(done.output_file_id).text.splitlines())}
    assert output["t-1"]["response"]["body"]["choices"][0]["message"]["content"] == "nul \ufffd inside"
    assert LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-").count() == 3


def test_deadline_moves_unfinished_provider_lines_to_the_sync_path(gateway: str, tenant: Tenant) -> None:
    from apps.batches.services import batch_poll, batch_run

    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    uploaded = client.files.create(file=("in.jsonl", _jsonl(12)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"sim_hold": "true"},  # the simulated provider keeps this batch in progress
    )  # fmt: skip
    batch_run(batch_id=batch.id, worker="test")
    row = Batch.objects.get(pk=batch.id)
    assert row.provider_batch_id and BatchLine.objects.filter(batch=row, status="submitted").count() == 12
    assert batch_poll(batch_id=batch.id) == "in_progress"  # a day before the deadline: keep waiting

    batch_poll(batch_id=batch.id, now=row.expires_at)  # simulated clock: the deadline has come
    row.refresh_from_db()
    assert row.backend == "sync" and BatchLine.objects.filter(batch=row, status="pending").count() == 12
    batch_run(batch_id=batch.id, worker="test")
    done = client.batches.retrieve(batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 12)
    rows = LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-")
    assert rows.count() == 12 and {r.route for r in rows} == {f"batch:{batch.id}:sync"}


def test_cancelling_a_provider_batch_cancels_it_there(gateway: str, tenant: Tenant) -> None:
    from apps.batches.services import batch_run

    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    uploaded = client.files.create(file=("in.jsonl", _jsonl(5)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"sim_hold": "true"},
    )  # fmt: skip
    batch_run(batch_id=batch.id, worker="test")
    assert client.batches.cancel(batch.id).status == "cancelled"
    assert not LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-").exists()
    assert set(BatchLine.objects.filter(batch_id=batch.id).values_list("status", flat=True)) == {"cancelled"}


def test_a_batch_past_its_window_expires_with_its_unrun_lines(gateway: str, tenant: Tenant) -> None:
    from apps.batches.services import batch_run, batches_expire

    _sync_only(tenant)
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(6))
    row = Batch.objects.get(pk=batch.id)
    assert batches_expire(now=row.expires_at - dt.timedelta(seconds=1)) == 0  # still inside its window
    assert batches_expire(now=row.expires_at) == 1  # simulated clock: 24 h later, no worker ever came
    assert batch_run(batch_id=batch.id, worker="late") == 0

    expired = client.batches.retrieve(batch.id)
    assert (expired.status, expired.request_counts.failed, expired.output_file_id) == ("expired", 6, None)
    assert expired.expired_at is not None
    errors = [json.loads(line) for line in client.files.content(expired.error_file_id).text.splitlines()]
    assert sorted(e["custom_id"] for e in errors) == sorted(f"t-{i}" for i in range(6))
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert not LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-").exists()


def _hard_budget(tenant: Tenant, amount: str) -> Any:
    from apps.budgets.models import BudgetScope
    from apps.budgets.services import budget_create

    return budget_create(
        organization=tenant.org, name="batch cap", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal(amount), mode="hard",
    )  # fmt: skip


def _worst_line_usd() -> Decimal:
    """One line of ``_jsonl`` at most: its prompt estimate and 40 output tokens at gpt-4o-mini's list price."""
    from apps.batches.services.reserve import line_worst_case

    body = json.loads(_jsonl(1).decode())["body"]
    prices = {"input_per_mtok": Decimal("0.15"), "output_per_mtok": Decimal("0.60")}
    usd, _ = line_worst_case("chat.completions", body, model="gpt-4o-mini", **prices)
    return usd


def test_batch_lines_stop_at_a_hard_budget(gateway: str, tenant: Tenant) -> None:
    from apps.batches.services import batch_run

    _sync_only(tenant)
    _hard_budget(tenant, "0.0005")  # room for a few dozen of these lines
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(100))
    batch_run(batch_id=batch.id, worker="test", chunk=10)

    done = client.batches.retrieve(batch.id)
    assert done.status == "completed"
    assert 0 < done.request_counts.completed < 100 and done.request_counts.failed == 100 - done.request_counts.completed
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert {e["response"]["status_code"] for e in errors} == {429}
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"insufficient_quota"}
    spent = sum(LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-").values_list("cost", flat=True))
    assert 0 < spent <= Decimal("0.0005") + _worst_line_usd()  # never more than one line's worth over


def test_a_batch_too_big_for_the_budget_leaves_the_provider_batch_api_for_line_by_line(
    gateway: str, tenant: Tenant
) -> None:
    from apps.batches.services import batch_run

    _hard_budget(tenant, "0.0004")  # less than the 100 lines' worst case, even at batch prices
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(100))
    assert Batch.objects.get(pk=batch.id).backend == "provider"
    batch_run(batch_id=batch.id, worker="test")  # the whole-batch reservation does not fit
    row = Batch.objects.get(pk=batch.id)
    assert (row.backend, row.provider_batch_id) == ("sync", "")
    batch_run(batch_id=batch.id, worker="test")
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and 0 < done.request_counts.completed < 100
    spent = sum(LedgerEntry.objects.filter(request_id__startswith=f"{batch.id}-").values_list("cost", flat=True))
    assert spent <= Decimal("0.0004") + _worst_line_usd()


def test_a_provider_batch_reserves_its_worst_case_and_settles_to_its_cost(gateway: str, tenant: Tenant) -> None:
    import redis as redis_lib
    from django.conf import settings

    from apps.batches.services import batch_run

    budget = _hard_budget(tenant, "5.00")
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, _jsonl(20))
    batch_run(batch_id=batch.id, worker="test")
    row = Batch.objects.get(pk=batch.id)
    assert (row.status, row.backend, row.reservation) == ("completed", "provider", None)  # settled
    counters = redis_lib.Redis.from_url(settings.REDIS_URL)
    tag = names.org_tag(budget.organization_id)
    [key] = list(counters.scan_iter(match=f"{settings.REDIS_PREFIX}{tag}:budget:{budget.id}:*"))
    spent_nano = int(counters.get(key))
    assert spent_nano == int(row.cost * 1_000_000_000)  # the reservation became exactly what the lines cost
