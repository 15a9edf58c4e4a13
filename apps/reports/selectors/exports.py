"""What an export asks for (``ExportQuery``) and its rows, whichever kind it is."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet

from apps.reports.selectors.focus import focus_csv_rows, focus_groups
from apps.reports.selectors.monthly import visible_projects
from apps.reports.selectors.rows import ledger_csv_rows, ledger_range, rollup_csv_rows, rollup_groups
from apps.tenancy.models import Organization, Project


@dataclass(frozen=True)
class ExportQuery:
    """What to export: a time range, optionally one project, and (roll-ups) a grouping and bucket."""

    since: dt.datetime
    until: dt.datetime
    project: str = ""
    group_by: tuple[str, ...] = ("project", "model")
    bucket: str = "day"

    def file_name(self, *, kind: str, organization_slug: str) -> str:
        """A download's name: kind, organisation, project, range and, for roll-ups, grouping and bucket,
        so two different exports never arrive under the same name."""
        parts = [kind, organization_slug]
        if self.project:
            parts.append(self.project)
        if kind == "rollups":
            parts += ["by-" + "-".join(self.group_by or ("total",)), f"per-{self.bucket}"]
        parts += [f"{self.since:%Y%m%d}", f"{self.until:%Y%m%d}"]
        return "-".join(parts) + ".csv"

    def to_params(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "project": self.project,
            "group_by": list(self.group_by),
            "bucket": self.bucket,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExportQuery:
        return cls(
            since=dt.datetime.fromisoformat(params["since"]),
            until=dt.datetime.fromisoformat(params["until"]),
            project=params.get("project") or "",
            group_by=tuple(params.get("group_by") or ()),
            bucket=params.get("bucket") or "day",
        )


class _ExportScope(TypedDict):
    """The arguments every export's selector shares."""

    organization: Organization
    projects: QuerySet[Project]
    since: dt.datetime
    until: dt.datetime


def export_rows(
    *, kind: str, user: User | AnonymousUser, organization: Organization, query: ExportQuery
) -> tuple[Iterator[tuple[Any, ...]], QuerySet[Any]]:
    """The CSV rows (header first) of one export, and the queryset whose count sizes it."""
    projects = visible_projects(user=user, organization=organization, project_slug=query.project)
    scope: _ExportScope = {
        "organization": organization,
        "projects": projects,
        "since": query.since,
        "until": query.until,
    }
    if kind == "ledger":
        entries = ledger_range(**scope)
        return ledger_csv_rows(entries=entries), entries
    if kind == "rollups":
        groups = rollup_groups(**scope, group_by=list(query.group_by), bucket=query.bucket)
        return rollup_csv_rows(groups=groups, group_by=list(query.group_by)), groups
    if kind == "focus":
        groups = focus_groups(**scope)
        return focus_csv_rows(organization=organization, groups=groups), groups
    raise ValueError(f"unknown export kind {kind!r}")
