"""Self-hosted model deployments (vLLM servers on GPU workers) and what their running time cost."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import F, Q

from apps.providers.models import MONEY

# What reaches ``vllm serve``'s command line is a grammar, not free text: a Hugging Face id
# ("org/name", "name") or an absolute path on the GPU host, and names made of the same safe
# characters. Nothing may start with "-" (it would be read as an option), and paths have no "..".
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._+-]*"
MODEL_PATH_RE = re.compile(rf"^(?:/?{_SEGMENT}(?:/{_SEGMENT})*)$")
SERVED_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:/+-]*$")


def validate_model_path(value: str) -> None:
    if not MODEL_PATH_RE.fullmatch(value) or ".." in value.split("/"):
        raise ValidationError(
            "Use a Hugging Face id (org/name) or an absolute path (/models/name): letters, digits and . _ + - "
            "between slashes, not starting with '-', no '..'."
        )


validate_served_name = RegexValidator(
    SERVED_NAME_RE,
    "Use letters, digits and . _ : / + - (not starting with '-' or '.').",
)


class Quantization(models.TextChoices):
    NONE = "none", "None (full precision)"
    AWQ = "awq", "AWQ"
    GPTQ = "gptq", "GPTQ"
    FP8 = "fp8", "FP8"


class DeploymentStatus(models.TextChoices):
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    FAILED = "failed", "Failed"
    STOPPING = "stopping", "Stopping"


# States in which a server process may exist and burn GPU time.
ACTIVE_STATUSES = frozenset({DeploymentStatus.STARTING, DeploymentStatus.RUNNING, DeploymentStatus.STOPPING})


class Deployment(models.Model):
    """One model served by ``vllm serve`` on a GPU worker, registered as a provider while it runs."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    served_model_name = models.CharField(
        max_length=200, validators=[validate_served_name], help_text="The model name apps ask for"
    )
    model_path = models.CharField(
        max_length=500,
        validators=[validate_model_path],
        help_text="Hugging Face id or an absolute path on the GPU host",
    )
    gpu_type = models.CharField(max_length=100, help_text="e.g. H100 80GB")
    gpu_count = models.PositiveSmallIntegerField(default=1)
    tensor_parallel_size = models.PositiveSmallIntegerField(default=1)
    max_model_len = models.PositiveIntegerField(default=8192, help_text="Longest prompt + answer, in tokens")
    quantization = models.CharField(max_length=10, choices=Quantization.choices, default=Quantization.NONE)
    port = models.PositiveIntegerField(default=8000, help_text="Port of the server on its GPU host")
    hourly_cost_usd = models.DecimalField(max_digits=10, decimal_places=4, help_text="All its GPUs, per hour")
    throughput_tokens_per_s = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Measured output tokens per second at full load (sets its price per token)",
    )
    status = models.CharField(max_length=10, choices=DeploymentStatus.choices, default=DeploymentStatus.STOPPED)
    base_url = models.CharField(max_length=500, blank=True, help_text="…/v1 while running")
    provider = models.ForeignKey(
        "providers.Provider", on_delete=models.SET_NULL, null=True, blank=True, related_name="deployments"
    )
    # Where the server process lives, so stop and supervision signal the right one.
    worker_host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    health_failures = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="deployment_name_unique_in_org"),
            models.CheckConstraint(condition=Q(gpu_count__gte=1), name="deployment_gpus_at_least_one"),
            # vLLM runs tensor_parallel_size × pipeline stages on gpu_count GPUs.
            models.CheckConstraint(
                condition=Q(tensor_parallel_size__gte=1) & Q(tensor_parallel_size__lte=F("gpu_count")),
                name="deployment_tp_within_gpus",
            ),
            models.CheckConstraint(condition=Q(max_model_len__gte=1), name="deployment_max_model_len_positive"),
            models.CheckConstraint(condition=Q(port__gte=1) & Q(port__lte=65535), name="deployment_port_valid"),
            # One server per port: an organisation's deployments share its GPU hosts, and a server that
            # runs (or is starting or stopping) holds its port on the host its worker recorded.
            models.UniqueConstraint(
                fields=["organization", "port"],
                name="deployment_port_unique_in_org",
                violation_error_message="Another deployment of this organisation already uses this port.",
            ),
            models.UniqueConstraint(
                fields=["worker_host", "port"],
                condition=Q(status__in=["starting", "running", "stopping"]) & ~Q(worker_host=""),
                name="deployment_port_unique_per_host",
            ),
            models.CheckConstraint(condition=Q(hourly_cost_usd__gte=0), name="deployment_hourly_cost_not_negative"),
            models.CheckConstraint(
                condition=Q(throughput_tokens_per_s__isnull=True) | Q(throughput_tokens_per_s__gt=0),
                name="deployment_throughput_positive",
            ),
            models.CheckConstraint(condition=Q(status__in=DeploymentStatus.values), name="deployment_status_valid"),
            models.CheckConstraint(
                condition=Q(quantization__in=Quantization.values), name="deployment_quantization_valid"
            ),
            models.CheckConstraint(
                condition=~Q(status=DeploymentStatus.RUNNING) | ~Q(base_url=""),
                name="deployment_running_has_base_url",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.served_model_name})"

    def clean(self) -> None:
        if self.gpu_count and self.tensor_parallel_size and self.gpu_count % self.tensor_parallel_size:
            raise ValidationError(
                {"tensor_parallel_size": "The GPU count must be a multiple of the tensor parallel size."}
            )

    @property
    def pipeline_parallel_size(self) -> int:
        return max(self.gpu_count // self.tensor_parallel_size, 1)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


class DeploymentRun(models.Model):
    """One start-to-stop stretch of a deployment: what it used and cost, at the hourly cost of the day."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="runs")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    gpu_count = models.PositiveSmallIntegerField()
    hourly_cost_usd = models.DecimalField(max_digits=10, decimal_places=4)
    gpu_hours = models.DecimalField(max_digits=14, decimal_places=6, null=True, blank=True)
    cost = models.DecimalField(**MONEY, null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=DeploymentStatus.choices, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"], condition=Q(ended_at__isnull=True), name="one_open_run_per_deployment"
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=F("started_at")), name="run_ends_after_start"
            ),
            models.CheckConstraint(
                condition=(Q(ended_at__isnull=True) & Q(cost__isnull=True) & Q(gpu_hours__isnull=True))
                | (Q(ended_at__isnull=False) & Q(cost__gte=0) & Q(gpu_hours__gte=0)),
                name="run_cost_recorded_when_ended",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment} from {self.started_at:%Y-%m-%d %H:%M}"
