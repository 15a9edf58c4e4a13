"""The policy snapshot: everything the data plane needs to decide a request, as plain values.

The control plane builds it from Postgres (``apps.policy.build``); every gateway
process holds one in memory and reads it per request; enforcement and the batch
runner read the budget and rate-limit parts. Frozen dataclasses, no ORM: both
planes import this module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal


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
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int
