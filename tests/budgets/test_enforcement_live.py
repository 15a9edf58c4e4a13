"""Budgets and rate limits through live gateway processes and the official SDK."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
import redis
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from apps.budgets.models import Budget, BudgetScope
from apps.budgets.services import budget_create, rate_limit_set
from apps.core import names
from apps.core.catalog import OPENAI_PRICES
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.ledger.models import LedgerEntry
from tests import live
from tests.factories import Tenant
from tests.gateway.helpers import ingest_all, sdk, wait_policy

pytestmark = pytest.mark.live

MAX_TOKENS = 200
PROMPT = [{"role": "user", "content": "Write a haiku about invoices and the month of November."}]


@pytest.fixture
def second_gateway(gateway: str) -> Iterator[str]:
    process, url = live.start_gateway()
    yield url
    process.stop()


@pytest.mark.parametrize(
    ("amount", "requests"),
    [
        # Too small for leases: every request is admitted by the script.
        ("0.05", 200),
        # Big enough that both gateways admit from leases until the budget nears its end.
        ("0.30", 1000),
    ],
)
def test_concurrent_requests_on_two_gateways_never_overspend(
    gateway: str, second_gateway: str, tenant: Tenant, amount: str, requests: int
) -> None:
    budget = budget_create(
        organization=tenant.org, name="tight", scope=BudgetScope.PROJECT, project=tenant.project,
        amount_usd=Decimal(amount),
    )  # fmt: skip
    for url in (gateway, second_gateway):
        wait_policy(url, tenant.key.plaintext)
    clients = [sdk(url, tenant.key.plaintext) for url in (gateway, second_gateway)]
    leases_given_back = _redis_calls("decrby")

    def one(i: int) -> str:
        try:
            clients[i % 2].chat.completions.create(
                model="gpt-4o", messages=[{**PROMPT[0], "content": f"{PROMPT[0]['content']} #{i}"}],
                max_tokens=MAX_TOKENS,
            )  # fmt: skip
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota", exc.message
            assert "tight" in exc.message
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(one, range(requests)))

    ingest_all()
    rows = LedgerEntry.objects.filter(project=tenant.project)
    served = rows.filter(status_code=200)
    spent = served.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    prices = OPENAI_PRICES["gpt-4o"]
    largest_prompt = max(r.prompt_tokens for r in served)
    one_request_max = (largest_prompt * prices[0] + MAX_TOKENS * prices[2]) / Decimal(1_000_000)
    assert outcomes.count("ok") == served.count() > 0
    assert outcomes.count("refused") == rows.filter(status_code=429, error_code="insufficient_quota").count() > 0
    assert spent <= budget.amount_usd + one_request_max, f"spent {spent} against a {budget.amount_usd} budget"
    # Once every lease has gone back, the shared counter holds exactly what was spent: nothing
    # leased or reserved is left over (each request rounds to a whole nano-dollar).
    live.wait_until(lambda: abs(_budget_counter(budget) - to_nano(spent)) <= served.count(), timeout=5)
    if budget.amount_usd >= Decimal("0.30"):
        assert _redis_calls("decrby") > leases_given_back, "no lease was given back: leases were not in play"


def _budget_counter(budget: Budget) -> int:
    start, _end = period_bounds(budget.period, budget.timezone, timezone.now(), budget.starts_at)
    value = redis.Redis.from_url(settings.REDIS_URL).get(
        names.budget_counter(
            settings.REDIS_PREFIX, budget.id, start.timestamp(), organization_id=budget.organization_id
        )
    )
    return int(value or 0)


def _redis_calls(command: str) -> int:
    """How often Redis has run ``command`` (scripts' calls included) since it started."""
    stats = redis.Redis.from_url(settings.REDIS_URL).info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_rate_limit_headers_and_429_through_the_sdk(gateway: str, tenant: Tenant) -> None:
    rate_limit_set(project=tenant.project, requests_per_minute=3)
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=PROMPT, max_tokens=5)
    assert exc.value.code == "rate_limit_exceeded"
    assert int(exc.value.response.headers["retry-after"]) >= 1
    assert exc.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_streams_count_against_tokens_per_minute(gateway: str, tenant: Tenant) -> None:
    rate_limit_set(project=tenant.project, tokens_per_minute=400)
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    used = 0
    with pytest.raises(openai.RateLimitError) as exc:
        for _ in range(20):
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=PROMPT, max_tokens=60, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            chunks = list(stream)
            used += chunks[-1].usage.total_tokens  # type: ignore[union-attr]
    assert exc.value.code == "rate_limit_exceeded" and exc.value.type == "tokens"
    assert 0 < used <= 400


def test_feature_and_end_user_budgets_only_bind_their_slice(gateway: str, tenant: Tenant) -> None:
    for scope, field in ((BudgetScope.FEATURE, "feature"), (BudgetScope.END_USER, "end_user")):
        budget_create(
            organization=tenant.org, name=f"no {field}", scope=scope, project=tenant.project,
            amount_usd=Decimal("0.0001"), **{field: "bulk-export" if field == "feature" else "crawler-7"},
        )  # fmt: skip
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    ask = {"model": "gpt-4o", "messages": PROMPT, "max_tokens": 20}
    with pytest.raises(openai.RateLimitError, match="no feature"):
        client.chat.completions.create(**ask, extra_headers={"X-Feature": "bulk-export"})
    with pytest.raises(openai.RateLimitError, match="no end_user"):
        client.chat.completions.create(**ask, user="crawler-7:search")
    assert client.chat.completions.create(**ask, extra_headers={"X-Feature": "chat"}, user="alice").choices
