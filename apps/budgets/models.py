"""Budgets, rate limits, alerts and where alerts are sent."""

from __future__ import annotations

import zoneinfo
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from apps.providers import crypto
from apps.tenancy.permissions import Placement, placement


class BudgetScope(models.TextChoices):
    ORGANIZATION = "organization", "Organisation"
    TEAM = "team", "Team"
    PROJECT = "project", "Project"
    KEY = "key", "API key"
    FEATURE = "feature", "Feature tag"
    END_USER = "end_user", "End user"


class BudgetPeriod(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly (Monday)"
    MONTHLY = "monthly", "Monthly"
    ONE_OFF = "one_off", "One-off / prepaid"


class BudgetMode(models.TextChoices):
    HARD = "hard", "Hard: block requests over the limit"
    SOFT = "soft", "Soft: alert only"
    SHADOW = "shadow", "Shadow: report what would have been blocked"


def _validate_timezone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not a known time zone (e.g. UTC, Europe/Paris)") from None


def _validate_thresholds(value: list[int]) -> None:
    if sorted(set(value)) != list(value):
        raise ValidationError("alert thresholds must be ascending and distinct")


class Budget(models.Model):
    """A spending limit on one slice of traffic for one period.

    Which slice: ``scope`` plus the matching reference (team, project, key, or
    feature / end-user text, optionally narrowed to a project).
    """

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=200)
    scope = models.CharField(max_length=20, choices=BudgetScope.choices)
    team = models.ForeignKey("tenancy.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    api_key = models.ForeignKey("keys.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    feature = models.CharField(max_length=100, blank=True)
    end_user = models.CharField(max_length=200, blank=True)

    amount_usd = models.DecimalField(max_digits=14, decimal_places=4, validators=[MinValueValidator(0)])
    period = models.CharField(max_length=10, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY)
    timezone = models.CharField(max_length=64, default="UTC", validators=[_validate_timezone])
    starts_at = models.DateTimeField(null=True, blank=True, help_text="One-off budgets count spend from here")
    mode = models.CharField(max_length=10, choices=BudgetMode.choices, default=BudgetMode.HARD)
    alert_thresholds = ArrayField(
        models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(1000)]),
        default=list,
        blank=True,
        validators=[_validate_thresholds],
        help_text="Percent of the amount at which to alert, e.g. 50, 80, 100",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount_usd__gte=0), name="budget_amount_not_negative"),
            models.CheckConstraint(condition=Q(scope__in=BudgetScope.values), name="budget_scope_valid"),
            models.CheckConstraint(condition=Q(period__in=BudgetPeriod.values), name="budget_period_valid"),
            models.CheckConstraint(condition=Q(mode__in=BudgetMode.values), name="budget_mode_valid"),
            models.CheckConstraint(condition=~Q(scope="team") | Q(team__isnull=False), name="team_budget_names_team"),
            models.CheckConstraint(
                condition=~Q(scope="project") | Q(project__isnull=False), name="project_budget_names_project"
            ),
            models.CheckConstraint(condition=~Q(scope="key") | Q(api_key__isnull=False), name="key_budget_names_key"),
            models.CheckConstraint(condition=~Q(scope="feature") | ~Q(feature=""), name="feature_budget_names_feature"),
            models.CheckConstraint(
                condition=~Q(scope="end_user") | ~Q(end_user=""), name="end_user_budget_names_end_user"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def placement(self) -> Placement:
        """Where the budget sits in the organisation chart: its team's, key's or project's place, else the
        organisation's (``apps.tenancy.permissions``)."""
        if self.scope == BudgetScope.TEAM and self.team is not None:
            return placement(self.team)
        if self.scope == BudgetScope.KEY and self.api_key is not None:
            return placement(self.api_key.project)
        if self.scope != BudgetScope.ORGANIZATION and self.project is not None:
            return placement(self.project)
        return Placement(organization_id=self.organization_id)

    def clean(self) -> None:
        required: dict[str, tuple[str, str | int | None]] = {
            BudgetScope.TEAM: ("team", self.team_id),
            BudgetScope.PROJECT: ("project", self.project_id),
            BudgetScope.KEY: ("api_key", self.api_key_id),
            BudgetScope.FEATURE: ("feature", self.feature),
            BudgetScope.END_USER: ("end_user", self.end_user),
        }
        if self.scope in required and not required[self.scope][1]:
            field, _ = required[self.scope]
            raise ValidationError({field: f"A {self.get_scope_display().lower()} budget needs this."})
        if self.period == BudgetPeriod.ONE_OFF and self.starts_at is None:
            raise ValidationError({"starts_at": "A one-off budget needs a start."})


class BudgetPeriodRecord(models.Model):
    """Spend of one budget in one closed (or the current) period: the history."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="periods")
    period_start = models.DateTimeField()
    period_end = models.DateTimeField(null=True, blank=True)
    limit_usd = models.DecimalField(max_digits=14, decimal_places=4)
    spent_usd = models.DecimalField(max_digits=18, decimal_places=8)
    closed = models.BooleanField(default=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="one_record_per_budget_period")]

    def __str__(self) -> str:
        return f"{self.budget} from {self.period_start:%Y-%m-%d}"


class RateLimit(models.Model):
    """Requests/min, tokens/min and concurrent requests for a project or one key."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="rate_limits")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="rate_limits")
    api_key = models.ForeignKey("keys.ApiKey", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "api_key"], name="one_rate_limit_per_scope", nulls_distinct=False
            ),
        ]

    def __str__(self) -> str:
        return f"limits for {self.api_key or self.project}"


