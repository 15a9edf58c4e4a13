"""What a trial measured: its quality against its target, its own spend, and realised savings once enabled.

- A semantic-cache trial: its ``TrialSample`` rows binned by prompt similarity (0.01 wide). A threshold
  serves the samples at or above it that the cache guard lets through; its precision is the share of those
  whose cached answer matches the fresh one once normalised. The recommended threshold is the lowest whose
  precision clears the target on at least ``min_samples`` would-be hits (the most traffic at that quality),
  among the similarities actually seen.
- A route trial: the ``ShadowComparison`` rows of the routing rule it wrote, since it started; agreement is
  the share of answered shadow calls whose answer matches the app's once normalised. Its spend is what those
  shadow calls cost, kept apart from the app's ledger and budgets.
- A cascade trial: the same shadow comparisons, each with the cheap answer's confidence as the cascade
  computes it. A threshold keeps the cheap answers at or above it (0.001 wide bins, the rule's precision)
  and escalates the others. Its agreement is the kept answers' agreement with the app's; its saving counts
  the kept ones at the cheap price and the cheap calls wasted on the escalated ones. The recommended
  threshold is the lowest whose kept answers clear the target on at least ``min_samples`` of them.
- A chat-history window trial: the same shadow comparisons, the shadow being the same model asked with
  only the system messages and the last N others (requests the window does not shorten are not shadowed).
- Realised savings (an enabled trial): what the ledger's requests since enablement saved against their
  counterfactual (the semantic hits; the rule's routed requests), beside the prediction prorated to the
  same days. A history window's rows carry what it trimmed in messages, not tokens: its saving is
  estimated as the report estimated it (the conversation spread evenly over the messages), at the
  served model's input price.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, F, IntegerField, Q, QuerySet, Sum
from django.db.models.functions import Cast, Floor
from django.utils import timezone

from apps.cache.guard import learned_opposites
from apps.ledger.models import LedgerEntry
from apps.opportunities.models import Lever, Trial, TrialSample, TrialState
from apps.opportunities.selectors import latest_input_rates
from apps.routing.models import ShadowComparison

CENT = Decimal("0.000001")
BIN = 100  # similarity bins per 1.0
CONFIDENCE_BIN = 1000  # confidence bins per 1.0: a cascade threshold's precision (RoutingRule.cascade_threshold)


@dataclass
class Measured:
    samples: int  # comparisons that count (would-be hits the guard lets through; answered shadow calls)
    agreement: float | None  # at the recommended threshold for a semantic trial
    cleared: bool
    recommended_threshold: float | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)  # per threshold: what it serves, how well
    saving_share: float | None = None  # cascade: of the app's spend on the compared requests, at the threshold
    spend_usd: Decimal = Decimal(0)
    spend_today_usd: Decimal = Decimal(0)
    realised: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "agreement": None if self.agreement is None else round(self.agreement, 4),
            "cleared": self.cleared,
            "recommended_threshold": self.recommended_threshold,
            "curve": self.curve,
            "saving_share": None if self.saving_share is None else round(self.saving_share, 4),
            "spend_usd": str(self.spend_usd.quantize(CENT)),
            "spend_today_usd": str(self.spend_today_usd.quantize(CENT)),
            "realised": self.realised,
        }


def trial_measured(*, trial: Trial, now: dt.datetime | None = None) -> Measured:
    now = now or timezone.now()
    if trial.lever == Lever.SEMANTIC_CACHE:
        measured = _semantic(trial)
    elif trial.lever == Lever.CASCADE:
        measured = _cascade(trial, now)
    else:
        measured = _route(trial, now)
    if trial.state == TrialState.ENABLED and trial.enabled_at is not None:
        measured.realised = _realised(trial, now)
    return measured


def _semantic(trial: Trial) -> Measured:
    bins = (
        trial.samples.filter(guard_agrees=True)
        .annotate(bin=Cast(Floor(F("prompt_similarity") * BIN), IntegerField()))
        .values("bin")
        .annotate(n=Count("id"), ok=Count("id", filter=Q(normalized_match=True)))
    )
    by_bin = {row["bin"]: (row["n"], row["ok"]) for row in bins}
    target = float(trial.quality_target)
    floor = int(float(trial.parameters.get("floor", 0.8)) * BIN)
    curve: list[dict[str, Any]] = []
    hits = agreed = 0
    recommended: tuple[float, int, float] | None = None
    # From the top down: a threshold serves every sample at or above it.
    for b in range(BIN, floor - 1, -1):
        n, ok = by_bin.get(b, (0, 0))
        hits, agreed = hits + n, agreed + ok
        if not n:
            continue  # only thresholds at a similarity seen: between two, nothing was measured
        precision = agreed / hits
        threshold = round(b / BIN, 2)
        curve.append({"threshold": threshold, "hits": hits, "precision": round(precision, 4)})
        if hits >= trial.min_samples and precision >= target:
            recommended = (threshold, hits, precision)
    curve.reverse()
    if recommended is None:
        return Measured(samples=hits, agreement=agreed / hits if hits else None, cleared=False, curve=curve)
    threshold, served, precision = recommended
    return Measured(samples=served, agreement=precision, cleared=True, recommended_threshold=threshold, curve=curve)


def _comparisons(trial: Trial, now: dt.datetime) -> tuple[QuerySet[ShadowComparison], dict[str, Any]]:
    """The trial's shadow comparisons, and their counts and spend (in all and today)."""
    rows = ShadowComparison.objects.filter(rule_id=trial.rule_id, created_at__gte=trial.created_at)
    start_of_day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    totals = rows.aggregate(
        n=Count("id", filter=Q(shadow_status=200)),
        ok=Count("id", filter=Q(shadow_status=200, normalized_match=True)),
        primary=Sum("primary_cost", filter=Q(shadow_status=200)),
        cheap=Sum("shadow_cost", filter=Q(shadow_status=200)),
        spend=Sum("shadow_cost"),
        today=Sum("shadow_cost", filter=Q(created_at__gte=start_of_day)),
    )
    return rows, totals


