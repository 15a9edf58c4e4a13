"""Rows and requests shared by the report tests."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from typing import Any

from django.http import HttpResponse, StreamingHttpResponse

from apps.ledger.models import LedgerEntry
from apps.tenancy.models import Project
from apps.tenancy.services import project_create, team_create
from tests.factories import People, entry_make

# A month in the past, so "now" never moves the data out of range.
MONTH = dt.date(2025, 9, 1)
SINCE, UNTIL = "2025-09-01", "2025-10-01"


def at(day: int, hour: int = 10, minute: int = 0) -> dt.datetime:
    return dt.datetime(2025, 9, day, hour, minute, tzinfo=dt.UTC)


def other_team_project(people: People) -> Project:
    """A project in another team of the same organisation: finance sees it, the team's developer does not."""
    team = team_create(organization=people.tenant.org, name="Other team")
    return project_create(organization=people.tenant.org, name="Billing bot", slug="billing-bot", team=team)


def ledger_mix(people: People) -> list[LedgerEntry]:
    """Gateway rows of several kinds: plain, prompt-cached, cache hit, error, another model and feature."""
    tenant = people.tenant
    return [
        entry_make(tenant, created_at=at(2), feature="chat", end_user="u1"),
        entry_make(
            tenant,
            created_at=at(2, minute=30),
            feature="chat",
            end_user="u2",
            prompt_tokens=2000,
            cached_tokens=1500,
            completion_tokens=300,
            cost=Decimal("0.00032250"),
            counterfactual_cost=Decimal("0.00048000"),
        ),
        entry_make(
            tenant,
            created_at=at(3),
            feature="search",
            provider=None,
            cache_hit="exact",
            cost=Decimal(0),
            counterfactual_cost=Decimal("0.00012000"),
            route="cache:exact",
        ),
        entry_make(
            tenant,
            created_at=at(3, 11),
            status_code=502,
            prompt_tokens=0,
            completion_tokens=0,
            cost=Decimal(0),
            counterfactual_cost=Decimal(0),
            error_code="upstream_error",
        ),  # fmt: skip
        entry_make(
            tenant,
            created_at=at(4, 23, 59),
            requested_model="gpt-4o",
            served_model="gpt-4o-mini",
            feature="summaries",
            prompt_tokens=10_000,
            completion_tokens=1_000,
            cost=Decimal("0.00210000"),
            counterfactual_cost=Decimal("0.03500000"),
            route="downgrade:long-context",
        ),
    ]


def read_csv(response: HttpResponse | StreamingHttpResponse) -> list[dict[str, str]]:
    body = b"".join(response.streaming_content) if response.streaming else response.content  # type: ignore[union-attr]
    return list(csv.DictReader(io.StringIO(body.decode())))


def total(rows: list[dict[str, Any]], column: str) -> Decimal:
    return sum((Decimal(row[column]) for row in rows), Decimal(0))
