"""The policy snapshot: everything the data plane needs to decide a request.

Built from Postgres off the event loop, held in memory per gateway process, and
rebuilt when the control plane announces a change (Redis pub/sub) or when the
version counter moved (polled as a safety net). Request handling only reads
the snapshot: no SQL on the hot path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import models

from apps.core import names
from apps.core.patterns import Pattern, PatternError
from apps.core.periods import period_bounds
from apps.core.pricing import PriceRow, to_nano
from apps.core.snapshot import BudgetPolicy, RateLimitPolicy
from apps.gateway.cache import CachePolicyView, policy_view
from apps.routing.engine import CascadeView, RuleView, TargetView, normalize_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    id: int
    lookup_id: str
    key_hash: bytes
    project_id: int
    organization_id: int
    allowed_models: frozenset[str]
    default_feature: str
    expires_at: float | None
    revoked: bool


@dataclass(frozen=True, slots=True)
class ProviderTarget:
    id: int
    name: str
    kind: str
    base_url: str
    secret: str
    max_retries: int = 0
    # aiohttp's per-request timeout: connect, first byte / stream silence (sock_read); no total (streams).
    timeout: aiohttp.ClientTimeout = aiohttp.ClientTimeout()
    total_timeout: float = 600.0  # a whole non-streamed answer


@dataclass(frozen=True, slots=True)
class ProjectPolicy:
    id: int
    organization_id: int
    team_id: int | None
    slug: str
    default_provider_id: int | None
    aliases: dict[str, tuple[int, str]]  # alias -> (provider id, model)


@dataclass(frozen=True, slots=True)
class Enforcement:
    fixed: tuple[BudgetPolicy, ...]  # organisation, team, project and key budgets: apply to every request
    by_attribute: tuple[BudgetPolicy, ...]  # feature and end-user budgets: checked per request
    rate_limits: tuple[RateLimitPolicy, ...]

    def budgets(self, *, feature: str, end_user: str) -> list[BudgetPolicy]:
        matched = [
            b for b in self.by_attribute if (b.feature == feature if b.scope == "feature" else b.end_user == end_user)
        ]
        return [*self.fixed, *matched] if matched else list(self.fixed)


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    keys: dict[str, KeyPolicy] = field(default_factory=dict)  # by lookup id
    projects: dict[int, ProjectPolicy] = field(default_factory=dict)
    providers: dict[int, ProviderTarget] = field(default_factory=dict)
    # organisation id -> model -> provider ids (ascending) that have a price for it
    org_models: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    prices: dict[tuple[int, str], tuple[PriceRow, ...]] = field(default_factory=dict)  # newest first
    budgets: dict[int, tuple[BudgetPolicy, ...]] = field(default_factory=dict)  # by organisation id
    cache_policies: dict[tuple[int, str], CachePolicyView] = field(default_factory=dict)  # (project, feature)
    project_limits: dict[int, RateLimitPolicy] = field(default_factory=dict)
    key_limits: dict[int, RateLimitPolicy] = field(default_factory=dict)
    rules: dict[int, tuple[RuleView, ...]] = field(default_factory=dict)  # by project id, in evaluation order
    unusable_providers: frozenset[int] = frozenset()  # secrets that cannot be decrypted: left out

    # Per-key enforcement lists, computed on first use (the snapshot is rebuilt on every change).
    _enforcement: dict[int, Enforcement] = field(default_factory=dict)

    def enforcement_for(self, key: KeyPolicy) -> Enforcement:
        """The budgets and rate limits that can apply to requests made with ``key``."""
        cached = self._enforcement.get(key.id)
        if cached is not None:
            return cached
        project = self.projects[key.project_id]
        fixed, by_attribute = [], []
        for budget in self.budgets.get(key.organization_id, ()):
            if budget.scope in ("feature", "end_user"):
                if budget.project_id is None or budget.project_id == project.id:
                    by_attribute.append(budget)
            elif budget.applies(project_id=project.id, team_id=project.team_id, key_id=key.id, feature="", end_user=""):
                fixed.append(budget)
        limits = tuple(lim for lim in (self.project_limits.get(project.id), self.key_limits.get(key.id)) if lim)
        enforcement = Enforcement(fixed=tuple(fixed), by_attribute=tuple(by_attribute), rate_limits=limits)
        self._enforcement[key.id] = enforcement
        return enforcement

    def cache_policy(self, project_id: int, feature: str) -> CachePolicyView | None:
        """The feature's own policy if it has one, else the project's."""
        if feature:
            policy = self.cache_policies.get((project_id, feature))
            if policy is not None:
                return policy
        return self.cache_policies.get((project_id, ""))

    def price(self, provider_id: int, model: str, on: dt.date) -> PriceRow | None:
        for row in self.prices.get((provider_id, model), ()):
            if row.effective_from <= on:
                return row
        return None


def build_snapshot(version: int) -> Snapshot:
    """Read the whole policy from Postgres (sync; run it in a thread)."""
    from apps.keys.models import ApiKey
    from apps.providers.models import ModelAlias, Price, Provider
    from apps.tenancy.models import Project

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
        prices.setdefault((price.provider_id, price.model), []).append(
            PriceRow.per_mtok(
                effective_from=price.effective_from,
                input_per_mtok=price.input_per_mtok,
                cached_input_per_mtok=price.cached_input_per_mtok,
                output_per_mtok=price.output_per_mtok,
            )
        )
        served_by = org_models.setdefault(provider_orgs[price.provider_id], {}).setdefault(price.model, [])
        if price.provider_id not in served_by:
            served_by.append(price.provider_id)

    budgets, project_limits, key_limits = _build_limits()
    return Snapshot(
        version=version,
        cache_policies=_build_cache_policies(),
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
    from apps.providers.crypto import InvalidToken

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
    from apps.routing.models import RoutingRule, TargetRole

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
        rules.setdefault(rule.project_id, []).append(
            RuleView(
                id=rule.id,
                name=rule.name,
                action=rule.action,
                primaries=tuple(by_role[TargetRole.PRIMARY]),
                fallbacks=tuple(by_role[TargetRole.FALLBACK]),
                shadow=shadows[0] if shadows else None,
                shadow_fraction=float(rule.shadow_percent) / 100,
                cascade=CascadeView(
                    threshold=float(rule.cascade_threshold),
                    tokens=rule.cascade_tokens,
                    aggregate=rule.cascade_aggregate,
                    escalate_new_labels=rule.cascade_escalate_new_labels,
                    labels=frozenset(normalize_text(label) for label in rule.cascade_labels),
                )
                if rule.action == "cascade"
                else None,
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
    from apps.budgets.selectors import budget_spent_usd

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
    from apps.budgets.models import Budget, RateLimit

    budgets: dict[int, list[BudgetPolicy]] = {}
    for policy_ in budget_policies(Budget.objects.filter(is_active=True)):
        budgets.setdefault(policy_.organization_id, []).append(policy_)
    project_limits: dict[int, RateLimitPolicy] = {}
    key_limits: dict[int, RateLimitPolicy] = {}
    for limit in RateLimit.objects.all():
        policy = RateLimitPolicy(
            scope_name=f"key:{limit.api_key_id}" if limit.api_key_id else f"project:{limit.project_id}",
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
    from apps.cache.models import CachePolicy

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


def publish_policy_change() -> None:
    """Tell every gateway process to rebuild its snapshot (call after commit)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.incr(names.policy_version(settings.REDIS_PREFIX))
        pipe.publish(names.policy_channel(settings.REDIS_PREFIX), b"changed")
        pipe.execute()
    finally:
        client.close()


