"""Routing rules: which model serves a request, what happens on failure, and what is shadowed.

Rules belong to a project and are evaluated in ``position`` order by the data
plane (from its policy snapshot); the first rule whose conditions all match
decides. Conditions left empty match everything.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from apps.core.events import FEATURE_MAX, MODEL_MAX, REQUEST_ID_MAX, SHADOW_COST_DIGITS, SHADOW_COST_PLACES
from apps.core.patterns import Pattern, PatternError
from apps.core.request import MAX_TOKENS_BOUND


def validate_regex(value: str) -> None:
    """RE2 syntax (linear-time matching, see apps/core/patterns.py)."""
    try:
        Pattern(value)
    except PatternError as exc:
        raise ValidationError(f"Not a valid regular expression: {exc}.") from None


class RuleAction(models.TextChoices):
    ROUTE = "route", "Route to a model (first target; the rest are fallbacks)"
    SPLIT = "split", "Split traffic by weight (canary)"
    CASCADE = "cascade", "Cascade: cheap model first, escalate on low confidence"


class ToolsMatch(models.TextChoices):
    ANY = "any", "With or without tools"
    WITH = "with", "Only requests with tools"
    WITHOUT = "without", "Only requests without tools"


class ConfidenceAggregate(models.TextChoices):
    """How the first N answer tokens' probabilities become one confidence."""

    MIN = "min", "Lowest token probability"
    MEAN = "mean", "Mean token probability"
    JOINT = "joint", "Joint probability (product)"


# A chat history window keeps at least this many turns and at most this many (a turn: one message that
# is not a system or developer message).
HISTORY_TURNS_MIN, HISTORY_TURNS_MAX = 1, 200


class RoutingRule(models.Model):
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="routing_rules")
    name = models.CharField(max_length=100)
    position = models.PositiveIntegerField(default=0, help_text="Rules are tried in ascending order")
    is_active = models.BooleanField(default=True)

    match_models = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    match_features = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    match_end_users = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    match_api_key = models.ForeignKey("keys.ApiKey", null=True, blank=True, on_delete=models.CASCADE)
    min_prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    match_tools = models.CharField(max_length=10, choices=ToolsMatch.choices, default=ToolsMatch.ANY)
    match_regex = models.CharField(
        max_length=500, blank=True, validators=[validate_regex], help_text="Searched in the last user message"
    )

    action = models.CharField(max_length=10, choices=RuleAction.choices, default=RuleAction.ROUTE)
    cascade_threshold = models.DecimalField(
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.700"),
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text="Escalate when the cheap answer's confidence (0–1) is below this",
    )
    cascade_tokens = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(50)],
        help_text="Answer tokens the confidence looks at",
    )
    cascade_aggregate = models.CharField(
        max_length=10, choices=ConfidenceAggregate.choices, default=ConfidenceAggregate.MIN
    )
    cascade_escalate_new_labels = models.BooleanField(
        default=False, help_text="Also escalate when the cheap answer is not one of the known labels"
    )
    cascade_labels = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    shadow_percent = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        default=Decimal("0"),
        validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Percent of matched requests also sent to the shadow model",
    )
    shadow_confidence = models.BooleanField(
        default=False,
        help_text="Shadow calls ask for logprobs and record the answer's confidence as this rule's cascade "
        "settings would compute it (a cascade trial)",
    )
    shadow_history_turns = models.PositiveSmallIntegerField(
        null=True, blank=True,
        validators=[MinValueValidator(HISTORY_TURNS_MIN), MaxValueValidator(HISTORY_TURNS_MAX)],
        help_text="Shadow calls get only the system messages and the last N others (a history-window trial); "
        "a request the window would not shorten is not shadowed",
    )  # fmt: skip

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project", "position", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(action__in=RuleAction.values), name="rule_action_valid"),
            models.CheckConstraint(condition=Q(match_tools__in=ToolsMatch.values), name="rule_tools_valid"),
            models.CheckConstraint(
                condition=Q(cascade_threshold__gte=0) & Q(cascade_threshold__lte=1), name="rule_threshold_0_1"
            ),
            models.CheckConstraint(
                condition=Q(cascade_tokens__gte=1) & Q(cascade_tokens__lte=50), name="rule_cascade_tokens_1_50"
            ),
            models.CheckConstraint(
                condition=Q(shadow_percent__gte=0) & Q(shadow_percent__lte=100), name="rule_shadow_percent_0_100"
            ),
            models.CheckConstraint(
                condition=Q(min_prompt_tokens__isnull=True)
                | Q(max_prompt_tokens__isnull=True)
                | Q(min_prompt_tokens__lte=models.F("max_prompt_tokens")),
                name="rule_prompt_tokens_range",
                violation_error_message="The minimum prompt tokens cannot be above the maximum.",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class TargetRole(models.TextChoices):
    PRIMARY = "primary", "Primary"
    FALLBACK = "fallback", "Fallback"
    SHADOW = "shadow", "Shadow"


class RuleTarget(models.Model):
    """A model on a provider that a rule sends to.

    Primary targets: the one model of a route rule, the weighted models of a
    split, the cheap then the strong model of a cascade. Fallbacks are tried in
    order when the primary fails; the shadow target gets a sampled copy.
    """

    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="targets")
    role = models.CharField(max_length=10, choices=TargetRole.choices)
    position = models.PositiveSmallIntegerField(default=0)
    provider = models.ForeignKey("providers.Provider", on_delete=models.CASCADE, related_name="rule_targets")
    model = models.CharField(max_length=200)
    weight = models.PositiveIntegerField(default=1, help_text="Share of a split, relative to the other primaries")

    class Meta:
        ordering = ["rule", "role", "position", "id"]
        constraints = [models.CheckConstraint(condition=Q(role__in=TargetRole.values), name="target_role_valid")]

    def __str__(self) -> str:
        return f"{self.model} @ {self.provider_id}"