def _route(trial: Trial, now: dt.datetime) -> Measured:
    if trial.rule_id is None:
        return Measured(samples=0, agreement=None, cleared=False)
    _rows, totals = _comparisons(trial, now)
    n, ok = totals["n"], totals["ok"]
    agreement = ok / n if n else None
    return Measured(
        samples=n,
        agreement=agreement,
        cleared=agreement is not None and n >= trial.min_samples and agreement >= float(trial.quality_target),
        spend_usd=totals["spend"] or Decimal(0),
        spend_today_usd=totals["today"] or Decimal(0),
    )


def _cascade(trial: Trial, now: dt.datetime) -> Measured:
    if trial.rule_id is None:
        return Measured(samples=0, agreement=None, cleared=False)
    rows, totals = _comparisons(trial, now)
    bins = (
        rows.filter(shadow_status=200, confidence__isnull=False)
        .annotate(bin=Cast(Floor(F("confidence") * CONFIDENCE_BIN), IntegerField()))
        .values("bin")
        .annotate(n=Count("id"), ok=Count("id", filter=Q(normalized_match=True)), primary=Sum("primary_cost"),
                  cheap=Sum("shadow_cost"))
    )  # fmt: skip
    by_bin = {row["bin"]: row for row in bins}
    n, primary_all, cheap_all = totals["n"], totals["primary"] or Decimal(0), totals["cheap"] or Decimal(0)
    spend, today = totals["spend"] or Decimal(0), totals["today"] or Decimal(0)
    target = float(trial.quality_target)
    curve: list[dict[str, Any]] = []
    kept = agreed = 0
    kept_primary = kept_cheap = Decimal(0)
    recommended: dict[str, Any] | None = None
    # From the top down: a threshold keeps every answer at or above it; the others escalate (an answer
    # without logprobs always does), their cheap call wasted.
    for b in range(CONFIDENCE_BIN, -1, -1):
        row = by_bin.get(b)
        if row is None:
            continue  # only thresholds at a confidence seen
        kept, agreed = kept + row["n"], agreed + row["ok"]
        kept_primary, kept_cheap = kept_primary + row["primary"], kept_cheap + row["cheap"]
        saving = kept_primary - kept_cheap - (cheap_all - kept_cheap)
        point = {
            "threshold": round(b / CONFIDENCE_BIN, 3),
            "kept": kept,
            "kept_share": round(kept / n, 4),
            "agreement": round(agreed / kept, 4),
            "saving_share": round(float(saving / primary_all), 4) if primary_all else 0.0,
        }
        curve.append(point)
        if kept >= trial.min_samples and agreed / kept >= target:
            exact_share = float(saving / primary_all) if primary_all else 0.0
            recommended = {**point, "agreement": agreed / kept, "saving_share": exact_share}
    curve.reverse()
    if recommended is None or n < trial.min_samples:
        agreement = totals["ok"] / n if n else None
        return Measured(samples=n, agreement=agreement, cleared=False, curve=curve, spend_usd=spend,
                        spend_today_usd=today)  # fmt: skip
    return Measured(
        samples=n, agreement=recommended["agreement"], cleared=True, curve=curve,
        recommended_threshold=recommended["threshold"], saving_share=recommended["saving_share"], spend_usd=spend,
        spend_today_usd=today,
    )  # fmt: skip


