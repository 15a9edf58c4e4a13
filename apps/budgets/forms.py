"""Forms for budgets, rate limits and notification channels; choices scoped to the user."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from apps.budgets.models import (
    AlertKind,
    Budget,
    BudgetMode,
    BudgetPeriod,
    BudgetScope,
    ChannelKind,
    NotificationChannel,
    RateLimit,
)
from apps.keys.models import ApiKey
from apps.tenancy.models import Team
from apps.tenancy.permissions import Action
from apps.tenancy.selectors import organizations_where, projects_where
from costcontrol.forms import form_field

# Fields that only matter for some values of another: the scope's own reference (the project also
# narrows feature and end-user budgets), and a one-off budget's start. Read by static/js/app.js.
SHOW_WHEN: dict[str, str] = {
    "team": f"scope={BudgetScope.TEAM}",
    "project": f"scope={BudgetScope.PROJECT},{BudgetScope.FEATURE},{BudgetScope.END_USER}",
    "api_key": f"scope={BudgetScope.KEY}",
    "feature": f"scope={BudgetScope.FEATURE}",
    "end_user": f"scope={BudgetScope.END_USER}",
    "starts_at": f"period={BudgetPeriod.ONE_OFF}",
}


class BudgetForm(forms.ModelForm):
    alert_thresholds = forms.CharField(
        required=False, initial="50, 80, 100", help_text="Percent of the amount, comma-separated"
    )

    class Meta:
        model = Budget
        fields = [
            "organization", "name", "scope", "team", "project", "api_key", "feature", "end_user", "amount_usd",
            "period", "timezone", "starts_at", "mode", "alert_thresholds",
        ]  # fmt: skip
        widgets = {"starts_at": forms.DateTimeInput(attrs={"type": "datetime-local"})}
        labels = {"amount_usd": "Amount (USD)", "api_key": "API key"}

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Choices are what the user may budget on; which scope their role allows is checked on the
        # budget itself (a team lead picking "organisation" gets a 403, not a silent choice).
        orgs = organizations_where(user=user, action=Action.BUDGET_MANAGE)
        projects = projects_where(user=user, action=Action.BUDGET_MANAGE)
        if "organization" in self.fields:
            organization = form_field(self, "organization", forms.ModelChoiceField)
            organization.queryset = orgs
            if len(choices := list(orgs[:2])) == 1:  # one organisation: chosen already
                organization.initial = choices[0].pk
                organization.empty_label = None
        form_field(self, "team", forms.ModelChoiceField).queryset = Team.objects.filter(organization__in=orgs)
        form_field(self, "project", forms.ModelChoiceField).queryset = projects
        form_field(self, "api_key", forms.ModelChoiceField).queryset = ApiKey.objects.filter(
            project__in=projects, revoked_at__isnull=True
        )
        self.fields["project"].help_text = "Required for a project budget; narrows feature / end-user budgets"
        # Short mode names fit the select; what each does is the help text.
        form_field(self, "mode", forms.ChoiceField).choices = [
            (BudgetMode.HARD, "Hard (block)"),
            (BudgetMode.SOFT, "Soft (alert)"),
            (BudgetMode.SHADOW, "Shadow (report)"),
        ]
        self.fields["mode"].help_text = "Hard refuses requests over the limit; soft only alerts; shadow reports."
        for name, condition in SHOW_WHEN.items():
            self.fields[name].widget.attrs["data-show-when"] = condition

    def clean_alert_thresholds(self) -> list[int]:
        raw = self.cleaned_data.get("alert_thresholds") or ""
        try:
            values = sorted({int(part) for part in raw.replace(";", ",").split(",") if part.strip()})
        except ValueError:
            raise forms.ValidationError("Use whole percentages separated by commas, e.g. 50, 80, 100.") from None
        if any(v < 1 or v > 1000 for v in values):
            raise forms.ValidationError("Each threshold must be between 1 and 1000 percent.")
        return values

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        org = data.get("organization") or (self.instance.organization if self.instance.pk else None)
        for field in ("team", "project"):
            ref = data.get(field)
            if org and ref is not None and ref.organization_id != org.id:
                self.add_error(field, "Pick one from the budget's organisation.")
        key = data.get("api_key")
        if org and key is not None and key.project.organization_id != org.id:
            self.add_error("api_key", "Pick a key from the budget's organisation.")
        return data


class BudgetEditForm(BudgetForm):
    """A budget's fields but its organisation, which never changes; starts from the budget's values."""

    class Meta(BudgetForm.Meta):
        fields = [name for name in BudgetForm.Meta.fields if name != "organization"]

    def __init__(self, *args: Any, user: User, instance: Budget, **kwargs: Any) -> None:
        super().__init__(*args, user=user, instance=instance, **kwargs)
        if not self.is_bound:
            self.initial["alert_thresholds"] = ", ".join(str(t) for t in instance.alert_thresholds)
        # Only the budget's own organisation's teams, projects and keys (a user may see several).
        lookups = (("team", "organization"), ("project", "organization"), ("api_key", "project__organization"))
        for name, lookup in lookups:
            field = form_field(self, name, forms.ModelChoiceField)
            if field.queryset is not None:
                field.queryset = field.queryset.filter(**{lookup: instance.organization})


class RateLimitForm(forms.ModelForm):
    class Meta:
        model = RateLimit
        fields = ["project", "api_key", "requests_per_minute", "tokens_per_minute", "max_concurrent"]
        labels = {"api_key": "API key (blank: whole project)"}

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        projects = projects_where(user=user, action=Action.PROJECT_MANAGE)
        form_field(self, "project", forms.ModelChoiceField).queryset = projects
        form_field(self, "api_key", forms.ModelChoiceField).queryset = ApiKey.objects.filter(
            project__in=projects, revoked_at__isnull=True
        )
        # A scope that already has a limit gets the friendlier error of clean(), which names its edit page.
        self.validate_unique = lambda: None  # type: ignore[method-assign]

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        key, project = data.get("api_key"), data.get("project")
        if key is not None and project is not None and key.project_id != project.id:
            self.add_error("api_key", "That key belongs to another project.")
        elif project is not None and RateLimit.objects.filter(project=project, api_key=key).exists():
            scope = f"the key “{key.name}”" if key is not None else "the whole project"
            self.add_error(
                "api_key",
                f"{project.name} already has a rate limit for {scope}: change it with its Edit button, "
                "or pick another scope.",
            )
        if not any(data.get(f) for f in ("requests_per_minute", "tokens_per_minute", "max_concurrent")):
            raise forms.ValidationError("Set at least one limit.")
        return data


class RateLimitValuesForm(forms.ModelForm):
    """A rate limit's numbers, for editing one that exists."""

    class Meta:
        model = RateLimit
        fields = ["requests_per_minute", "tokens_per_minute", "max_concurrent"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        if not any(self.cleaned_data.get(f) for f in self.Meta.fields):
            raise forms.ValidationError("Set at least one limit, or delete the rate limit.")
        return self.cleaned_data


def _check_target(form: forms.BaseForm, kind: str | None, target: str) -> None:
    """A webhook's target is an http(s) URL, an e-mail channel's a list of addresses; errors go on ``target``."""
    target = target.strip()
    if kind in (ChannelKind.SLACK, ChannelKind.WEBHOOK) and not target.startswith(("http://", "https://")):
        form.add_error("target", "A webhook needs an http(s) URL.")
    if kind == ChannelKind.EMAIL:
        validator = forms.EmailField()
        for address in target.split(","):
            try:
                validator.clean(address.strip())
            except forms.ValidationError:
                form.add_error("target", f"{address.strip() or '(empty)'} is not an e-mail address.")


class ChannelForm(forms.ModelForm):
    secret = forms.CharField(
        required=False, widget=forms.PasswordInput, help_text="Webhooks: used to sign each delivery (HMAC-SHA256)"
    )

    class Meta:
        model = NotificationChannel
        fields = ["organization", "name", "kind", "target"]
        help_texts = {"target": "Webhook URL, or comma-separated e-mail addresses"}

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "organization", forms.ModelChoiceField).queryset = organizations_where(
            user=user, action=Action.ORG_MANAGE
        )

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        _check_target(self, data.get("kind"), data.get("target") or "")
        return data


class ChannelEditForm(forms.Form):
    name = forms.CharField(max_length=200)
    target = forms.CharField(max_length=1000, help_text="Webhook URL, or comma-separated e-mail addresses")
    secret = forms.CharField(
        required=False, widget=forms.PasswordInput, help_text="Blank keeps the stored signing secret"
    )
    is_active = forms.BooleanField(required=False, label="Active", help_text="Paused channels get no new alerts")

    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def clean(self) -> dict[str, Any]:
        super().clean()
        if "target" in self.cleaned_data:
            _check_target(self, self.kind, self.cleaned_data["target"])
        return self.cleaned_data


class AlertFilterForm(forms.Form):
    kind = forms.ChoiceField(choices=[("", "All kinds"), *AlertKind.choices], required=False, label="Kind")
    state = forms.ChoiceField(
        choices=[("", "Open and acknowledged"), ("open", "Open"), ("acknowledged", "Acknowledged")],
        required=False,
        label="State",
    )
