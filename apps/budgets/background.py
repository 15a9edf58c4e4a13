"""Background responses billed at their real usage: read back from the provider once they are done.

The gateway answers ``background: true`` on ``/v1/responses`` before anything is generated, so it bills
the response's worst case, marked estimated, and the hard budgets count that worst case. The ledger
ingest adds a ``BackgroundResponse`` row beside such a ledger row. This service (the
``budgets.read_back_background`` task, every 30 s) claims pending rows with an atomic update, asks
the provider (``GET /responses/{id}``, through the egress policy, with the provider's secret) and,
once the response is ``completed``, ``failed``, ``cancelled`` or ``incomplete`` with a usage it can
believe, corrects the ledger row to that usage at the row's price and tier, recomputes the hour's
roll-ups and gives the difference back to the budget counters in Redis.

It gives up, keeping the worst case (``unread``, with a note saying why), when the provider answers
something it cannot believe (no usage, counts that are not counts, more output than the request
allowed, another response's id), no longer knows the response, or has not finished it within
``BACKGROUND_READBACK_HOURS``. A provider that cannot be reached leaves the row pending.

Order matters for money: the ledger row is committed first, the Redis counters follow. A worker that
dies in between leaves a counter at the worst case (a budget errs on the safe side), and a counter
Redis no longer has is re-seeded from the corrected ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx2
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone
from redis.exceptions import RedisError

from apps.budgets.models import Budget
from apps.budgets.selectors import budget_ledger_filter
from apps.core import names
from apps.core.events import INT_MAX
from apps.core.periods import period_bounds
from apps.core.pricing import PriceRow, tier_name, to_nano
from apps.core.responses import UsageCounts, usage_counts
from apps.core.text import json_object
from apps.enforcement import scripts
from apps.ledger.models import BackgroundResponse, LedgerEntry, ReadBack
from apps.ledger.services import redis_client, rollups_recompute
from apps.providers.models import Price, Provider
from costcontrol.egress import egress_http_client

logger = logging.getLogger(__name__)

FINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
RUNNING = frozenset({"queued", "in_progress"})
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a Response object with its output; past this the answer is refused
CLAIM_SECONDS = 25  # one beat (30 s) later the row can be claimed again
TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Settled:
    """A corrected row: its hour to roll up again and the budget counters' give-back."""

    row: LedgerEntry
    worst: Decimal


def background_usage_read_back(*, now: dt.datetime | None = None, limit: int = 100) -> int:
    """Read back the usage of up to ``limit`` pending background responses; returns how many were decided
    (read or given up) this run."""
    now = now or timezone.now()
    decided = _give_up_stale(now)
    settled: list[Settled] = []
    for background in _claim(now, limit):
        outcome = _read_one(background, now)
        if isinstance(outcome, Settled):
            settled.append(outcome)
        if outcome is not None:
            decided += 1
    if settled:
        rollups_recompute(hours=[s.row.created_at for s in settled])
        _give_back(settled)
    return decided


def _give_up_stale(now: dt.datetime) -> int:
    cutoff = now - dt.timedelta(hours=settings.BACKGROUND_READBACK_HOURS)
    note = f"not done after {settings.BACKGROUND_READBACK_HOURS} h: worst case kept"
    return BackgroundResponse.objects.filter(status=ReadBack.PENDING, ledger_created_at__lt=cutoff).update(
        status=ReadBack.UNREAD, note=note, settled_at=now
    )


