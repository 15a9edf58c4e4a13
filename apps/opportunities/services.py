"""Writes for trials: start a recommendation in shadow, enable it once it clears its target, stop it,
hold it to its daily cap, and store the gateway's semantic-cache comparisons.

Starting and enabling go through the cache and routing services, so the audit log records every change of
policy a trial makes. Trial events arrive on their own stream (``names.trial_stream``), never the ledger's.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.cache.models import CachePolicy
from apps.cache.services import cache_policy_save
from apps.core import names
from apps.core.events import EVENT_FIELD, clean_id, trial_event_clean
from apps.ledger.consumer import dead_letters_report, parse_entries, store_or_bisect
from apps.ledger.stream import acknowledge, ensure_group, read_batch
from apps.opportunities.models import SEMANTIC_FLOOR, Lever, Trial, TrialSample, TrialState
from apps.opportunities.selectors import CENT, Opportunity, cache_replay, replayable_rows
from apps.opportunities.trial_selectors import Measured, learned_opposites_by_project, trial_measured
from apps.routing.models import RoutingRule
from apps.routing.services import prune_policy_save, rule_save, targets_parse
from apps.tenancy.models import Project

# The report's levers that a trial can measure; the others (exact cache, batch, prompt cache) change no
# answer the app gets and need no trial.
TRIAL_LEVERS = {
    "semantic_cache": Lever.SEMANTIC_CACHE, "route": Lever.ROUTE, "cascade": Lever.CASCADE,
    "history_window": Lever.HISTORY_WINDOW,
}  # fmt: skip
# Levers measured by a routing rule's shadow comparisons.
RULE_LEVERS = (Lever.ROUTE, Lever.CASCADE, Lever.HISTORY_WINDOW)


class TrialNotReady(Exception):
    """``enable`` refused: the trial has not measured enough agreement yet."""

    def __init__(self, trial: Trial, measured: Measured) -> None:
        super().__init__("the trial has not cleared its quality target")
        self.trial = trial
        self.measured = measured


def trial_parameters(opportunity: Opportunity) -> tuple[Lever, dict[str, Any]]:
    """The lever a recommendation is trialled with and what the trial tries; ValidationError if none."""
    lever = TRIAL_LEVERS.get(opportunity.lever)
    if lever is None:
        raise ValidationError(f"A {opportunity.lever} recommendation changes no answer: apply it in its settings.")
    if lever == Lever.SEMANTIC_CACHE:
        # The feature's spend in the report's window: what the share a semantic cache serves scales to.
        return lever, {"floor": str(SEMANTIC_FLOOR), "window_cost_usd": str(opportunity.feature_cost)}
    if lever == Lever.HISTORY_WINDOW:
        # The same model both ways: the comparison isolates what the earlier turns change.
        model = opportunity.evidence["model"]
        return lever, {"from_model": model, "to_model": model, "turns": opportunity.evidence["turns"]}
    models = {"from_model": opportunity.evidence["from_model"], "to_model": opportunity.evidence["to_model"]}
    if lever == Lever.ROUTE:
        return lever, models
    # What the report priced, to scale the trial's measured saving share to the report's window when enabled.
    return lever, {**models, "window_requests": opportunity.evidence["requests"],
                   "window_cost_usd": opportunity.evidence["cost_usd"]}  # fmt: skip


def _save(trial: Trial) -> Trial:
    # The trial row itself is not audited: the policy changes it makes go through the audited services.
    trial.full_clean()
    trial.save()
    return trial


@transaction.atomic
def trial_start(
    *,
    project: Project,
    opportunity: Opportunity,
    quality_target: Decimal,
    daily_cap_usd: Decimal | None,
    min_samples: int,
    window_days: int,
) -> Trial:
    """Start ``opportunity``'s trial in shadow, or return the live one (its target and cap updated)."""
    live = Trial.objects.filter(project=project, recommendation_id=opportunity.id).exclude(state=TrialState.STOPPED)
    trial = live.select_for_update().first()
    if trial is not None:
        trial.quality_target, trial.daily_cap_usd, trial.min_samples = quality_target, daily_cap_usd, min_samples
        return _save(trial)
    lever, parameters = trial_parameters(opportunity)
    trial = Trial(
        project=project, lever=lever, recommendation_id=opportunity.id, feature=opportunity.feature,
        parameters=parameters, quality_target=quality_target, daily_cap_usd=daily_cap_usd, min_samples=min_samples,
        predicted_savings_usd=opportunity.predicted_savings_usd.quantize(CENT), predicted_window_days=window_days,
    )  # fmt: skip
    if lever in RULE_LEVERS:
        trial.rule = _shadow_rule(
            project, opportunity.feature, parameters["from_model"], parameters["to_model"], lever == Lever.CASCADE,
            history_turns=parameters.get("turns"),
        )  # fmt: skip
    return _save(trial)