def _realised(trial: Trial, now: dt.datetime) -> dict[str, Any]:
    assert trial.enabled_at is not None
    rows = LedgerEntry.objects.filter(project_id=trial.project_id, created_at__gte=trial.enabled_at, status_code=200)
    if trial.feature:
        rows = rows.filter(feature=trial.feature)
    if trial.lever == Lever.HISTORY_WINDOW:
        return _realised_window(trial, rows.filter(route__contains=";pruned:history("), now)
    if trial.lever == Lever.SEMANTIC_CACHE:
        rows = rows.filter(cache_hit="semantic")
    elif trial.rule_id is not None:
        rows = rows.filter(decision__rule_id=trial.rule_id)
    else:
        rows = rows.none()
    totals = rows.aggregate(n=Count("id"), saved=Sum(F("counterfactual_cost") - F("cost")))
    return _realised_json(trial, now, totals["n"], totals["saved"] or Decimal(0))


def _realised_json(trial: Trial, now: dt.datetime, requests: int, saved: Decimal) -> dict[str, Any]:
    assert trial.enabled_at is not None
    days = max((now - trial.enabled_at).total_seconds(), 0) / 86_400
    predicted = trial.predicted_savings_usd * Decimal(days) / max(trial.predicted_window_days, 1)
    return {
        "since": trial.enabled_at.isoformat(),
        "requests": requests,
        "realised_savings_usd": str(saved.quantize(CENT)),
        "predicted_savings_usd": str(predicted.quantize(CENT)),
    }


# The most pruned rows a history window's realised saving is estimated from (newest first).
REALISED_WINDOW_ROWS = 50_000


def _realised_window(trial: Trial, rows: QuerySet[LedgerEntry], now: dt.datetime) -> dict[str, Any]:
    rates = latest_input_rates(trial.project)
    requests, saved = 0, Decimal(0)
    for prompt, prefix, model, decision in rows.order_by("-created_at").values_list(
        "prompt_tokens", "prefix_tokens", "served_model", "decision"
    )[:REALISED_WINDOW_ROWS]:
        requests += 1
        trimmed = [p for p in (decision or {}).get("pruned", ()) if isinstance(p, dict) and p.get("what") == "history"]
        rate = rates.get(model)
        if not trimmed or rate is None:
            continue
        before, after = int(trimmed[0].get("before") or 0), int(trimmed[0].get("after") or 0)
        # The sent conversation (prompt less its static prefix) spread over the messages after the first.
        if after > 1 and before > after and prompt > prefix:
            saved += Decimal(prompt - prefix) * (before - after) / (after - 1) * rate
    return _realised_json(trial, now, requests, saved)


def project_trials(*, project: Any) -> list[tuple[Trial, Measured]]:
    """The project's trials, newest first, each with what it measured."""
    now = timezone.now()
    return [(trial, trial_measured(trial=trial, now=now)) for trial in Trial.objects.filter(project=project)]


# The disagreements read per build of the policy snapshot: the most recent ones teach the guard.
LEARN_FROM = 5000


def learned_opposites_by_project() -> dict[int, frozenset[tuple[str, str]]]:
    """Each project's word pairs learned from its trials' disagreements (``apps.cache.guard``)."""
    pairs: dict[int, list[tuple[str, str]]] = {}
    for project_id, asked, cached in (
        TrialSample.objects.filter(normalized_match=False).exclude(prompt_text="")
        .order_by("-id").values_list("trial__project_id", "prompt_text", "cached_prompt_text")[:LEARN_FROM]
    ):  # fmt: skip
        pairs.setdefault(project_id, []).append((asked, cached))
    return {project_id: learned_opposites(found) for project_id, found in pairs.items()}