class ShadowComparison(models.Model):
    """One shadowed request: the app's answer and the shadow model's, side by side."""

    request_id = models.CharField(max_length=REQUEST_ID_MAX, unique=True)
    created_at = models.DateTimeField()
    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="shadow_comparisons")
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="+")
    primary_model = models.CharField(max_length=MODEL_MAX)
    shadow_model = models.CharField(max_length=MODEL_MAX)
    primary_latency_ms = models.PositiveIntegerField()
    shadow_latency_ms = models.PositiveIntegerField()
    primary_cost = models.DecimalField(max_digits=SHADOW_COST_DIGITS, decimal_places=SHADOW_COST_PLACES)
    shadow_cost = models.DecimalField(max_digits=SHADOW_COST_DIGITS, decimal_places=SHADOW_COST_PLACES)
    shadow_status = models.PositiveSmallIntegerField()
    exact_match = models.BooleanField()
    normalized_match = models.BooleanField()
    similarity = models.FloatField(null=True, blank=True, help_text="Cosine similarity of the two answers' embeddings")
    confidence = models.FloatField(
        null=True, blank=True, help_text="The shadow answer's confidence (a cascade trial's rule); null: not asked"
    )
    primary_text = models.TextField(blank=True)
    shadow_text = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["rule", "created_at"], name="shadow_rule_time")]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.primary_model} vs {self.shadow_model}"


class PrunePolicy(models.Model):
    """What the gateway trims from one feature's requests before they go upstream. Opt-in: no row, no pruning.

    It lives beside the routing rules because, like them, it decides what the provider is asked, not
    whether an answer is reused (the cache's concern): the gateway applies it right after validation,
    and a rule then routes the pruned request.

    - ``max_tokens_cap``: the most output a request may ask for; a larger ``max_tokens`` (or
      ``max_completion_tokens``) is lowered to it, and a request without one gets it. The opportunities
      report sizes it from observed use (completion tokens' p99 and a margin).
    - ``history_turns``: the system (and developer) messages and the last N other messages are sent;
      earlier turns are left out.
    """

    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="prune_policies")
    feature = models.CharField(max_length=FEATURE_MAX, blank=True, help_text="Blank: the whole project")
    cap_enabled = models.BooleanField(default=False)
    max_tokens_cap = models.PositiveIntegerField(
        default=1024, validators=[MinValueValidator(1), MaxValueValidator(MAX_TOKENS_BOUND)],
        help_text="Output tokens a request may ask for at most (see the opportunities report's suggestion)",
    )  # fmt: skip
    history_enabled = models.BooleanField(default=False)
    history_turns = models.PositiveSmallIntegerField(
        default=10, validators=[MinValueValidator(HISTORY_TURNS_MIN), MaxValueValidator(HISTORY_TURNS_MAX)],
        help_text="Messages kept after the system prompt (the latest ones)",
    )  # fmt: skip

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "feature"], name="one_prune_policy_per_slice"),
            models.CheckConstraint(
                condition=Q(max_tokens_cap__gte=1) & Q(max_tokens_cap__lte=MAX_TOKENS_BOUND), name="prune_cap_in_range"
            ),
            models.CheckConstraint(
                condition=Q(history_turns__gte=HISTORY_TURNS_MIN) & Q(history_turns__lte=HISTORY_TURNS_MAX),
                name="prune_history_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"pruning for {self.project}" + (f" / {self.feature}" if self.feature else "")