class PolicyStore:
    """Holds the current snapshot for one process and keeps it fresh."""

    # Rebuild at least this often even when no change was announced, so a lost
    # announcement (Redis blip during publish) heals on its own.
    MAX_AGE_SECONDS = 60.0

    def __init__(self, redis_client: aioredis.Redis, poll_seconds: float) -> None:
        self._redis = redis_client
        self._poll_seconds = poll_seconds
        self._built_at = 0.0
        self._refresh_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.current = Snapshot(version=-1)

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._poll())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def refresh(self) -> None:
        async with self._refresh_lock:
            # Read the version before building: a change made during the build
            # bumps it again and the next poll rebuilds.
            version = int(await self._redis.get(names.policy_version(settings.REDIS_PREFIX)) or 0)
            loop = asyncio.get_running_loop()
            try:
                self.current = await loop.run_in_executor(None, _build_in_thread, version)
            except Exception:
                logger.critical(
                    "policy snapshot build FAILED: this process keeps serving policy version %s, built %.0f s ago; "
                    "key revocations and policy changes are NOT applied here until a build succeeds",
                    self.current.version, time.monotonic() - self._built_at, exc_info=True,
                )  # fmt: skip
                raise
            self._built_at = time.monotonic()

    async def _listen(self) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(names.policy_channel(settings.REDIS_PREFIX))
                async for _message in pubsub.listen():
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("policy listener failed; reconnecting")
                await asyncio.sleep(0.5)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                version = int(await self._redis.get(names.policy_version(settings.REDIS_PREFIX)) or 0)
                stale = time.monotonic() - self._built_at > self.MAX_AGE_SECONDS
                if version != self.current.version or stale:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("policy version check failed")


def _build_in_thread(version: int) -> Snapshot:
    from django.db import close_old_connections

    try:
        return build_snapshot(version)
    finally:
        close_old_connections()
