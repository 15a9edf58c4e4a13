"""The policy snapshot: everything the data plane needs to decide a request, as plain values.

The control plane builds it from Postgres (``apps.policy.build``) and every
gateway process holds one in memory, rebuilt when a change is announced; a
request only reads it. Enforcement and the batch runner read its budget and
rate-limit parts. Frozen dataclasses, no ORM: both planes import this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

from apps.core.patterns import SCAN_CHARS, Pattern
from apps.core.pricing import PriceRow
from apps.core.routing import RuleView


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """An API key: found by its lookup id, checked by the SHA-256 of the whole key."""

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
    """An active provider of an organisation, with its decrypted secret and its timeouts."""

    id: int
    name: str
    kind: str
    base_url: str
    secret: str
    max_retries: int = 0
    responses_api: bool = True  # off: /v1/responses goes to it as Chat Completions (apps.core.responses_chat)
    # aiohttp's per-request timeout: connect, first byte / stream silence (sock_read); no total (streams).
    timeout: aiohttp.ClientTimeout = aiohttp.ClientTimeout()
    total_timeout: float = 600.0  # a whole non-streamed answer


@dataclass(frozen=True, slots=True)
class ProjectPolicy:
    """A project: where its requests go by default, and its model aliases."""

    id: int
    organization_id: int
    team_id: int | None
    slug: str
    default_provider_id: int | None
    aliases: dict[str, tuple[int, str]]  # alias -> (provider id, model)


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A budget as enforcement reads it: its limit in nano-dollars, and the spend the ledger showed."""

    id: int
    name: str
    organization_id: int
    scope: str
    team_id: int | None
    project_id: int | None
    api_key_id: int | None
    feature: str
    end_user: str
    limit_nano: int
    amount_usd: Decimal
    period: str
    timezone: str
    starts_at: dt.datetime | None
    mode: str
    seed_period_start: float  # period start (epoch s) the seed was computed for
    seed_nano: int  # spend the ledger showed for that period when the snapshot was built

    def applies(self, *, project_id: int, team_id: int | None, key_id: int, feature: str, end_user: str) -> bool:
        scope = self.scope
        if scope == "organization":
            return True
        if scope == "team":
            return team_id is not None and team_id == self.team_id
        if scope == "project":
            return project_id == self.project_id
        if scope == "key":
            return key_id == self.api_key_id
        if self.project_id is not None and self.project_id != project_id:
            return False
        if scope == "feature":
            return feature == self.feature
        return end_user == self.end_user  # end_user scope


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """A project's or key's rate limits (0: none of that kind)."""

    scope_name: str  # "project:3" or "key:17"
    organization_id: int  # whose hash tag its Redis keys carry
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int


@dataclass(frozen=True, slots=True)
class CachePolicyView:
    """A project's (or feature's) cache policy; ``re:`` deny patterns compiled once per snapshot."""

    exact: bool
    semantic: bool
    threshold: float
    ttl_seconds: int
    deny_prefixes: tuple[str, ...]  # lower-cased
    deny_regexes: tuple[Pattern, ...]  # RE2, case-insensitive, search the first SCAN_CHARS characters
    share_across_users: bool = False  # off: an answer is served only to the end user it was stored for
    # A semantic-cache trial in shadow (apps/opportunities): its id, and the lowest prompt similarity it
    # measures. Answers are indexed for semantic search, and would-be hits still go upstream.
    trial_id: int | None = None
    trial_floor: float = 1.0
    # Word pairs the project's trials saw a cached answer be wrong across (apps.cache.guard.learned_opposites).
    learned_opposites: frozenset[tuple[str, str]] = frozenset()

    @property
    def serves(self) -> bool:
        """False for a view that only a trial made: the app's requests see no cache at all."""
        return self.exact or self.semantic

    @property
    def indexes(self) -> bool:
        """Whether stored answers are embedded for semantic search (by the policy, or for a trial)."""
        return self.semantic or self.trial_id is not None

    def denies(self, text: str) -> bool:
        lowered = text.lstrip()[:SCAN_CHARS].lower()
        return any(lowered.startswith(p) for p in self.deny_prefixes) or any(r.search(text) for r in self.deny_regexes)


def policy_view(
    *, exact: bool, semantic: bool, threshold: float, ttl: int, patterns: list[str], share_across_users: bool = False
) -> CachePolicyView:
    """The policy as the gateway reads it; ``PatternError`` if a ``re:`` pattern is not valid RE2."""
    return CachePolicyView(
        exact=exact,
        semantic=semantic,
        threshold=threshold,
        ttl_seconds=ttl,
        deny_prefixes=tuple(p.lower() for p in patterns if not p.startswith("re:")),
        deny_regexes=tuple(Pattern(p[3:], ignore_case=True) for p in patterns if p.startswith("re:")),
        share_across_users=share_across_users,
    )


@dataclass(frozen=True, slots=True)
class PrunePolicyView:
    """What the gateway trims from a feature's requests (None: that pruning is off)."""

    max_tokens_cap: int | None
    history_turns: int | None


@dataclass(frozen=True, slots=True)
class Enforcement:
    """The budgets and rate limits that can apply to one key's requests."""

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
    """The whole policy at one version: keys, projects, providers, prices, budgets, limits, cache, rules."""

    version: int
    keys: dict[str, KeyPolicy] = field(default_factory=dict)  # by lookup id
    projects: dict[int, ProjectPolicy] = field(default_factory=dict)
    providers: dict[int, ProviderTarget] = field(default_factory=dict)
    # organisation id -> model -> provider ids (ascending) that have a price for it
    org_models: dict[int, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    prices: dict[tuple[int, str], tuple[PriceRow, ...]] = field(default_factory=dict)  # newest first
    budgets: dict[int, tuple[BudgetPolicy, ...]] = field(default_factory=dict)  # by organisation id
    cache_policies: dict[tuple[int, str], CachePolicyView] = field(default_factory=dict)  # (project, feature)
    prune_policies: dict[tuple[int, str], PrunePolicyView] = field(default_factory=dict)  # (project, feature)
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

    def prune_policy(self, project_id: int, feature: str) -> PrunePolicyView | None:
        """The feature's own pruning if it has a policy, else the project's."""
        if feature:
            policy = self.prune_policies.get((project_id, feature))
            if policy is not None:
                return policy
        return self.prune_policies.get((project_id, ""))

    def price(self, provider_id: int, model: str, on: dt.date) -> PriceRow | None:
        for row in self.prices.get((provider_id, model), ()):
            if row.effective_from <= on:
                return row
        return None
