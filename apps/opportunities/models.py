"""Trials: a recommendation tried on live traffic in shadow, then enabled once its measured quality clears
the target the lead set.

A ``Trial`` names the lever, the recommendation it came from and the parameters it tries (the semantic
cache's threshold floor, the cheaper model of a route or cascade). In ``shadow`` it changes nothing the app
sees: the gateway measures (``TrialSample`` for the semantic cache; the routing rule's ``ShadowComparison``
rows for a route, with the cheap answer's confidence for a cascade; for a chat-history window, the same
model asked with and without the earlier turns). ``enable`` changes the real policy through the cache and
routing services, so the audit log sees it.
"""

from __future__ import annotations

from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from apps.core.events import REQUEST_ID_MAX, SHADOW_COST_DIGITS, SHADOW_COST_PLACES

# The lowest prompt similarity a semantic trial looks at: below it, no threshold anyone would set.
SEMANTIC_FLOOR = Decimal("0.800")


class Lever(models.TextChoices):
    SEMANTIC_CACHE = "semantic_cache", "Semantic cache"
    ROUTE = "route", "Route to a cheaper model"
    CASCADE = "cascade", "Cascade"
    HISTORY_WINDOW = "history_window", "Chat-history window"


class TrialState(models.TextChoices):
    SHADOW = "shadow", "Shadow: measuring, the app sees nothing"
    ENABLED = "enabled", "Enabled: the policy is changed"
    STOPPED = "stopped", "Stopped"


class Trial(models.Model):
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="trials")
    lever = models.CharField(max_length=20, choices=Lever.choices)
    recommendation_id = models.CharField(max_length=100, help_text="The opportunity's id in the report")
    feature = models.CharField(max_length=100, blank=True)
    parameters = models.JSONField(default=dict, blank=True, help_text="What the trial tries (threshold, models)")
    state = models.CharField(max_length=10, choices=TrialState.choices, default=TrialState.SHADOW)
    quality_target = models.DecimalField(
        max_digits=5, decimal_places=4, default=Decimal("0.99"),
        validators=[MinValueValidator(Decimal("0.5")), MaxValueValidator(Decimal("1"))],
        help_text="Share of comparisons that must agree before the trial may be enabled",
    )  # fmt: skip
    min_samples = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(5), MaxValueValidator(100_000)],
        help_text="Comparisons needed before the measured quality counts",
    )  # fmt: skip
    daily_cap_usd = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, validators=[MinValueValidator(Decimal("0"))],
        help_text="What the trial's own calls may spend per UTC day; blank: no cap",
    )  # fmt: skip
    trial_spend_usd = models.DecimalField(
        max_digits=SHADOW_COST_DIGITS, decimal_places=SHADOW_COST_PLACES, default=Decimal(0)
    )
    predicted_savings_usd = models.DecimalField(
        max_digits=24, decimal_places=6, default=Decimal(0), help_text="Per window of the report it came from"
    )
    predicted_window_days = models.PositiveSmallIntegerField(default=7)
    # The routing rule the trial wrote (a route or cascade trial), so enabling changes that rule and nothing else.
    rule = models.ForeignKey("routing.RoutingRule", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Counted as the comparisons arrive; saving it announces a policy change, so that gateways learn the
    # opposites a new disagreement may teach the cache guard.
    disagreements = models.PositiveIntegerField(default=0)
    stopped_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    enabled_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(lever__in=Lever.values), name="trial_lever_valid"),
            models.CheckConstraint(condition=Q(state__in=TrialState.values), name="trial_state_valid"),
            models.CheckConstraint(
                condition=Q(quality_target__gte=Decimal("0.5")) & Q(quality_target__lte=1), name="trial_target_range"
            ),
            models.CheckConstraint(
                condition=Q(daily_cap_usd__isnull=True) | Q(daily_cap_usd__gte=0), name="trial_cap_not_negative"
            ),
            # One live trial per recommendation: applying twice names the same trial.
            models.UniqueConstraint(
                fields=["project", "recommendation_id"],
                condition=~Q(state="stopped"),
                name="one_live_trial_per_recommendation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_lever_display()} trial on {self.project} ({self.state})"


class TrialSample(models.Model):
    """One would-be semantic hit, answered upstream anyway: the cached answer against the fresh one."""

    trial = models.ForeignKey(Trial, on_delete=models.CASCADE, related_name="samples")
    request_id = models.CharField(max_length=REQUEST_ID_MAX)
    created_at = models.DateTimeField()
    prompt_similarity = models.FloatField(help_text="Of the request's prompt to the stored one")
    guard_agrees = models.BooleanField(help_text="The cache guard would have let the hit through")
    normalized_match = models.BooleanField(help_text="The two answers agree once normalised")
    answer_similarity = models.FloatField(null=True, blank=True)
    # Kept only for disagreements, capped: what a person (and the guard) learns from.
    prompt_text = models.TextField(blank=True)
    cached_prompt_text = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["trial", "request_id"], name="one_sample_per_request")]
        indexes = [models.Index(fields=["trial", "prompt_similarity"], name="trial_sample_bin")]

    def __str__(self) -> str:
        return f"{self.request_id} @ {self.prompt_similarity:.3f}"