def _deciding_rule(project: Project, feature: str, model: str) -> RoutingRule | None:
    """An active rule that may decide the feature's requests for ``model``: a trial's rule, appended after
    it, would never see them (the first matching rule decides)."""
    rules = RoutingRule.objects.filter(project=project, is_active=True)
    rules = rules.filter(Q(match_features=[]) | Q(match_features__contains=[feature]))
    return rules.filter(Q(match_models=[]) | Q(match_models__contains=[model])).first()


def _shadow_rule(
    project: Project, feature: str, from_model: str, to_model: str, confidence: bool, *, history_turns: int | None
) -> RoutingRule:
    """A rule that keeps serving the feature's requests for ``from_model`` from it, and shadows every one
    to ``to_model``: the app's answers do not change, the comparisons measure the cheaper model (and, for a
    cascade trial, its answers' confidence, with logprobs asked for; for a history-window trial, the same
    model asked with only the last ``history_turns`` turns)."""
    deciding = _deciding_rule(project, feature, from_model)
    if deciding is not None:
        raise ValidationError(
            f"The active routing rule '{deciding.name}' already decides these requests: the trial would see "
            "none of them. Stop its trial or deactivate it first."
        )
    kind = "cascade" if confidence else "route"
    detail = f"{from_model} → {to_model}"
    if history_turns is not None:
        kind, detail = f"history window of {history_turns}", from_model
    return rule_save(
        project=project,
        fields={
            "name": f"Trial: {kind} {feature or 'all features'}, {detail}"[:100],
            "match_features": [feature] if feature else [],
            "match_models": [from_model],
            "action": "route",
            "shadow_percent": Decimal(100),
            "shadow_confidence": confidence,
            "shadow_history_turns": history_turns,
        },
        primaries=targets_parse(project=project, text=from_model),
        fallbacks=[],
        shadow=targets_parse(project=project, text=to_model),
    )


@transaction.atomic
def trial_enable(*, trial: Trial) -> Trial:
    """Change the real policy at what the trial measured; TrialNotReady until it clears its target."""
    trial = Trial.objects.select_for_update().get(pk=trial.pk)
    if trial.state == TrialState.ENABLED:
        return trial
    measured = trial_measured(trial=trial)
    if trial.state != TrialState.SHADOW or not measured.cleared:
        raise TrialNotReady(trial, measured)
    if trial.lever == Lever.SEMANTIC_CACHE:
        assert measured.recommended_threshold is not None
        _enable_semantic(trial, Decimal(str(measured.recommended_threshold)))
        trial.parameters = {**trial.parameters, "threshold": str(measured.recommended_threshold)}
        trial.predicted_savings_usd = _semantic_prediction(trial, measured.recommended_threshold)
    elif trial.lever == Lever.CASCADE:
        assert measured.recommended_threshold is not None and measured.saving_share is not None
        _enable_cascade(trial, Decimal(str(measured.recommended_threshold)))
        trial.parameters = {**trial.parameters, "threshold": str(measured.recommended_threshold)}
        # The report's prediction assumed every cheap answer kept; the trial measured what is.
        window_cost = Decimal(trial.parameters["window_cost_usd"])
        trial.predicted_savings_usd = (window_cost * Decimal(str(measured.saving_share))).quantize(CENT)
    elif trial.lever == Lever.HISTORY_WINDOW:
        _enable_history_window(trial)
    else:
        _enable_route(trial)
    trial.state, trial.enabled_at = TrialState.ENABLED, timezone.now()
    return _save(trial)


