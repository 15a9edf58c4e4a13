"""The rule form: conditions and action as fields, targets as lines ("gpt-4o-mini @ openai 90")."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from apps.keys.models import ApiKey
from apps.routing.models import RoutingRule, RuleAction, RuleTarget, TargetRole
from apps.routing.services import TargetSpec, targets_parse, targets_text
from apps.tenancy.models import Project

TARGET_HELP = "One per line: model, optionally @ provider, optionally a weight (splits). E.g. gpt-4o-mini @ openai 90"


class RuleForm(forms.ModelForm):
    primaries = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        label="Models",
        help_text="Route: one model (empty keeps the requested one). Split: two or more with weights. "
        "Cascade: the cheap model, then the strong one.",
    )
    fallbacks = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}), required=False, help_text="Tried in order on errors and timeouts"
    )
    shadow = forms.CharField(
        required=False,
        label="Shadow model",
        help_text="One model, optionally @ provider, that gets a sampled copy to compare. E.g. gpt-4o-mini @ openai",
    )

    class Meta:
        model = RoutingRule
        fields = [
            "name", "is_active", "match_models", "match_features", "match_end_users", "match_api_key",
            "min_prompt_tokens", "max_prompt_tokens", "match_tools", "match_regex", "action", "cascade_threshold",
            "cascade_tokens", "cascade_aggregate", "cascade_escalate_new_labels", "cascade_labels", "shadow_percent",
        ]  # fmt: skip
        labels = {
            "match_models": "When the model asked for is",
            "match_features": "When the feature is",
            "match_end_users": "When the end user is",
            "match_api_key": "When the API key is",
            "match_tools": "Tools",
            "match_regex": "When the last user message matches",
        }
        help_texts = {
            "match_models": "Comma-separated; empty matches any",
            "match_features": "Comma-separated; empty matches any",
            "match_end_users": "Comma-separated; empty matches any",
            "cascade_labels": "Comma-separated answers already known to be valid",
        }

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        # Cascade settings only for a cascade (static/js/app.js reads data-show-when).
        for name in ("cascade_threshold", "cascade_tokens", "cascade_aggregate", "cascade_escalate_new_labels",
                     "cascade_labels"):  # fmt: skip
            self.fields[name].widget.attrs["data-show-when"] = f"action={RuleAction.CASCADE}"
        key_field = self.fields["match_api_key"]
        assert isinstance(key_field, forms.ModelChoiceField)
        key_field.queryset = ApiKey.objects.filter(project=project, revoked_at__isnull=True)
        if self.instance.pk and not self.is_bound:
            targets = list(self.instance.targets.select_related("provider"))
            for role, name in ((TargetRole.PRIMARY, "primaries"), (TargetRole.FALLBACK, "fallbacks")):
                self.initial[name] = targets_text([t for t in targets if t.role == role])
            self.initial["shadow"] = targets_text([t for t in targets if t.role == TargetRole.SHADOW])
        self.targets: dict[str, list[TargetSpec]] = {}

    def _targets(self, name: str) -> list[TargetSpec]:
        try:
            return targets_parse(project=self.project, text=self.cleaned_data.get(name) or "")
        except ValidationError as exc:
            self.add_error(name, exc)
            return []

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        self.targets = {name: self._targets(name) for name in ("primaries", "fallbacks", "shadow")}
        return data

    def rule_fields(self) -> dict[str, Any]:
        return {name: self.cleaned_data[name] for name in self.Meta.fields}


def target_rows(rule: RoutingRule) -> dict[str, list[RuleTarget]]:
    """A rule's prefetched targets by role, for display."""
    rows: dict[str, list[RuleTarget]] = {role: [] for role in TargetRole.values}
    for target in rule.targets.all():
        rows[target.role].append(target)
    return rows
