"""Background responses read back: the unmodified openai SDK creates them through a live gateway, the
simulator runs them, and the read-back service bills the ledger row at the real usage and gives the
difference back to the budget's counter in Redis."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import openai
import pytest
import redis
from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.budgets.background import background_usage_read_back
from apps.budgets.models import Budget
from apps.budgets.services import budget_create
from apps.core import names
from apps.core.catalog import CATALOG
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.ledger.models import BackgroundResponse, LedgerEntry, ProjectHourlyRollup, ReadBack
from apps.ledger.services import rollups_refresh
from tests.factories import Tenant, tenant_make
from tests.gateway.helpers import ingest_all, ledger_row, sdk, wait_key_live, wait_policy
from tests.live import wait_until

pytestmark = pytest.mark.live


@pytest.fixture(autouse=True)
def _only_this_tests_responses(transactional_db: None) -> None:
    """Ledger events other tests left on the stream are stored now, and their read-back rows dropped: the
    counts below are this test's."""
    ingest_all()
    BackgroundResponse.objects.all().delete()


@pytest.fixture
def client(gateway: str, tenant: Tenant) -> openai.OpenAI:
    wait_key_live(gateway, tenant.key.plaintext)
    return sdk(gateway, tenant.key.plaintext)


def _budget(gateway: str, tenant: Tenant) -> Budget:
    budget = budget_create(organization=tenant.org, name="month", scope="project", project=tenant.project,
                           amount_usd=Decimal("100"))  # fmt: skip
    wait_policy(gateway, tenant.key.plaintext)
    return budget


def _counter(redis_client: redis.Redis, budget: Budget) -> int:
    """The budget's counter once the gateway's leases on it are back (then it holds what was spent)."""
    start, _end = period_bounds(budget.period, budget.timezone, timezone.now(), budget.starts_at)
    key = names.budget_counter(
        settings.REDIS_PREFIX, budget.pk, start.timestamp(), organization_id=budget.organization_id
    )
    wait_until(lambda: int(redis_client.get(names.leased(key)) or 0) == 0, timeout=5)
    return int(redis_client.get(key) or 0)


def _priced(row: LedgerEntry) -> Decimal:
    rates = CATALOG[row.served_model].tiers[row.service_tier]
    uncached = row.prompt_tokens - row.cached_tokens
    usd = uncached * rates.input + row.cached_tokens * rates.cached_input + row.completion_tokens * rates.output
    return (usd / Decimal(1_000_000)).quantize(Decimal("1e-8"))


def _background(client: openai.OpenAI, text: str) -> tuple[str, LedgerEntry]:
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input=text, background=True, max_output_tokens=400
    )
    row = ledger_row(raw.headers["x-request-id"])
    assert row.usage_estimated and row.completion_tokens == 400  # the worst case, until read back
    return raw.parse().id, row


def _done(client: openai.OpenAI, response_id: str) -> openai.types.responses.Response:
    return wait_until(
        lambda: (r := client.responses.retrieve(response_id)).status not in ("queued", "in_progress") and r, timeout=10
    )


def test_a_finished_background_response_is_billed_at_its_real_usage_and_the_budget_gets_the_rest_back(
    gateway: str, client: openai.OpenAI, tenant: Tenant, redis_client: redis.Redis
) -> None:
    budget = _budget(gateway, tenant)
    response_id, row = _background(client, "Summarise the quarter [[sim:latency=300]]")
    pending = BackgroundResponse.objects.get(request_id=row.request_id)
    assert (pending.response_id, pending.provider_id, pending.status) == (response_id, tenant.provider.id, "pending")
    rollups_refresh()  # the worst case is rolled up before it is corrected
    counted = _counter(redis_client, budget)
    assert counted >= to_nano(row.cost)

    done = _done(client, response_id)
    assert done.status == "completed" and done.usage is not None
    assert background_usage_read_back(now=timezone.now() + dt.timedelta(minutes=1)) == 1

    real = LedgerEntry.objects.get(pk=row.pk, created_at=row.created_at)
    assert not real.usage_estimated
    assert (real.prompt_tokens, real.completion_tokens) == (done.usage.input_tokens, done.usage.output_tokens)
    assert real.cost == _priced(real) and 0 < real.cost < row.cost
    assert real.counterfactual_cost == real.cost  # asked for the model it was served
    assert _counter(redis_client, budget) == counted - (to_nano(row.cost) - to_nano(real.cost))
    hour = ProjectHourlyRollup.objects.filter(project=tenant.project).aggregate(cost=Sum("cost"))["cost"]
    assert hour == LedgerEntry.objects.filter(project=tenant.project).aggregate(cost=Sum("cost"))["cost"]
    # Read once: a second run finds nothing to do and gives nothing back twice.
    assert background_usage_read_back(now=timezone.now() + dt.timedelta(minutes=2)) == 0
    assert _counter(redis_client, budget) == counted - (to_nano(row.cost) - to_nano(real.cost))
    assert BackgroundResponse.objects.get(pk=pending.pk).status == ReadBack.READ