def _semantic_prediction(trial: Trial, threshold: float) -> Decimal:
    """The report's window at the share of the trial's own traffic that the cache, at ``threshold`` and
    with its guard, would have served (``cache_replay``); the report's figure when the trial indexed none."""
    rows = replayable_rows(project=trial.project, since=trial.created_at, until=timezone.now())
    learned = learned_opposites_by_project().get(trial.project_id, frozenset())
    served, replayed = cache_replay(
        project=trial.project, rows=rows.filter(feature=trial.feature), threshold=threshold, learned=learned
    )
    window_cost = Decimal(trial.parameters.get("window_cost_usd") or 0)
    if replayed <= 0 or window_cost <= 0:
        return trial.predicted_savings_usd
    return (window_cost * served / replayed).quantize(CENT)


def _enable_history_window(trial: Trial) -> None:
    """The feature's pruning policy gets the window the trial measured (audited); the trial's rule, which
    served the same model it shadowed, is retired."""
    prune_policy_save(
        project=trial.project, feature=trial.feature,
        changes={"history_enabled": True, "history_turns": int(trial.parameters["turns"])},
    )  # fmt: skip
    _retire_rule(trial)


def _enable_semantic(trial: Trial, threshold: Decimal) -> None:
    policy = CachePolicy.objects.filter(project_id=trial.project_id, feature=trial.feature).first()
    if policy is None:
        # A new policy turns on only the lever the trial measured: no exact cache the lead did not ask for.
        policy = CachePolicy(project_id=trial.project_id, feature=trial.feature, exact_enabled=False)
    policy.semantic_enabled, policy.similarity_threshold = True, threshold
    cache_policy_save(policy=policy)


def _enable_route(trial: Trial) -> None:
    rule = trial.rule
    if rule is None:
        raise ValidationError("The trial's routing rule was deleted; start a new trial.")
    project = trial.project
    rule_save(
        project=project,
        rule=rule,
        fields={"name": rule.name.replace("Trial: ", "", 1), "shadow_percent": Decimal(0)},
        primaries=targets_parse(project=project, text=trial.parameters["to_model"]),
        fallbacks=targets_parse(project=project, text=trial.parameters["from_model"]),
        shadow=[],
    )


def _enable_cascade(trial: Trial, threshold: Decimal) -> None:
    """The trial's rule becomes the cascade it measured: the cheap model first, kept at ``threshold``."""
    rule = trial.rule
    if rule is None:
        raise ValidationError("The trial's routing rule was deleted; start a new trial.")
    project, parameters = trial.project, trial.parameters
    rule_save(
        project=project,
        rule=rule,
        fields={"name": rule.name.replace("Trial: ", "", 1), "action": "cascade", "cascade_threshold": threshold,
                "shadow_percent": Decimal(0), "shadow_confidence": False},
        primaries=targets_parse(project=project, text=f"{parameters['to_model']}\n{parameters['from_model']}"),
        fallbacks=[],
        shadow=[],
    )  # fmt: skip


@transaction.atomic
def trial_stop(*, trial: Trial, reason: str = "stopped") -> Trial:
    """Stop measuring; the shadow rule of a route or cascade trial stops shadowing (and is deactivated). An
    enabled policy stays as it is."""
    trial = Trial.objects.select_for_update().get(pk=trial.pk)
    if trial.state != TrialState.SHADOW:
        return trial
    _retire_rule(trial)
    trial.state, trial.stopped_at, trial.stopped_reason = TrialState.STOPPED, timezone.now(), reason[:200]
    return _save(trial)


def _retire_rule(trial: Trial) -> None:
    """The trial's shadow rule stops shadowing and is deactivated (kept, for its comparisons)."""
    if trial.rule is not None:
        rule_save(
            project=trial.project, rule=trial.rule,
            fields={"shadow_percent": Decimal(0), "shadow_confidence": False, "shadow_history_turns": None,
                    "is_active": False},
            primaries=targets_parse(project=trial.project, text=trial.parameters["from_model"]),
            fallbacks=[], shadow=[],
        )  # fmt: skip


