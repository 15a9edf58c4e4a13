"""Forms of the report, export and import pages. They validate input only; writes go through services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.utils import timezone

from apps.reports.selectors import BUCKETS, GROUPINGS, ExportQuery, month_bounds
from apps.tenancy.models import Organization, Project
from apps.tenancy.permissions import Action
from apps.tenancy.selectors import organizations_where, projects_where
from costcontrol.forms import form_field

MAX_IMPORT_BYTES = 50 * 1024 * 1024


def import_organizations(user: User | AnonymousUser) -> QuerySet[Organization]:
    """Where the user may import usage: owners their organisation, team leads their team's projects."""
    return organizations_where(user=user, action=Action.USAGE_IMPORT)


def _parse_moment(raw: str, field: str) -> dt.datetime:
    """An ISO 8601 date (midnight UTC) or date-time (UTC when it names no zone)."""
    try:
        value = dt.datetime.fromisoformat(raw.strip().replace(" ", "T").replace("Z", "+00:00"))
    except ValueError:
        raise forms.ValidationError(f"{field}: use an ISO 8601 date or date-time, e.g. 2025-08-01.") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _current_month() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date().replace(day=1)


class ReportForm(forms.Form):
    org = forms.ChoiceField(label="Organisation")
    month = forms.CharField(widget=forms.Select, required=False)

    def __init__(self, *args: Any, organizations: list[Organization], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "org", forms.ChoiceField).choices = [(org.slug, org.name) for org in organizations]
        month = _current_month()
        months = []
        for _ in range(24):
            months.append((f"{month:%Y-%m}", f"{month:%b %Y}"))
            month = (month - dt.timedelta(days=1)).replace(day=1)
        asked = (self.data.get("month") or "") if self.is_bound else ""
        if asked and asked not in dict(months):
            months.insert(0, (asked, asked))
        month_widget = self.fields["month"].widget
        # Declared as forms.Select above; only the widget knows the months, the field stays free text.
        assert isinstance(month_widget, forms.Select)
        month_widget.choices = months

    def clean_month(self) -> dt.date:
        raw = (self.cleaned_data.get("month") or "").strip()
        if not raw:
            return _current_month()
        try:
            return dt.datetime.strptime(raw, "%Y-%m").date()
        except ValueError:
            raise forms.ValidationError("Use YYYY-MM, e.g. 2025-08.") from None


class ExportQueryForm(forms.Form):
    """The query string of every export URL: ``since`` inclusive, ``until`` exclusive, UTC."""

    org = forms.SlugField()
    since = forms.CharField(required=False, help_text="Inclusive; default: start of this month")
    until = forms.CharField(required=False, help_text="Exclusive; default: start of next month")
    project = forms.SlugField(required=False)
    group_by = forms.CharField(required=False, help_text=f"Comma-separated: {', '.join(GROUPINGS)}")
    bucket = forms.ChoiceField(choices=[(b, b) for b in BUCKETS], required=False)

    def clean_group_by(self) -> tuple[str, ...]:
        raw = self.cleaned_data.get("group_by") or "project,model"
        names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
        unknown = [name for name in names if name not in GROUPINGS]
        if unknown:
            raise forms.ValidationError(f"Unknown grouping {', '.join(unknown)}; use {', '.join(GROUPINGS)}.")
        return names

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        default_since, default_until = month_bounds(_current_month())
        since = _parse_moment(data["since"], "since") if data.get("since") else default_since
        until = _parse_moment(data["until"], "until") if data.get("until") else default_until
        if until <= since:
            raise forms.ValidationError("until must be after since.")
        data["range"] = (since, until)
        return data

    def to_query(self) -> ExportQuery:
        since, until = self.cleaned_data["range"]
        return ExportQuery(
            since=since,
            until=until,
            project=self.cleaned_data.get("project") or "",
            group_by=self.cleaned_data["group_by"],
            bucket=self.cleaned_data.get("bucket") or "day",
        )


class _ProjectChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Project) -> str:
        return f"{obj.organization.name} / {obj.name}"


class UsageImportForm(forms.Form):
    organization = forms.ModelChoiceField(queryset=Organization.objects.none(), label="Organisation")
    project = _ProjectChoiceField(
        queryset=Project.objects.none(), help_text="The imported spend is attributed to this project."
    )
    file = forms.FileField(help_text="CSV exported from OpenAI's usage page (activity or cost view), or the API.")

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        orgs = import_organizations(user)
        organization = form_field(self, "organization", forms.ModelChoiceField)
        organization.queryset = orgs
        form_field(self, "project", forms.ModelChoiceField).queryset = projects_where(
            user=user, action=Action.USAGE_IMPORT
        )
        if len(importable := list(orgs)) == 1:
            organization.initial = importable[0].pk
            organization.empty_label = None

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        if upload.size > MAX_IMPORT_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MB; split it.")
        return upload

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        org, project = data.get("organization"), data.get("project")
        if org is not None and project is not None and project.organization_id != org.pk:
            self.add_error("project", "Pick a project of the chosen organisation.")
        return data
