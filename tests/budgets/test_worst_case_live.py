"""The hard-budget promise with what used to be undercounted: tools, images, and a model the catalogue lacks.

Each request here is billed by the (simulated) provider for more than the old reservation covered: an
image's tokens, a tool schema's, and 20,000 output tokens from a model whose output limit the price
catalogue does not know (the old reservation assumed 4,096). Under concurrency the spend must still never
pass the limit by more than one request's worst case.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.db.models import Max, Sum

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.core.request import ENDPOINT_CHAT, worst_case
from apps.ledger.models import LedgerEntry
from apps.providers.services import price_set
from tests.factories import Tenant
from tests.gateway.helpers import ingest_all, sdk, wait_policy

pytestmark = pytest.mark.live

UNKNOWN_MODEL = "gpt-3.5-turbo"  # served by the simulator, absent from the catalogue's output limits
INPUT, OUTPUT = Decimal("0.50"), Decimal("1.50")  # USD per 1M tokens
TOOL = {"type": "function", "function": {"name": "lookup_order", "description": "Find an order " * 20,
        "parameters": {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(30)}}}}  # fmt: skip
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 200}}
# What the provider bills for each request: an image and the tool schema in the prompt, a long answer.
BILLED = '[[sim:usage={"prompt_tokens": 3000, "completion_tokens": 20000}]]'


def _request(i: int) -> dict[str, Any]:
    content = [{"type": "text", "text": f"Look at this receipt #{i} {BILLED}"}, IMAGE]
    return {"model": UNKNOWN_MODEL, "messages": [{"role": "user", "content": content}], "tools": [TOOL]}


def test_spend_never_passes_the_limit_by_more_than_one_worst_case(gateway: str, tenant: Tenant) -> None:
    price_set(provider=tenant.provider, model=UNKNOWN_MODEL, input_per_mtok=INPUT, output_per_mtok=OUTPUT,
              effective_from=dt.date(2020, 1, 1))  # fmt: skip
    limit = Decimal("0.60")
    budget_create(
        organization=tenant.org, name="tight", scope=BudgetScope.PROJECT, project=tenant.project, amount_usd=limit
    )
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)

    def one(i: int) -> str:
        try:
            client.chat.completions.create(**_request(i))
            return "ok"
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota", exc.message
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        outcomes = list(pool.map(one, range(120)))

    ingest_all()
    served = LedgerEntry.objects.filter(project=tenant.project, status_code=200)
    spent = served.aggregate(total=Sum("cost"))["total"] or Decimal(0)
    assert served.aggregate(most=Max("completion_tokens"))["most"] == 20_000, "the provider billed the long answer"
    worst = max(
        (worst_case(ENDPOINT_CHAT, _request(i), model_max_output=None, unknown_model_max_output=128_000)
         for i in range(120)),
        key=lambda w: w.tokens,
    )  # fmt: skip
    one_worst = (worst.prompt_tokens * INPUT + worst.output_tokens * OUTPUT) / Decimal(1_000_000)
    assert outcomes.count("ok") == served.count() > 0 and "refused" in outcomes
    assert spent <= limit + one_worst, f"spent {spent} against a {limit} budget (one worst case {one_worst})"