def trials_hold_caps(*, now: dt.datetime | None = None) -> int:
    """Record each shadow trial's spend and stop those whose spend today reached their daily cap; returns
    how many were stopped. The cap is held at the pace of this job (a minute), not per call."""
    stopped = 0
    for trial in Trial.objects.filter(state=TrialState.SHADOW).select_related("project"):
        measured = trial_measured(trial=trial, now=now)
        if trial.trial_spend_usd != measured.spend_usd:
            Trial.objects.filter(pk=trial.pk).update(trial_spend_usd=measured.spend_usd)
        if trial.daily_cap_usd is not None and measured.spend_today_usd >= trial.daily_cap_usd:
            trial_stop(trial=trial, reason=f"daily cap of ${trial.daily_cap_usd} reached")
            stopped += 1
    return stopped


# --- the gateway's semantic-cache comparisons --------------------------------------------------


def trial_stream() -> str:
    return names.trial_stream(settings.REDIS_PREFIX)


def _sample(raw: Any) -> TrialSample:
    if not isinstance(raw, dict) or not isinstance(raw.get("request_id"), str) or not raw["request_id"]:
        raise TypeError("a trial event is a JSON object with a request_id")
    trial_id = clean_id(raw.get("trial_id"))
    if trial_id is None:
        raise ValueError(f"not a trial id: {raw.get('trial_id')!r}")
    event = trial_event_clean(raw)
    if event["prompt_similarity"] is None:
        raise ValueError("a trial event needs the prompt similarity")
    return TrialSample(
        trial_id=trial_id,
        request_id=event["request_id"],
        created_at=dt.datetime.fromtimestamp(event["created_at"], dt.UTC),
        prompt_similarity=event["prompt_similarity"],
        guard_agrees=event["guard_agrees"],
        normalized_match=event["normalized_match"],
        answer_similarity=event["answer_similarity"],
        prompt_text=event["prompt_text"],
        cached_prompt_text=event["cached_prompt_text"],
    )


def trial_ingest_batch(*, client: redis.Redis, consumer: str, count: int = 500, block_ms: int = 0) -> int:
    """Store up to ``count`` trial comparisons; returns how many entries were handled.

    Acknowledged after the insert commits; (trial, request) is unique, so a re-read never duplicates.
    Events of trials that are no longer in shadow (or of another project than the trial's) are dropped;
    an event that cannot be read or stored goes to the dead-letter stream, the others are stored.
    """
    stream = trial_stream()
    ensure_group(client, stream)
    entries = read_batch(client, stream, consumer, count=count, block_ms=block_ms, claim_idle_ms=30_000)
    if not entries:
        return 0
    parsed, dead = parse_entries(entries, lambda raw: (clean_id(raw.get("project_id")), _sample(raw)), EVENT_FIELD)
    rows = [(entry_id, fields, sample) for entry_id, fields, (_project, sample) in parsed]
    projects = {entry_id: project for entry_id, _fields, (project, _sample_) in parsed}
    live = dict(
        Trial.objects.filter(id__in={r.trial_id for _i, _f, r in rows}, state=TrialState.SHADOW).values_list(
            "id", "project_id"
        )
    )
    refused = store_or_bisect(
        [row for row in rows if live.get(row[2].trial_id) is not None and live[row[2].trial_id] == projects[row[0]]],
        lambda chunk: TrialSample.objects.bulk_create([r for _i, _f, r in chunk], ignore_conflicts=True),
    )
    dead += [(entry_id, fields, error) for (entry_id, fields, _row), error in refused]
    _count_disagreements({r.trial_id for _i, _f, r in rows if r.trial_id in live and not r.normalized_match})
    dead_letters_report(stream=stream, dead=dead, field=EVENT_FIELD)
    acknowledge(client, stream, [entry_id for entry_id, _fields in entries], dead_letters=dead)
    return len(entries)


def _count_disagreements(trial_ids: set[int]) -> None:
    """Recount the trials that got a disagreement; the save announces a policy change (apps.policy)."""
    for trial in Trial.objects.filter(id__in=trial_ids):
        trial.disagreements = trial.samples.filter(normalized_match=False).count()
        trial.save(update_fields=["disagreements"])
