from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.db.models import QuerySet

from apps.deployments.breakeven import Assumptions
from apps.deployments.models import Deployment

# Fields people fill in; the rest belong to the worker.
DEPLOYMENT_FIELDS = [
    "name", "served_model_name", "model_path", "gpu_type", "gpu_count", "tensor_parallel_size", "max_model_len",
    "quantization", "port", "hourly_cost_usd", "throughput_tokens_per_s",
]  # fmt: skip


class DeploymentForm(forms.ModelForm):
    class Meta:
        model = Deployment
        fields = DEPLOYMENT_FIELDS


class BreakEvenForm(forms.Form):
    """The editable assumptions; typed figures override the chosen deployment's."""

    days = forms.IntegerField(min_value=1, max_value=90, initial=30, help_text="Ledger window to look at")
    deployment = forms.ModelChoiceField(queryset=Deployment.objects.none(), required=False, empty_label="(none)")
    hourly_cost_usd = forms.DecimalField(
        required=False, min_value=Decimal(0), max_digits=10, decimal_places=4, label="Hourly cost (USD)",
        help_text="Overrides the deployment's",
    )  # fmt: skip
    throughput_tokens_per_s = forms.DecimalField(
        required=False, min_value=Decimal("0.01"), max_digits=12, decimal_places=2, label="Throughput (output tok/s)",
        help_text="Overrides the deployment's",
    )  # fmt: skip
    utilisation_percent = forms.DecimalField(
        min_value=Decimal(1), max_value=Decimal(100), max_digits=5, decimal_places=2, initial=Decimal(50),
        label="Utilisation %", help_text="Share of the measured throughput used on average",
    )  # fmt: skip

    def __init__(self, data: Any, *, deployments: QuerySet[Deployment]) -> None:
        """``data=None``: a first visit with nothing to compare with yet, shown empty rather than in error."""
        if data is None:
            super().__init__()
        else:
            values = {name: field.initial for name, field in self.base_fields.items() if field.initial is not None}
            values.update({k: v for k, v in data.items() if v not in ("", None)})
            super().__init__(values)
        field = self.fields["deployment"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = deployments

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        deployment: Deployment | None = data.get("deployment")
        if data.get("hourly_cost_usd") is None:
            data["hourly_cost_usd"] = deployment.hourly_cost_usd if deployment else None
        if data.get("throughput_tokens_per_s") is None:
            data["throughput_tokens_per_s"] = deployment.throughput_tokens_per_s if deployment else None
        if data["hourly_cost_usd"] is None:
            self.add_error("hourly_cost_usd", "Pick a deployment or type an hourly cost.")
        if data["throughput_tokens_per_s"] is None:
            self.add_error("throughput_tokens_per_s", "Pick a deployment with a measured throughput or type one.")
        return data

    def assumptions(self) -> Assumptions:
        data = self.cleaned_data
        return Assumptions(
            days=data["days"],
            hourly_cost_usd=data["hourly_cost_usd"],
            throughput_tokens_per_s=data["throughput_tokens_per_s"],
            utilisation_percent=data["utilisation_percent"],
            deployment_name=data["deployment"].name if data.get("deployment") else "",
        )
