"""Forms of the control-plane pages. They validate input only; writes go through services."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django import forms
from django.db.models import QuerySet
from django.utils import timezone

from apps.core.catalog import MAX_TOKEN_COUNT
from apps.core.pricing import LongContext
from apps.dashboard.models import TokenScope
from apps.ledger.selectors import GROUP_BY_LABELS, LedgerFilters
from apps.providers.models import FACTOR, FACTOR_BOUNDS, DecimalSpec, Provider, ProviderKind, validate_base_url
from apps.providers.models import MONEY as PRICE_MONEY
from apps.tenancy.models import Project, Team
from costcontrol.forms import DateInput, form_field


class _PriceInput(DecimalSpec):
    min_value: Decimal


# The model's precision, so a price that validates here also fits the column.
MONEY: _PriceInput = {**PRICE_MONEY, "min_value": Decimal(0)}


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="%Y-%m-%dT%H:%M", **kwargs)


class ProjectCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=80, required=False, help_text="Leave blank to derive it from the name.")
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False, empty_label="— no team —")
    default_provider = forms.ModelChoiceField(
        queryset=Provider.objects.none(),
        required=False,
        label="Default provider",
        help_text="Serves plain model names (no “@ provider”) for this project.",
    )

    def __init__(self, *args: Any, teams: QuerySet[Team], providers: QuerySet[Provider], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "team", forms.ModelChoiceField).queryset = teams
        provider = form_field(self, "default_provider", forms.ModelChoiceField)
        provider.queryset = providers
        choices = list(providers[:2])
        if len(choices) == 1:  # the organisation's only provider: chosen already
            provider.initial, provider.empty_label = choices[0].pk, None
        elif choices:
            # Several could serve a model: the choice is the person's, never the first priced one by id.
            provider.required, provider.empty_label = True, "— choose —"
        else:
            del self.fields["default_provider"]


class KeyIssueForm(forms.Form):
    name = forms.CharField(max_length=200)
    allowed_models = forms.CharField(
        required=False, help_text="Comma-separated; leave blank to allow every model.", max_length=2000
    )
    default_feature = forms.CharField(max_length=100, required=False, help_text="Tag for requests that send none.")
    expires_at = forms.DateTimeField(
        required=False, widget=DateTimeLocalInput(), input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
    )

    def clean_allowed_models(self) -> list[str]:
        raw: str = self.cleaned_data["allowed_models"]
        return [part.strip() for part in raw.split(",") if part.strip()]

    def clean_expires_at(self) -> dt.datetime | None:
        value: dt.datetime | None = self.cleaned_data["expires_at"]
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class AliasForm(forms.Form):
    alias = forms.CharField(max_length=200)
    provider = forms.ModelChoiceField(queryset=Provider.objects.none())
    model = forms.CharField(max_length=200)

    def __init__(self, *args: Any, providers: QuerySet[Provider], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "provider", forms.ModelChoiceField).queryset = providers


class DefaultProviderForm(forms.Form):
    default_provider = forms.ModelChoiceField(queryset=Provider.objects.none(), required=False, empty_label="— none —")

    def __init__(self, *args: Any, providers: QuerySet[Provider], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "default_provider", forms.ModelChoiceField).queryset = providers


RESPONSES_API_HELP = "Off for a server without /v1/responses: those requests are translated to chat completions."


class ProviderCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    kind = forms.ChoiceField(choices=ProviderKind.choices)
    base_url = forms.CharField(
        max_length=500, label="Base URL", validators=[validate_base_url], help_text="Including the version, e.g. …/v1"
    )
    # render_value=False: a stored secret never travels back to the browser.
    secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False), label="API secret")
    responses_api = forms.BooleanField(
        required=False, initial=True, label="Speaks the Responses API", help_text=RESPONSES_API_HELP
    )


class ProviderUpdateForm(forms.Form):
    name = forms.CharField(max_length=200)
    base_url = forms.CharField(max_length=500, label="Base URL", validators=[validate_base_url])
    secret = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        label="API secret",
        help_text="Leave blank to keep the stored secret.",
    )
    is_active = forms.BooleanField(required=False, label="Active")
    responses_api = forms.BooleanField(required=False, label="Speaks the Responses API", help_text=RESPONSES_API_HELP)

    def clean_secret(self) -> str | None:
        # Blank means "unchanged" (None for provider_update), not "remove".
        return self.cleaned_data["secret"] or None


class PriceForm(forms.Form):
    model = forms.CharField(max_length=200)
    input_per_mtok = forms.DecimalField(label="Input", **MONEY)
    cached_input_per_mtok = forms.DecimalField(
        label="Cached input",
        required=False,
        help_text="Blank: same as input",
        **MONEY,
    )
    output_per_mtok = forms.DecimalField(label="Output", **MONEY)
    cache_write_per_mtok = forms.DecimalField(
        label="Cache write",
        required=False,
        help_text="Prompt-cache writes (Anthropic). Blank: same as input",
        **MONEY,
    )
    batch_input_per_mtok = forms.DecimalField(
        label="Batch input",
        required=False,
        help_text="Blank: same as input",
        **MONEY,
    )
    batch_output_per_mtok = forms.DecimalField(
        label="Batch output",
        required=False,
        help_text="Blank: same as output",
        **MONEY,
    )
    flex_input_per_mtok = forms.DecimalField(label="Flex input", required=False, **MONEY)
    flex_cached_input_per_mtok = forms.DecimalField(label="Flex cached input", required=False, **MONEY)
    flex_output_per_mtok = forms.DecimalField(
        label="Flex output", required=False, help_text="All three flex prices or none (standard prices)", **MONEY
    )
    priority_input_per_mtok = forms.DecimalField(label="Priority input", required=False, **MONEY)
    priority_cached_input_per_mtok = forms.DecimalField(label="Priority cached input", required=False, **MONEY)
    priority_output_per_mtok = forms.DecimalField(
        label="Priority output", required=False, help_text="All three priority prices or none", **MONEY
    )
    reasoning_per_mtok = forms.DecimalField(
        label="Reasoning", required=False, help_text="Blank: reasoning tokens bill as output", **MONEY
    )
    long_context_above_tokens = forms.IntegerField(
        label="Long context above", required=False, min_value=1, max_value=MAX_TOKEN_COUNT,
        help_text="Input tokens past which a request is billed whole at the factors below",
    )  # fmt: skip
    long_context_input_factor = forms.DecimalField(
        label="Long-context input ×", required=False, **FACTOR, **FACTOR_BOUNDS
    )
    long_context_output_factor = forms.DecimalField(
        label="Long-context output ×", required=False, **FACTOR, **FACTOR_BOUNDS,
        help_text="All three long-context values, or none to keep the model's current long-context rate",
    )  # fmt: skip
    no_long_context = forms.BooleanField(
        label="No long-context rate", required=False, help_text="From this date, the model has no long-context rate"
    )
    effective_from = forms.DateField(widget=DateInput(), initial=dt.date.today)

    def clean(self) -> dict[str, Any]:
        """The three long-context fields become ``long_context`` for ``price_set``: a rate, None (the box
        ticked), or absent (keep the model's current rate)."""
        data = super().clean() or {}
        parts = [data.pop(name, None) for name in LONG_CONTEXT_FIELDS]
        remove = data.pop("no_long_context", False)
        given = [part is not None for part in parts]
        if any(given) and not all(given):
            self.add_error("long_context_above_tokens", "Give all three long-context values, or none.")
        elif all(given) and remove:
            self.add_error("no_long_context", "Either give a long-context rate or remove it, not both.")
        elif all(given):
            data["long_context"] = LongContext(*parts)
        elif remove:
            data["long_context"] = None
        return data


LONG_CONTEXT_FIELDS = ("long_context_above_tokens", "long_context_input_factor", "long_context_output_factor")


STATUS_CHOICES = [("", "any"), ("ok", "ok"), ("error", "error")]


LEDGER_DEFAULT_DAYS = 7


class LedgerFilterForm(forms.Form):
    """The ledger page's and its export's filters. "From" defaults to a week ago, so a bare visit reads
    one or two monthly partitions; clearing it (an empty ``date_from``) asks for every day."""

    project = forms.ChoiceField(required=False)
    key = forms.CharField(required=False, label="Key", help_text="Its name, or its id (cc_live_…)")
    model = forms.CharField(required=False)
    feature = forms.CharField(required=False)
    end_user = forms.CharField(required=False, label="End user")
    endpoint = forms.CharField(required=False)
    status = forms.ChoiceField(choices=STATUS_CHOICES, required=False)
    date_from = forms.DateField(required=False, widget=DateInput(), label="From")
    date_to = forms.DateField(required=False, widget=DateInput(), label="To")

    def __init__(self, data: Any, *, projects: list[Project], today: dt.date) -> None:
        self.default_from = today - dt.timedelta(days=LEDGER_DEFAULT_DAYS - 1)
        data = data.copy()
        if "date_from" not in data:
            data["date_from"] = self.default_from.isoformat()
        super().__init__(data)
        form_field(self, "project", forms.ChoiceField).choices = [("", "all projects")] + [
            (p.slug, f"{p.organization.name} / {p.name}") for p in projects
        ]

    def to_filters(self) -> LedgerFilters:
        """The filters to apply; call after ``is_valid()``. Invalid fields are ignored, not guessed
        (an invalid "From" falls back to the default week, never to every day)."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        date_from: dt.date | None = data.get("date_from")
        if "date_from" in self.errors:
            date_from = self.default_from
        date_to: dt.date | None = data.get("date_to")
        return LedgerFilters(
            project=data.get("project") or "",
            key=(data.get("key") or "").strip(),
            model=(data.get("model") or "").strip(),
            feature=(data.get("feature") or "").strip(),
            end_user=(data.get("end_user") or "").strip(),
            endpoint=(data.get("endpoint") or "").strip(),
            status=data.get("status") or "",
            since=_start_of(date_from),
            # "To" is inclusive for people: everything before the next midnight.
            until=_start_of(date_to + dt.timedelta(days=1)) if date_to else None,
        )


def _start_of(day: dt.date | None) -> dt.datetime | None:
    if day is None:
        return None
    return dt.datetime.combine(day, dt.time.min, tzinfo=timezone.get_current_timezone())


OVERVIEW_DEFAULT_DAYS = 7


class OverviewForm(forms.Form):
    """Scope, date range and chart split of the overview. Invalid or missing values fall back to defaults."""

    scope = forms.ChoiceField(required=False, label="Show")
    date_from = forms.DateField(required=False, widget=DateInput(), label="From")
    date_to = forms.DateField(required=False, widget=DateInput(), label="To")
    group_by = forms.ChoiceField(choices=list(GROUP_BY_LABELS.items()), required=False, label="Split by")

    def __init__(self, *args: Any, scopes: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "scope", forms.ChoiceField).choices = scopes

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        date_from, date_to = data.get("date_from"), data.get("date_to")
        if date_from and date_to and date_from > date_to:
            self.add_error("date_to", "“To” must not be before “From”.")
        return data

    def choice(self, name: str, default: str) -> str:
        data = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        return data.get(name) or default

    def date_range(self, *, today: dt.date) -> tuple[dt.date, dt.date]:
        """The chosen days, both inclusive; the last seven days by default."""
        data = self.cleaned_data if hasattr(self, "cleaned_data") and not self.errors else {}
        date_to: dt.date = data.get("date_to") or today
        date_from: dt.date = data.get("date_from") or date_to - dt.timedelta(days=OVERVIEW_DEFAULT_DAYS - 1)
        return date_from, date_to


class ApiTokenForm(forms.Form):
    """A new API token: what it may do, and (optionally) fewer days than the default lifetime."""

    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.READ)

    def __init__(self, *args: Any, max_days: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["lifetime_days"] = forms.IntegerField(
            required=False,
            min_value=1,
            max_value=max_days,
            label="Lifetime in days",
            help_text=f"Leave blank for the longest: {max_days}.",
        )
