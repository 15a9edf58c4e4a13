"""Response cache: per-project policy and the entries semantic search runs over."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from pgvector.django import HnswIndex, VectorField

from apps.core.events import CACHE_KEY_MAX, LEDGER_COST_DIGITS, LEDGER_COST_PLACES, MODEL_MAX, NAMESPACE_MAX
from apps.core.patterns import MAX_PATTERNS, Pattern, PatternError

EMBEDDING_DIMENSIONS = 384  # all-MiniLM-L6-v2


class Eviction(models.TextChoices):
    LFU = "lfu", "Least frequently used"
    LRU = "lru", "Least recently used"


def _validate_patterns(patterns: list[str]) -> None:
    """``re:`` patterns use RE2 syntax (linear-time matching, see apps/core/patterns.py)."""
    if len(patterns) > MAX_PATTERNS:
        raise ValidationError(f"At most {MAX_PATTERNS} patterns per policy.")
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                Pattern(pattern[3:], ignore_case=True)
            except PatternError as exc:
                raise ValidationError(f"{pattern!r} is not a valid regular expression: {exc}") from None


class CachePolicy(models.Model):
    """How one project (or one feature of it) uses the cache. No policy: no caching."""

    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="cache_policies")
    feature = models.CharField(max_length=100, blank=True, help_text="Blank: the whole project")
    exact_enabled = models.BooleanField(default=True)
    semantic_enabled = models.BooleanField(default=False)
    similarity_threshold = models.DecimalField(
        max_digits=4, decimal_places=3, default=Decimal("0.950"),
        validators=[MinValueValidator(Decimal("0.5")), MaxValueValidator(Decimal("1"))],
        help_text="Cosine similarity a stored prompt must reach to be served (see calibrate_cache)",
    )  # fmt: skip
    ttl_seconds = models.PositiveIntegerField(default=3600, validators=[MinValueValidator(1)])
    max_entries = models.PositiveIntegerField(default=10_000, validators=[MinValueValidator(1)])
    eviction = models.CharField(max_length=3, choices=Eviction.choices, default=Eviction.LFU)
    share_across_users = models.BooleanField(
        default=False,
        help_text="Off: an answer is served only to the end user (X-End-User or `user`) it was stored for. "
        "Turn on only where prompts carry no personal context.",
    )
    deny_patterns = ArrayField(
        models.CharField(max_length=500), default=list, blank=True, validators=[_validate_patterns],
        help_text="Prompts starting with one of these (case-insensitive), or matching 're:REGEX', bypass the cache",
    )  # fmt: skip

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "feature"], name="one_cache_policy_per_slice"),
            models.CheckConstraint(
                condition=Q(similarity_threshold__gte=Decimal("0.5")) & Q(similarity_threshold__lte=1),
                name="cache_threshold_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"cache policy for {self.project}" + (f" / {self.feature}" if self.feature else "")


class CacheEntry(models.Model):
    """One cached answer. Redis serves exact hits; this row is for semantic search, listing and eviction."""

    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="+")
    namespace = models.CharField(max_length=NAMESPACE_MAX, blank=True)
    exact_key = models.CharField(max_length=CACHE_KEY_MAX)
    fingerprint = models.CharField(max_length=CACHE_KEY_MAX, help_text="What must match for an answer to be reusable")
    model = models.CharField(max_length=MODEL_MAX)
    prompt_text = models.TextField(help_text="The text that was embedded")
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS, null=True)
    response = models.JSONField()
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=LEDGER_COST_DIGITS, decimal_places=LEDGER_COST_PLACES, default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    last_hit_at = models.DateTimeField(null=True, blank=True)
    hit_count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "namespace", "exact_key"], name="one_entry_per_exact_key"),
        ]
        indexes = [
            models.Index(fields=["project", "namespace", "fingerprint"], name="cache_lookup"),
            HnswIndex(
                name="cache_embedding_hnsw",
                fields=["embedding"],
                m=16,
                ef_construction=64,
                opclasses=["vector_cosine_ops"],
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model}: {self.prompt_text[:60]}"