def test_a_cancelled_background_response_is_billed_for_its_input(
    gateway: str, client: openai.OpenAI, tenant: Tenant, redis_client: redis.Redis
) -> None:
    budget = _budget(gateway, tenant)
    response_id, row = _background(client, "Long job [[sim:latency=5000]]")
    counted = _counter(redis_client, budget)
    cancelled = client.responses.cancel(response_id)
    assert cancelled.status == "cancelled"
    assert background_usage_read_back() == 1
    real = LedgerEntry.objects.get(pk=row.pk, created_at=row.created_at)
    assert cancelled.usage is not None and real.prompt_tokens == cancelled.usage.input_tokens > 0
    assert real.completion_tokens == 0 and real.cost == _priced(real) and not real.usage_estimated
    assert _counter(redis_client, budget) == counted - (to_nano(row.cost) - to_nano(real.cost))
    assert BackgroundResponse.objects.get(request_id=row.request_id).provider_status == "cancelled"


@pytest.mark.parametrize(
    ("usage", "why"),
    [
        ('{"input_tokens": -5, "output_tokens": "lots"}', "without a usage we can read"),
        ('"plenty"', "without a usage we can read"),
        ('{"input_tokens": 10, "output_tokens": 900000}', "past what the request allowed"),
    ],
)
def test_a_hostile_usage_keeps_the_worst_case_and_says_so(
    gateway: str, client: openai.OpenAI, tenant: Tenant, redis_client: redis.Redis, usage: str, why: str
) -> None:
    budget = _budget(gateway, tenant)
    response_id, row = _background(client, f"Odd one [[sim:usage={usage}]] [[sim:latency=100]]")
    counted = _counter(redis_client, budget)
    _done(client, response_id)
    assert background_usage_read_back() == 1
    kept = LedgerEntry.objects.get(pk=row.pk, created_at=row.created_at)
    assert (kept.cost, kept.completion_tokens, kept.usage_estimated) == (row.cost, 400, True)
    given_up = BackgroundResponse.objects.get(request_id=row.request_id)
    assert given_up.status == ReadBack.UNREAD and why in given_up.note and "worst case kept" in given_up.note
    assert _counter(redis_client, budget) == counted


def _ledger_chip(tenant: Tenant) -> str:
    """What the owner's ledger page says of the row."""
    browser = Client()
    browser.force_login(tenant.owner)
    page = browser.get(reverse("dashboard:ledger")).content.decode()
    return next(chip for chip in ("worst case, pending", "worst case kept", "estimated") if chip in page)


def test_a_running_response_stays_pending_is_claimed_once_and_is_given_up_after_the_limit(
    client: openai.OpenAI, tenant: Tenant
) -> None:
    _response_id, row = _background(client, "Very long job [[sim:latency=60000]]")
    now = timezone.now()
    assert background_usage_read_back(now=now) == 0
    pending = BackgroundResponse.objects.get(request_id=row.request_id)
    assert (pending.status, pending.provider_status, pending.checks) == ("pending", "in_progress", 1)
    assert _ledger_chip(tenant) == "worst case, pending"
    # Claimed: another worker at the same moment does not read it again.
    assert background_usage_read_back(now=now) == 0
    assert BackgroundResponse.objects.get(pk=pending.pk).checks == 1
    later = now + dt.timedelta(hours=settings.BACKGROUND_READBACK_HOURS, minutes=1)
    assert background_usage_read_back(now=later) == 1
    given_up = BackgroundResponse.objects.get(pk=pending.pk)
    assert given_up.status == ReadBack.UNREAD and "worst case kept" in given_up.note
    assert LedgerEntry.objects.get(pk=row.pk, created_at=row.created_at).usage_estimated
    assert _ledger_chip(tenant) == "worst case kept"


def test_another_projects_background_rows_are_untouched(
    gateway: str, client: openai.OpenAI, tenant: Tenant, upstream: str, redis_client: redis.Redis
) -> None:
    other = tenant_make(upstream_url=upstream)
    wait_key_live(gateway, other.key.plaintext)
    other_budget = _budget(gateway, other)
    other_id, other_row = _background(sdk(gateway, other.key.plaintext), "Their job [[sim:latency=60000]]")
    other_counted = _counter(redis_client, other_budget)
    mine, row = _background(client, "My job [[sim:latency=100]]")
    _done(client, mine)
    assert background_usage_read_back() == 1
    assert not LedgerEntry.objects.get(pk=row.pk, created_at=row.created_at).usage_estimated
    theirs = LedgerEntry.objects.get(pk=other_row.pk, created_at=other_row.created_at)
    assert (theirs.cost, theirs.usage_estimated) == (other_row.cost, True)
    assert BackgroundResponse.objects.get(request_id=other_row.request_id).response_id == other_id
    assert BackgroundResponse.objects.get(request_id=other_row.request_id).status == ReadBack.PENDING
    assert _counter(redis_client, other_budget) == other_counted


def test_two_workers_at_once_settle_a_response_once(
    gateway: str, client: openai.OpenAI, tenant: Tenant, redis_client: redis.Redis
) -> None:
    budget = _budget(gateway, tenant)
    response_id, row = _background(client, "Quick job [[sim:latency=50]]")
    counted = _counter(redis_client, budget)
    _done(client, response_id)
    now = timezone.now()
    decided: list[int] = []

    def worker() -> None:
        try:
            decided.append(background_usage_read_back(now=now))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(decided) == [0, 0, 0, 1]
    real = LedgerEntry.objects.get(pk=row.pk, created_at=row.created_at)
    assert _counter(redis_client, budget) == counted - (to_nano(row.cost) - to_nano(real.cost))
