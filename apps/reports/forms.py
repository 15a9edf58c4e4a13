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
from costcontrol.forms import DateInput, form_field

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


def _today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def _current_month() -> dt.date:
    return _today().replace(day=1)


# The report's date-range picker accepts days from here to a year ahead; anything else is a form error.
EARLIEST_REPORT_DAY = dt.date(2000, 1, 1)


class ReportForm(forms.Form):
    """The report's organisation and range: a month, or any days (From/To, both inclusive) that override it."""

    org = forms.ChoiceField(label="Organisation")
    month = forms.CharField(widget=forms.Select, required=False)
    date_from = forms.DateField(required=False, widget=DateInput(), label="From")
    date_to = forms.DateField(required=False, widget=DateInput(), label="To")

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

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        latest = _today() + dt.timedelta(days=366)
        for name in ("date_from", "date_to"):
            day = data.get(name)
            if day is not None and not EARLIEST_REPORT_DAY <= day <= latest:
                self.add_error(name, f"Pick a day from {EARLIEST_REPORT_DAY:%Y-%m-%d} to {latest:%Y-%m-%d}.")
        date_from, date_to = data.get("date_from"), data.get("date_to")
        if date_from and date_to and date_from > date_to:
            self.add_error("date_to", "“To” must not be before “From”.")
        return data

    @property
    def custom_range(self) -> bool:
        return bool(self.cleaned_data.get("date_from") or self.cleaned_data.get("date_to"))

    def date_range(self) -> tuple[dt.datetime, dt.datetime]:
        """``since`` inclusive and ``until`` exclusive, UTC: the chosen days when given, else the month. Only
        one end given: From alone runs to today, To alone starts on the first of its month."""
        if not self.custom_range:
            return month_bounds(self.cleaned_data["month"])
        date_from: dt.date | None = self.cleaned_data.get("date_from")
        date_to: dt.date | None = self.cleaned_data.get("date_to")
        if date_from is not None:
            first = date_from
        else:
            assert date_to is not None  # custom_range: one of the two is set
            first = date_to.replace(day=1)
        last = date_to or max(first, _today())
        since = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        return since, dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)


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
