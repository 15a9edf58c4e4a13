"""Batch lines obey the live request contract: same validation, same allowed models, same attribution."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import openai
import pytest
import redis
from django.conf import settings
from django.utils import timezone

from apps.batches.models import Batch
from apps.batches.services import batch_run
from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.core import names
from apps.core.periods import period_bounds
from apps.keys.services import key_issue
from apps.ledger.models import LedgerEntry
from apps.providers.models import ProviderKind
from tests import live
from tests.batches.test_batches_live import _create, _sync_only
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy

pytestmark = pytest.mark.django_db(transaction=True)


def _line(custom_id: str, body: dict[str, Any]) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise ticket 7"}], **extra}


BAD_BODIES = [
    _body(max_tokens=-1_000_000_000),
    _body(max_tokens="x"),
    _body(max_tokens=10**18),
    _body(max_completion_tokens=-1, max_tokens=30_000),
    _body(n=0),
    _body(messages=[{"role": "user", "content": 12345}]),
    _body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
]


def test_bad_lines_get_the_errors_a_live_request_gets(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    lines = [_line("ok", _body()), *(_line(f"bad-{i}", body) for i, body in enumerate(BAD_BODIES))]
    batch = _create(client, ("\n".join(lines) + "\n").encode())
    assert batch.status == "failed"
    by_line = {e.line: e for e in batch.errors.data}
    assert sorted(by_line) == list(range(2, 2 + len(BAD_BODIES)))
    for number, body in enumerate(BAD_BODIES, start=2):
        with pytest.raises(openai.BadRequestError) as live:
            client.chat.completions.create(**body)
        error = by_line[number]
        assert error.message == f"Line {number}: {live.value.body['message']}"  # type: ignore[index]
        assert (error.param, error.code) == (live.value.param, live.value.code)


def test_lines_for_models_the_key_may_not_use_are_refused(gateway: str, tenant: Tenant) -> None:
    restricted = key_issue(project=tenant.project, name="mini only", allowed_models=["gpt-4o-mini"])
    wait_key_live(gateway, restricted.plaintext)
    client = sdk(gateway, restricted.plaintext)
    batch = _create(client, (_line("a", _body()) + "\n" + _line("b", _body(model="gpt-4o")) + "\n").encode())
    assert batch.status == "failed"
    [error] = batch.errors.data
    assert (error.line, error.code, error.param) == (2, "model_not_allowed", "model")
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(**_body(model="gpt-4o"))


def test_batch_rows_are_attributed_like_live_rows_and_feature_budgets_count_them(gateway: str, tenant: Tenant) -> None:
    _sync_only(tenant)
    keyed = key_issue(project=tenant.project, name="with default", default_feature="kdefault")
    budget = budget_create(
        organization=tenant.org, name="bot cap", scope=BudgetScope.FEATURE, project=tenant.project, feature="bot",
        amount_usd=Decimal(5), mode="hard",
    )  # fmt: skip
    wait_policy(gateway, keyed.plaintext)
    client = sdk(gateway, keyed.plaintext)
    bodies = [_body(user="alice:bot"), _body(user="bob"), _body(), _body(user="carol:bot", max_tokens=20)]
    batch = _create(client, ("\n".join(_line(str(i), b) for i, b in enumerate(bodies)) + "\n").encode())
    batch_run(batch_id=batch.id, worker="test")
    assert client.batches.retrieve(batch.id).status == "completed"

    for number, body in enumerate(bodies, start=1):
        raw = client.chat.completions.with_raw_response.create(**body)
        live_row = ledger_row(raw.headers["x-request-id"])
        batch_row = LedgerEntry.objects.get(request_id=f"{batch.id}-{number}")
        assert (batch_row.feature, batch_row.end_user) == (live_row.feature, live_row.end_user)
    assert [LedgerEntry.objects.get(request_id=f"{batch.id}-{n}").feature for n in (1, 2, 3)] == [
        "bot", "kdefault", "kdefault"
    ]  # fmt: skip

    # The feature budget reserved on exactly the lines (and live requests) its rows count: once settled and
    # the gateway's leases are back, its counter is their cost (each rounded to a whole nano-dollar).
    start, _end = period_bounds(budget.period, budget.timezone, timezone.now(), budget.starts_at)
    key = names.budget_counter(
        settings.REDIS_PREFIX, budget.id, start.timestamp(), organization_id=budget.organization_id
    )
    bot_rows = list(LedgerEntry.objects.filter(feature="bot", project=tenant.project))
    spent = sum(int(r.cost * 1_000_000_000) for r in bot_rows)
    assert len(bot_rows) == 4 and spent > 0

    def counter() -> int:
        return int(redis.Redis.from_url(settings.REDIS_URL).get(key) or 0)

    live.wait_until(lambda: abs(counter() - spent) <= len(bot_rows), timeout=5)


def test_a_failed_provider_batch_submit_gives_its_reservation_back(gateway: str, tenant: Tenant) -> None:
    budget = budget_create(
        organization=tenant.org, name="cap", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal(5), mode="hard",
    )  # fmt: skip
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    batch = _create(client, ("\n".join(_line(str(i), _body(max_tokens=40)) for i in range(10)) + "\n").encode())
    assert Batch.objects.get(pk=batch.id).backend == "provider"
    # The provider's Batch API goes away before the submit: nothing listens there any more.
    tenant.provider.base_url = "http://127.0.0.1:9/v1"
    tenant.provider.kind = ProviderKind.SIMULATED
    tenant.provider.save()
    start, _end = period_bounds(budget.period, budget.timezone, timezone.now(), budget.starts_at)
    key = names.budget_counter(
        settings.REDIS_PREFIX, budget.id, start.timestamp(), organization_id=budget.organization_id
    )
    counters = redis.Redis.from_url(settings.REDIS_URL)
    for _attempt in range(2):  # batches.resume would try again every minute
        with pytest.raises(openai.APIConnectionError):
            batch_run(batch_id=batch.id, worker="test")
        assert int(counters.get(key) or 0) == 0, "the failed submit left its worst case reserved"
    row = Batch.objects.get(pk=batch.id)
    assert (row.status, row.provider_batch_id, row.reservation) == ("in_progress", "", None)