class ChannelKind(models.TextChoices):
    SLACK = "slack", "Slack-compatible webhook"
    WEBHOOK = "webhook", "Webhook (HMAC-signed)"
    EMAIL = "email", "E-mail"


class NotificationChannel(crypto.EncryptedSecret, models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="channels")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    target = models.CharField(max_length=1000, help_text="Webhook URL, or comma-separated e-mail addresses")
    secret_encrypted = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(kind__in=ChannelKind.values), name="channel_kind_valid")]

    def __str__(self) -> str:
        return self.name


class AlertKind(models.TextChoices):
    BUDGET_THRESHOLD = "budget_threshold", "Budget threshold"
    BUDGET_BLOCKING = "budget_blocking", "Hard budget is blocking requests"
    SPEND_ANOMALY = "spend_anomaly", "Spend-rate anomaly"
    WOULD_BLOCK = "would_block", "Shadow budget would have blocked"
    DEAD_LETTER = "dead_letter", "Events that could not be stored"
    SECRET_UNREADABLE = "secret_unreadable", "A stored secret cannot be decrypted"
    POLICY_STALE = "policy_stale", "Gateways cannot load the current policy"


class Alert(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="alerts")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    budget = models.ForeignKey(Budget, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts")
    kind = models.CharField(max_length=20, choices=AlertKind.choices)
    # One alert per situation: e.g. "budget:12:2026-11-01:80" or "anomaly:project:3:2026-11-24T10".
    dedup_key = models.CharField(max_length=200, unique=True)
    title = models.CharField(max_length=300)
    message = models.TextField()
    link = models.CharField(max_length=500, blank=True, help_text="Dashboard path to the ledger slice")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True, help_text="When someone said they have seen it")
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return self.title

    def placement(self) -> Placement:
        """Where the alert sits: its project's or budget's place, else the organisation's."""
        if self.project is not None:
            return placement(self.project)
        if self.budget is not None:
            return self.budget.placement()
        return Placement(organization_id=self.organization_id)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"


class AlertDelivery(models.Model):
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["alert", "channel"], name="one_delivery_per_channel")]

    def __str__(self) -> str:
        return f"{self.alert} → {self.channel} ({self.status})"


class AnomalyRule(models.Model):
    """How sensitive spend-rate alerts are for one project (or the whole organisation)."""

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="anomaly_rules")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    multiple = models.DecimalField(
        max_digits=6, decimal_places=2, default=2, validators=[MinValueValidator(1)],
        help_text="Alert when the recent rate exceeds the trailing baseline this many times",
    )  # fmt: skip
    min_usd_per_hour = models.DecimalField(
        max_digits=10, decimal_places=4, default=Decimal("0.01"),
        help_text="Ignore rates below this, so tiny projects don't page anyone",
    )  # fmt: skip
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "project"], name="one_anomaly_rule_per_scope", nulls_distinct=False
            ),
            models.CheckConstraint(condition=Q(multiple__gte=1), name="anomaly_multiple_at_least_one"),
        ]

    def __str__(self) -> str:
        return f"anomaly rule for {self.project or self.organization}"
