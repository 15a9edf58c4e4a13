"""The snapshot adapter: the control plane's rows as the gateway's policy snapshot (``apps.core.snapshot``).

``build_snapshot`` reads the whole policy from Postgres (sync; the gateway runs
``load_snapshot`` in a thread at start-up and whenever a change is announced,
see ``apps.policy.announce``). A row that cannot be used (a provider whose
secret no key decrypts, a rule or cache policy whose pattern is not RE2) is left
out and logged, so the rest of the policy, key revocations included, still
arrives.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

import aiohttp
from django.conf import settings
from django.db import close_old_connections, connection, models, transaction
from django.utils import timezone

from apps.budgets.models import AlertKind, Budget, RateLimit
from apps.budgets.selectors import budget_spent_usd
from apps.budgets.services import alert_raise
from apps.cache.models import CachePolicy
from apps.core.patterns import Pattern, PatternError
from apps.core.periods import period_bounds
from apps.core.pricing import PriceRow, to_nano
from apps.core.routing import CascadeView, RuleView, TargetView, normalize_text
from apps.core.snapshot import (
    BudgetPolicy,
    CachePolicyView,
    KeyPolicy,
    ProjectPolicy,
    ProviderTarget,
    PrunePolicyView,
    RateLimitPolicy,
    Snapshot,
    policy_view,
)
from apps.keys.models import ApiKey
from apps.opportunities.models import Lever, Trial, TrialState
from apps.opportunities.trial_selectors import learned_opposites_by_project
from apps.providers.crypto import InvalidToken
from apps.providers.models import ModelAlias, Price, Provider
from apps.routing.models import PrunePolicy, RoutingRule, TargetRole
from apps.tenancy.models import Organization, Project

logger = logging.getLogger(__name__)


def load_snapshot(version: int) -> Snapshot:
    """What a gateway's snapshot thread runs: build, then let go of this thread's stale connection.

    A build that fails is not skipped in silence: the gateway keeps serving its last snapshot (it logs
    that), and every organisation gets an alert, because revocations and edits stop reaching it.
    """
    try:
        return build_snapshot(version)
    except Exception as error:
        snapshot_failure_alert(error)
        raise
    finally:
        close_old_connections()


def snapshot_failure_alert(error: BaseException) -> int:
    """Alert every organisation, once an hour each, that gateways serve an old policy; returns alerts raised.

    The policy is one snapshot for all tenants, so all are told. The message names the error's class
    only: its text may quote another tenant's rows.
    """
    hour = timezone.now().strftime("%Y-%m-%dT%H")
    raised = 0
    try:
        for organization_id in Organization.objects.values_list("id", flat=True):
            _alert, new = alert_raise(
                organization_id=organization_id,
                kind=AlertKind.POLICY_STALE,
                dedup_key=f"policy-build:{organization_id}:{hour}",
                title="Gateways cannot load the current policy",
                message=(
                    f"Building the gateway's policy snapshot failed ({type(error).__name__}). Gateways keep "
                    "serving the last policy they loaded: key revocations, budget and routing changes made since "
                    "do not apply until a build succeeds. The gateway log has the details."
                ),
                data={"error": type(error).__name__},
            )
            raised += int(new)
    except Exception:
        logger.exception("could not alert that the policy snapshot failed to build")
    return raised


def build_snapshot(version: int) -> Snapshot:
    """Read the whole policy from Postgres (sync; run it in a thread), as of one moment.

    Its queries run in one REPEATABLE READ transaction: read committed, a provider and its prices
    created between the query for providers and the one for prices gave prices of a provider the
    build did not know, and the build failed (KeyError), alerting every organisation. Inside a caller's
    transaction (tests) it reads in that one."""
    if connection.in_atomic_block:
        return _build_snapshot(version)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _build_snapshot(version)


def _build_snapshot(version: int) -> Snapshot:
    keys = {}
    for key in ApiKey.objects.select_related("project").all():
        keys[key.lookup_id] = KeyPolicy(
            id=key.id,
            lookup_id=key.lookup_id,
            key_hash=bytes.fromhex(key.key_hash),
            project_id=key.project_id,
            organization_id=key.project.organization_id,
            allowed_models=frozenset(key.allowed_models),
            default_feature=key.default_feature,
            expires_at=key.expires_at.timestamp() if key.expires_at else None,
            revoked=key.revoked_at is not None,
        )

    providers, unusable = _provider_targets(Provider.objects.filter(is_active=True))
    provider_orgs = {
        pid: org for pid, org in Provider.objects.filter(is_active=True).values_list("id", "organization_id")
        if pid in providers
    }  # fmt: skip

    aliases: dict[int, dict[str, tuple[int, str]]] = {}
    for alias in ModelAlias.objects.filter(provider__is_active=True).exclude(provider_id__in=unusable):
        aliases.setdefault(alias.project_id, {})[alias.alias] = (alias.provider_id, alias.model)

    projects = {
        p.id: ProjectPolicy(
            id=p.id,
            organization_id=p.organization_id,
            team_id=p.team_id,
            slug=p.slug,
            default_provider_id=p.default_provider_id,
            aliases=aliases.get(p.id, {}),
        )
        for p in Project.objects.all()
    }

    prices: dict[tuple[int, str], list[PriceRow]] = {}
    org_models: dict[int, dict[str, list[int]]] = {}
    for price in (
        Price.objects.filter(provider__is_active=True)
        .exclude(provider_id__in=unusable)
        .order_by("provider_id", "model", "-effective_from")
    ):
        prices.setdefault((price.provider_id, price.model), []).append(price.row())
        served_by = org_models.setdefault(provider_orgs[price.provider_id], {}).setdefault(price.model, [])
        if price.provider_id not in served_by:
            served_by.append(price.provider_id)

    budgets, project_limits, key_limits = _build_limits()
    return Snapshot(
        version=version,
        cache_policies=_with_trials(_build_cache_policies()),
        prune_policies=_build_prune_policies(),
        budgets=budgets,
        rules=_build_rules(set(providers)),
        project_limits=project_limits,
        key_limits=key_limits,
        keys=keys,
        projects=projects,
        providers=providers,
        org_models={org: {m: tuple(sorted(ids)) for m, ids in models.items()} for org, models in org_models.items()},
        prices={k: tuple(v) for k, v in prices.items()},
        unusable_providers=unusable,
    )


def _provider_targets(queryset: Any) -> tuple[dict[int, ProviderTarget], frozenset[int]]:
    """Each provider's target, and the ids of those left out because their secret cannot be decrypted.

    One provider whose secret no configured key decrypts (a key dropped from
    COSTCONTROL_ENCRYPTION_KEYS too early) must not stop the whole snapshot: revocations and every
    other change keep arriving; that provider is unusable (its models are not served) until its
    secret is entered again. The control plane alerts its organisation (providers.check_secrets).
    """
    targets, unusable = {}, set()
    for provider in queryset:
        try:
            targets[provider.id] = _provider_target(provider)
        except InvalidToken:
            unusable.add(provider.id)
            logger.error(
                "provider %s (%s, organisation %s): its secret cannot be decrypted with COSTCONTROL_ENCRYPTION_KEYS; "
                "left out of the policy snapshot until the secret is entered again",
                provider.id, provider.name, provider.organization_id,
            )  # fmt: skip
    return targets, frozenset(unusable)


def _provider_target(provider: Any) -> ProviderTarget:
    def seconds(value: float | None, default: float) -> float:
        return value if value is not None else default

    return ProviderTarget(
        id=provider.id,
        name=provider.name,
        kind=provider.kind,
        base_url=provider.base_url.rstrip("/"),
        secret=provider.secret,
        responses_api=provider.responses_api,
        max_retries=provider.max_retries if provider.max_retries is not None else settings.GATEWAY_RETRIES,
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=seconds(provider.connect_timeout_seconds, settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS),
            sock_read=seconds(provider.first_byte_timeout_seconds, settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS),
        ),
        total_timeout=seconds(provider.total_timeout_seconds, settings.GATEWAY_UPSTREAM_TOTAL_TIMEOUT_SECONDS),
    )


def _build_rules(active_providers: set[int]) -> dict[int, tuple[RuleView, ...]]:
    """Each project's active rules in order; targets on inactive providers are left out.

    A rule whose regex RE2 cannot compile (saved before patterns were checked as RE2) is left out
    and logged: it never matches, and the rest of the snapshot is built.
    """
    rules: dict[int, list[RuleView]] = {}
    for rule in RoutingRule.objects.filter(is_active=True).prefetch_related("targets").order_by("position", "id"):
        try:
            regex = Pattern(rule.match_regex) if rule.match_regex else None
        except PatternError as exc:
            logger.error("routing rule %s (project %s) left out: its regex is not valid RE2: %s",
                         rule.id, rule.project_id, exc)  # fmt: skip
            continue
        by_role: dict[str, list[TargetView]] = {role: [] for role in TargetRole.values}
        for target in sorted(rule.targets.all(), key=lambda t: (t.position, t.id)):
            if target.provider_id in active_providers:
                by_role[target.role].append(TargetView(target.provider_id, target.model, target.weight))
        shadows = by_role[TargetRole.SHADOW]
        cascade = CascadeView(
            threshold=float(rule.cascade_threshold),
            tokens=rule.cascade_tokens,
            aggregate=rule.cascade_aggregate,
            escalate_new_labels=rule.cascade_escalate_new_labels,
            labels=frozenset(normalize_text(label) for label in rule.cascade_labels),
        )
        rules.setdefault(rule.project_id, []).append(
            RuleView(
                id=rule.id,
                name=rule.name,
                action=rule.action,
                primaries=tuple(by_role[TargetRole.PRIMARY]),
                fallbacks=tuple(by_role[TargetRole.FALLBACK]),
                shadow=shadows[0] if shadows else None,
                shadow_fraction=float(rule.shadow_percent) / 100,
                cascade=cascade if rule.action == "cascade" else None,
                shadow_confidence=cascade if rule.shadow_confidence and shadows else None,
                shadow_history_turns=rule.shadow_history_turns if shadows else None,
                models=frozenset(rule.match_models),
                features=frozenset(rule.match_features),
                end_users=frozenset(rule.match_end_users),
                api_key_id=rule.match_api_key_id,
                min_prompt_tokens=rule.min_prompt_tokens,
                max_prompt_tokens=rule.max_prompt_tokens,
                tools=rule.match_tools,
                regex=regex,
            )
        )
    return {project: tuple(items) for project, items in rules.items()}


def budget_policies(queryset: Any) -> list[BudgetPolicy]:
    """The enforcement view of ``Budget`` rows, seeded with the spend the ledger shows for their current period."""
    now = dt.datetime.now(dt.UTC)
    policies = []
    for budget in queryset:
        start, _end = period_bounds(budget.period, budget.timezone, now, budget.starts_at)
        policies.append(
            BudgetPolicy(
                id=budget.id,
                name=budget.name,
                organization_id=budget.organization_id,
                scope=budget.scope,
                team_id=budget.team_id,
                project_id=budget.project_id,
                api_key_id=budget.api_key_id,
                feature=budget.feature,
                end_user=budget.end_user,
                limit_nano=to_nano(budget.amount_usd),
                amount_usd=budget.amount_usd,
                period=budget.period,
                timezone=budget.timezone,
                starts_at=budget.starts_at,
                mode=budget.mode,
                seed_period_start=start.timestamp(),
                seed_nano=to_nano(budget_spent_usd(budget=budget, since=start)),
            )
        )
    return policies


def _build_limits() -> tuple[
    dict[int, tuple[BudgetPolicy, ...]], dict[int, RateLimitPolicy], dict[int, RateLimitPolicy]
]:
    budgets: dict[int, list[BudgetPolicy]] = {}
    for policy_ in budget_policies(Budget.objects.filter(is_active=True)):
        budgets.setdefault(policy_.organization_id, []).append(policy_)
    project_limits: dict[int, RateLimitPolicy] = {}
    key_limits: dict[int, RateLimitPolicy] = {}
    for limit in RateLimit.objects.all():
        policy = RateLimitPolicy(
            scope_name=f"key:{limit.api_key_id}" if limit.api_key_id else f"project:{limit.project_id}",
            organization_id=limit.organization_id,
            requests_per_minute=limit.requests_per_minute or 0,
            tokens_per_minute=limit.tokens_per_minute or 0,
            max_concurrent=limit.max_concurrent or 0,
        )
        if limit.api_key_id:
            key_limits[limit.api_key_id] = policy
        else:
            project_limits[limit.project_id] = policy
    return {org: tuple(items) for org, items in budgets.items()}, project_limits, key_limits


def _build_cache_policies() -> dict[tuple[int, str], CachePolicyView]:
    """Each project's (and feature's) cache policy; one whose deny-list RE2 cannot compile (saved
    before patterns were checked as RE2) is left out and logged: no caching there, rather than
    caching what the lead meant to exclude."""
    views = {}
    for p in CachePolicy.objects.filter(models.Q(exact_enabled=True) | models.Q(semantic_enabled=True)):
        try:
            views[(p.project_id, p.feature)] = policy_view(
                exact=p.exact_enabled,
                semantic=p.semantic_enabled,
                threshold=float(p.similarity_threshold),
                ttl=p.ttl_seconds,
                patterns=list(p.deny_patterns),
                share_across_users=p.share_across_users,
            )
        except PatternError as exc:
            logger.error("cache policy %s (project %s) left out: a deny pattern is not valid RE2: %s",
                         p.id, p.project_id, exc)  # fmt: skip
    return views


def _with_trials(views: dict[tuple[int, str], CachePolicyView]) -> dict[tuple[int, str], CachePolicyView]:
    """Mark the cache policy each semantic-cache trial in shadow applies to (the feature's own, else the
    project's, else one that serves nothing and only lets the trial measure), and give every policy of a
    project the opposites its trials learned."""
    for trial in Trial.objects.filter(lever=Lever.SEMANTIC_CACHE, state=TrialState.SHADOW).order_by("id"):
        slot = (trial.project_id, trial.feature)
        base = (
            views.get(slot)
            or views.get((trial.project_id, ""))
            or policy_view(exact=False, semantic=False, threshold=1.0, ttl=3600, patterns=[])
        )
        floor = float(trial.parameters.get("floor", 1.0)) if isinstance(trial.parameters, dict) else 1.0
        views[slot] = dataclasses.replace(base, trial_id=trial.id, trial_floor=floor)
    learned = learned_opposites_by_project()
    for slot, view in views.items():
        if learned.get(slot[0]):
            views[slot] = dataclasses.replace(view, learned_opposites=learned[slot[0]])
    return views


def _build_prune_policies() -> dict[tuple[int, str], PrunePolicyView]:
    """Each project's (and feature's) pruning, where at least one kind is on."""
    return {
        (p.project_id, p.feature): PrunePolicyView(
            max_tokens_cap=p.max_tokens_cap if p.cap_enabled else None,
            history_turns=p.history_turns if p.history_enabled else None,
        )
        for p in PrunePolicy.objects.filter(models.Q(cap_enabled=True) | models.Q(history_enabled=True))
    }
