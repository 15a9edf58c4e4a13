"""Hard budgets for batch lines: the same reservations as live requests (``apps.enforcement``).

On the sync path every line reserves its worst case (prompt estimate + max output at the price it
will pay) on the budgets that apply before it is sent, and settles to its real cost after, so a batch
can never spend past a hard budget by more than one line's worth, even beside live traffic. A batch
sent whole to a provider's Batch API or to vLLM's offline runner reserves the worst case of all its
lines at once; if that does not fit, the batch runs on the sync path instead, where lines are checked
one by one and refused (``insufficient_quota``) once the budget is spent.

Rate limits are not applied to batch lines: the sync path has its own concurrency cap so live traffic
keeps its share of the provider's limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from apps.batches.models import Batch, BatchLine
from apps.budgets.models import Budget
from apps.core.errors import GatewayError
from apps.core.pricing import MTOK, token_cost
from apps.core.request import ENDPOINT_PATHS, attribution, model_worst_case
from apps.core.snapshot import BudgetPolicy
from apps.enforcement.fastredis import ReplicaWait
from apps.enforcement.limiter import Admission, Limiter
from apps.enforcement.redis_clients import fast_client
from apps.policy.build import budget_policies

logger = logging.getLogger(__name__)


class BatchBudgets:
    """The budgets that apply to one batch's lines, and a limiter to reserve on them."""

    def __init__(self, *, organization_id: int, project_id: int, team_id: int | None, key: Any) -> None:
        self._project_id, self._team_id = project_id, team_id
        self._key_id = key.pk if key is not None else None
        self._feature = key.default_feature if key is not None else ""
        self._budgets = budget_policies(Budget.objects.filter(is_active=True, organization_id=organization_id))

    def attribution(self, body: dict[str, Any]) -> tuple[str, str]:
        """(feature, end user) of a line: the live rule (``apps.core.request.attribution``) without headers."""
        return attribution(feature="", end_user="", user=body.get("user"), default_feature=self._feature)

    def applying(self, body: dict[str, Any]) -> list[BudgetPolicy]:
        feature, end_user = self.attribution(body)
        return [
            b
            for b in self._budgets
            if b.applies(
                project_id=self._project_id,
                team_id=self._team_id,
                key_id=self._key_id or -1,
                feature=feature,
                end_user=end_user,
            )
        ]

    @property
    def any(self) -> bool:
        return bool(self._budgets)


def line_worst_case(
    endpoint: str, body: dict[str, Any], *, model: str, input_per_mtok: Decimal, output_per_mtok: Decimal
) -> tuple[Decimal, int]:
    """The most a (validated) line can cost (USD) and use (tokens) at these prices: the live rule."""
    worst = model_worst_case(
        endpoint, body, model, unknown_model_max_output=settings.GATEWAY_UNKNOWN_MODEL_MAX_OUTPUT_TOKENS
    )
    usd = (
        token_cost(
            prompt_tokens=worst.prompt_tokens,
            cached_tokens=0,
            completion_tokens=worst.output_tokens,
            input_rate=input_per_mtok,
            cached_input_rate=input_per_mtok,
            output_rate=output_per_mtok,
        )
        / MTOK
    )
    return usd, worst.tokens


@asynccontextmanager
async def batch_limiter() -> AsyncIterator[Limiter]:
    """The gateway's limiter on its own Redis connection, for one batch step."""
    redis = fast_client(
        settings.REDIS_URL,
        command_timeout=settings.GATEWAY_REDIS_TIMEOUT_SECONDS,
        wait=ReplicaWait(settings.REDIS_WAIT_REPLICAS, settings.REDIS_WAIT_TIMEOUT_MS),
    )
    try:
        result = Limiter(redis, settings.REDIS_PREFIX)
        await result.load()
        yield result
    finally:
        await redis.close()


async def reserve_on(
    limit: Limiter, *, request_id: str, budgets: list[BudgetPolicy], usd: Decimal, tokens_: int
) -> Admission | dict[str, Any]:
    """Reserve on ``budgets``; the OpenAI-shaped error body when a hard budget has no room."""
    try:
        return await limit.admit(
            request_id=request_id, budgets=budgets, rate_limits=[], worst_case_usd=usd, worst_case_tokens=tokens_
        )
    except GatewayError as exc:
        return dict(json.loads(exc.body()))


def admission_state(admission: Admission) -> dict[str, Any]:
    """What must be kept to settle a reservation from another process later."""
    return {
        "request_id": admission.request_id,
        "second": admission.second,
        "budget_keys": admission.budget_keys,
        "budget_reserved": admission.budget_reserved,
    }


def admission_from(state: dict[str, Any]) -> Admission:
    return Admission(
        request_id=state["request_id"],
        second=state["second"],
        budget_keys=list(state["budget_keys"]),
        budget_reserved=[int(n) for n in state["budget_reserved"]],
    )


def batch_budgets(batch: Batch) -> BatchBudgets:
    project = batch.project
    return BatchBudgets(
        organization_id=project.organization_id, project_id=project.pk, team_id=project.team_id, key=batch.api_key
    )


def reserve_whole(
    batch: Batch, lines: list[BatchLine], prices: Callable[[BatchLine], tuple[Decimal, Decimal, str]]
) -> bool:
    """Reserve the worst case of all ``lines`` at once (provider or vLLM backends); False when a hard budget
    has no room for it. The reservation is kept on the batch and settled by ``_settle_whole``."""
    budgets = batch_budgets(batch)
    if not budgets.any:
        return True
    total, tokens_total, applying = Decimal(0), 0, {}
    for line in lines:
        input_per_mtok, output_per_mtok, model = prices(line)
        usd, tokens_ = line_worst_case(
            ENDPOINT_PATHS[batch.endpoint], line.body, model=model, input_per_mtok=input_per_mtok,
            output_per_mtok=output_per_mtok,
        )  # fmt: skip
        total, tokens_total = total + usd, tokens_total + tokens_
        applying.update({b.id: b for b in budgets.applying(line.body)})
    if not applying:
        return True

    async def run() -> Any:
        async with batch_limiter() as limit:
            return await reserve_on(
                limit, request_id=batch.pk, budgets=list(applying.values()), usd=total, tokens_=tokens_total
            )

    reserved = asyncio.run(run())
    if isinstance(reserved, dict):
        return False
    Batch.objects.filter(pk=batch.pk).update(reservation=admission_state(reserved))
    batch.reservation = admission_state(reserved)
    return True


def settle_whole(batch_id: str) -> None:
    """Settle a whole-batch reservation to what its lines really cost (once)."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update(of=("self",)).get(pk=batch_id)
        state, batch.reservation = batch.reservation, None
        if not state:
            return
        batch.save(update_fields=["reservation"])
        spent = sum(BatchLine.objects.filter(batch=batch).values_list("cost", flat=True), Decimal(0))
    settle_state(state, spent)


def settle_state(state: dict[str, Any], spent: Decimal) -> None:
    """Settle a whole-batch reservation (as kept on the batch) to ``spent``."""

    async def run() -> None:
        async with batch_limiter() as limit:
            await limit.settle(admission_from(state), actual_usd=spent, actual_tokens=0)

    asyncio.run(run())