def _claim(now: dt.datetime, limit: int) -> list[BackgroundResponse]:
    """Rows this worker alone reads now: each taken by an atomic update of its claim."""
    free = Q(status=ReadBack.PENDING) & (Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    candidates = list(
        BackgroundResponse.objects.filter(free).order_by("ledger_created_at").values_list("pk", flat=True)[:limit]
    )
    claimed = []
    until = now + dt.timedelta(seconds=CLAIM_SECONDS)
    for pk in candidates:
        if BackgroundResponse.objects.filter(free, pk=pk).update(claimed_until=until, checks=F("checks") + 1):
            claimed.append(BackgroundResponse.objects.get(pk=pk))
    return claimed


def _read_one(background: BackgroundResponse, now: dt.datetime) -> Settled | str | None:
    """Settled, a give-up (its note), or None while the response runs or the provider cannot be reached."""
    provider = Provider.objects.filter(pk=background.provider_id).first()
    if provider is None:
        return _give_up(background, "its provider was deleted", now)
    answer = _retrieve(provider, background.response_id)
    if answer is None:
        return None
    status, body = answer
    if status == 404:
        return _give_up(background, "the provider no longer knows the response", now)
    if status != 200:
        BackgroundResponse.objects.filter(pk=background.pk).update(note=f"the provider answered {status}")
        return None
    data = json_object(body)
    if data is None or data.get("id") != background.response_id:
        return _give_up(background, "the provider's answer is not this response", now)
    state = data.get("status")
    if state in RUNNING:
        BackgroundResponse.objects.filter(pk=background.pk).update(provider_status=state, note="")
        return None
    if state not in FINAL:
        return _give_up(background, "the response's status is not one the Responses API has", now)
    counts = usage_counts(data.get("usage"))
    if counts is None:
        return _give_up(background, f"{state} without a usage we can read", now, provider_status=str(state))
    return _settle(background, counts, data.get("service_tier"), str(state), now)


def _retrieve(provider: Provider, response_id: str) -> tuple[int, bytes] | None:
    """(status, body) of ``GET /responses/{id}``, or None when the provider cannot be reached or says too much."""
    headers = {"Authorization": f"Bearer {provider.secret}"} if provider.secret else {}
    url = f"{provider.base_url.rstrip('/')}/responses/{response_id}"
    try:
        with (
            egress_http_client(timeout=TIMEOUT_SECONDS) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    logger.warning("background read-back: %s answered more than %d bytes", provider.pk, len(body))
                    return None
            return response.status_code, bytes(body)
    except (httpx2.HTTPError, OSError) as exc:
        logger.warning("background read-back: provider %s unreachable: %s", provider.pk, exc)
        return None


def _give_up(background: BackgroundResponse, why: str, now: dt.datetime, provider_status: str = "") -> str:
    BackgroundResponse.objects.filter(pk=background.pk, status=ReadBack.PENDING).update(
        status=ReadBack.UNREAD, note=f"{why}: worst case kept", provider_status=provider_status[:20], settled_at=now
    )
    return why


def _price(provider_id: int, model: str, day: dt.date) -> PriceRow | None:
    price = (
        Price.objects.filter(provider_id=provider_id, model=model, effective_from__lte=day)
        .order_by("-effective_from")
        .first()
    )
    return price.row() if price is not None else None


def _settle(
    background: BackgroundResponse, counts: UsageCounts, tier: Any, state: str, now: dt.datetime
) -> Settled | str:
    with transaction.atomic():
        locked = BackgroundResponse.objects.select_for_update().filter(pk=background.pk, status=ReadBack.PENDING)
        if locked.first() is None:
            return "already decided"
        row = (
            LedgerEntry.objects.select_for_update()
            .filter(request_id=background.request_id, created_at=background.ledger_created_at)
            .first()
        )
        if row is None:
            return _give_up(background, "its ledger row is gone", now, provider_status=state)
        # The worst case counted every output token the request allowed: more is not a count we believe.
        if counts.completion_tokens > row.completion_tokens or counts.prompt_tokens > INT_MAX:
            return _give_up(background, "the usage is past what the request allowed", now, provider_status=state)
        price = _price(background.provider_id, row.served_model, row.created_at.date())
        if price is None:
            return _give_up(background, "the served model has no price", now, provider_status=state)
        worst = row.cost
        served_tier = tier_name(tier) if tier is not None else row.service_tier
        usage = {
            "prompt_tokens": counts.prompt_tokens, "cached_tokens": counts.cached_tokens,
            "completion_tokens": counts.completion_tokens, "reasoning_tokens": counts.reasoning_tokens,
        }  # fmt: skip
        row.cost = price.cost(**usage, tier=served_tier)
        row.counterfactual_cost = _counterfactual(row, usage, served_tier, worst)
        row.prompt_tokens, row.cached_tokens = counts.prompt_tokens, counts.cached_tokens
        row.completion_tokens, row.reasoning_tokens = counts.completion_tokens, counts.reasoning_tokens
        row.service_tier, row.usage_estimated = served_tier, False
        row.save(update_fields=[*usage, "service_tier", "usage_estimated", "cost", "counterfactual_cost"])
        locked.update(status=ReadBack.READ, provider_status=state, note="", settled_at=now)
    return Settled(row=row, worst=worst)


def _counterfactual(row: LedgerEntry, usage: dict[str, int], tier: str, worst: Decimal) -> Decimal:
    """What the real usage would have cost at the requested model's price on the row's provider; a row
    without a counterfactual keeps none, and one whose requested model has no price there keeps the ratio
    its worst case had."""
    if not row.counterfactual_cost:
        return row.counterfactual_cost
    price = _price(row.provider_id, row.requested_model, row.created_at.date()) if row.provider_id else None
    if price is not None:
        return price.cost(**usage, tier=tier)
    return row.counterfactual_cost * row.cost / worst if worst else row.counterfactual_cost


def _give_back(settled: list[Settled]) -> None:
    """Move each budget counter that counted a row's worst case to the row's real cost (counters Redis no
    longer holds are left alone: they are re-seeded from the corrected ledger)."""
    client = redis_client()
    budgets_by_org: dict[int, list[Budget]] = {}
    for item in settled:
        row = item.row
        budgets = budgets_by_org.setdefault(
            row.organization_id, list(Budget.objects.filter(is_active=True, organization_id=row.organization_id))
        )
        delta = to_nano(row.cost) - to_nano(item.worst)
        if not budgets or not delta:
            continue
        matches = LedgerEntry.objects.filter(pk=row.pk, created_at=row.created_at).aggregate(
            **{f"b{b.pk}": Count("id", filter=budget_ledger_filter(budget=b)) for b in budgets}
        )
        keys = []
        for budget in budgets:
            if matches[f"b{budget.pk}"]:
                start, _end = period_bounds(budget.period, budget.timezone, row.created_at, budget.starts_at)
                keys.append(names.budget_counter(
                    settings.REDIS_PREFIX, budget.pk, start.timestamp(), organization_id=budget.organization_id
                ))  # fmt: skip
        if not keys:
            continue
        try:
            client.eval(scripts.SETTLE, len(keys), *keys, len(keys), 0, 0, int(time.time()), *([delta] * len(keys)))
        except RedisError:
            # The counters keep the worst case: a budget errs on the safe side until they are re-seeded.
            logger.warning("background read-back: could not give %s back to budgets", row.request_id, exc_info=True)
