"""Long-context rates through a live gateway and the official SDK: a GPT-5.4 request whose prompt passes
272K tokens is billed whole at 2x input and 1.5x output, and a hard budget reserves those rates."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from apps.budgets.models import BudgetScope
from apps.budgets.services import budget_create
from apps.core.catalog import CATALOG
from tests.factories import Tenant
from tests.gateway.helpers import ledger_row, sdk, wait_key_live, wait_policy

pytestmark = pytest.mark.live

MODEL = "gpt-5.4"
MTOK = Decimal(1_000_000)


def _billed(prompt: int, completion: int) -> str:
    return f'[[sim:usage={{"prompt_tokens": {prompt}, "completion_tokens": {completion}}}]]'


def test_a_prompt_past_272k_tokens_is_billed_at_the_long_context_rates(gateway: str, tenant: Tenant) -> None:
    wait_key_live(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    rates = CATALOG[MODEL].tiers["standard"]

    def row_for(prompt: int) -> Decimal:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": f"Summarise. {_billed(prompt, 40)}"}]
        )
        row = ledger_row(raw.headers["x-request-id"])
        assert (row.prompt_tokens, row.completion_tokens, row.usage_estimated) == (prompt, 40, False)
        return row.cost

    assert row_for(272_000) == (272_000 * rates.input + 40 * rates.output) / MTOK
    assert row_for(300_000) == (300_000 * rates.input * 2 + 40 * rates.output * Decimal("1.5")) / MTOK


def test_a_hard_budget_reserves_a_long_prompt_at_the_long_context_rates(gateway: str, tenant: Tenant) -> None:
    rates = CATALOG[MODEL].tiers["standard"]
    prompt = "word " * 300_000  # about 300K tokens by any count; 1.5 MB, under the body limit
    standard_worst = (300_000 * rates.input + 100 * rates.output) / MTOK  # about $0.75
    # Enough for the prompt at the standard rate, not at twice it.
    budget_create(organization=tenant.org, name="long", scope=BudgetScope.PROJECT, project=tenant.project,
                  amount_usd=(standard_worst * Decimal("1.3")).quantize(Decimal("0.01")))  # fmt: skip
    wait_policy(gateway, tenant.key.plaintext)
    client = sdk(gateway, tenant.key.plaintext)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": prompt}])
    assert refused.value.code == "insufficient_quota"
    # The same budget admits a prompt under the size, priced at the standard rate.
    small = client.chat.completions.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "word " * 1000}]
    )
    assert small.choices[0].message.content
