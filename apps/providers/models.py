"""Upstream providers, the models they serve, and what those models cost."""

from __future__ import annotations

from decimal import Decimal
from typing import TypedDict
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from apps.core.catalog import FACTOR_MAX, FACTOR_MIN
from apps.core.pricing import MTOK, TIER_FLEX, TIER_PRIORITY, LongContext, PriceRow, TierRates, token_cost
from apps.providers import crypto


def validate_base_url(value: str) -> None:
    """http(s) with a host; unlike URLField, single-label hosts (``http://vllm:8000/v1``) are fine."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL with a host, e.g. https://api.openai.com/v1.")
    try:
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise ValidationError("The port in this URL is not a number.") from None


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, …)"
    SIMULATED = "simulated", "Simulated upstream (bundled)"
    ANTHROPIC = "anthropic", "Anthropic (Messages API)"
    SIMULATED_ANTHROPIC = "simulated_anthropic", "Simulated Anthropic upstream (bundled)"


# Who publishes the models a provider of each kind serves; an OpenAI-compatible server's is its own name.
KIND_VENDORS = {
    ProviderKind.OPENAI: "OpenAI",
    ProviderKind.SIMULATED: "OpenAI",
    ProviderKind.ANTHROPIC: "Anthropic",
    ProviderKind.SIMULATED_ANTHROPIC: "Anthropic",
}


class Provider(crypto.EncryptedSecret, models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=30, choices=ProviderKind.choices)
    # Base URL including the version path, e.g. https://api.openai.com/v1 or http://vllm:8000/v1
    base_url = models.CharField(max_length=500, validators=[validate_base_url])
    secret_encrypted = models.TextField(blank=True)
    is_active = models.BooleanField(default=True)
    # Off for a server without /v1/responses: Responses requests go to it as Chat Completions, translated
    # (apps.core.responses_chat), and the gateway keeps their conversations. Anthropic kinds never speak it.
    responses_api = models.BooleanField(
        default=True, verbose_name="Speaks the Responses API", help_text="Off: /v1/responses is translated to chat"
    )
    # Resilience; empty means the gateway's defaults (GATEWAY_RETRIES, GATEWAY_UPSTREAM_*_TIMEOUT_SECONDS).
    max_retries = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Retries before falling back")
    connect_timeout_seconds = models.FloatField(null=True, blank=True)
    first_byte_timeout_seconds = models.FloatField(
        null=True, blank=True, help_text="Also the longest silence allowed inside a stream"
    )
    total_timeout_seconds = models.FloatField(null=True, blank=True, help_text="Whole non-streamed answer")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="provider_name_unique_in_org"),
            models.CheckConstraint(
                condition=(Q(connect_timeout_seconds__isnull=True) | Q(connect_timeout_seconds__gt=0))
                & (Q(first_byte_timeout_seconds__isnull=True) | Q(first_byte_timeout_seconds__gt=0))
                & (Q(total_timeout_seconds__isnull=True) | Q(total_timeout_seconds__gt=0)),
                name="provider_timeouts_positive",
            ),
            models.CheckConstraint(
                condition=Q(max_retries__isnull=True) | Q(max_retries__lte=10), name="provider_retries_at_most_10"
            ),
            models.CheckConstraint(condition=Q(kind__in=ProviderKind.values), name="provider_kind_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def vendor(self) -> str:
        return KIND_VENDORS.get(self.kind, self.name)  # type: ignore[call-overload]


class DecimalSpec(TypedDict):
    """Precision for a ``DecimalField``, shared by every field that holds the same kind of amount."""

    max_digits: int
    decimal_places: int


class FactorBounds(TypedDict):
    min_value: Decimal
    max_value: Decimal


MONEY: DecimalSpec = {"max_digits": 14, "decimal_places": 6}
# A long-context multiplier's column; what the form and the API accept is bounded as the catalogue bounds it.
FACTOR: DecimalSpec = {"max_digits": 6, "decimal_places": 3}
FACTOR_BOUNDS: FactorBounds = {"min_value": FACTOR_MIN, "max_value": FACTOR_MAX}


class Price(models.Model):
    """USD per 1M tokens for one model at one provider, from a date on."""

    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="prices")
    model = models.CharField(max_length=200)
    input_per_mtok = models.DecimalField(**MONEY)
    cached_input_per_mtok = models.DecimalField(**MONEY)
    output_per_mtok = models.DecimalField(**MONEY, default=Decimal("0"))
    # Prompt tokens written to the provider's prompt cache (Anthropic bills them above the input price);
    # empty: writes cost the input price.
    cache_write_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    batch_input_per_mtok = models.DecimalField(**MONEY)
    batch_output_per_mtok = models.DecimalField(**MONEY, default=Decimal("0"))
    # Flex and priority tiers where the provider offers them (empty: billed at the standard prices).
    flex_input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    flex_cached_input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    flex_output_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    priority_input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    priority_cached_input_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    priority_output_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    # Where a provider prices reasoning tokens apart from output (empty: billed as output).
    reasoning_per_mtok = models.DecimalField(**MONEY, null=True, blank=True)
    # A long-context rate (``apps.core.pricing.LongContext``): a request whose prompt has more than
    # ``long_context_above_tokens`` tokens is billed whole at input x input factor, output x output factor.
    # Empty: the model has none.
    long_context_above_tokens = models.PositiveIntegerField(null=True, blank=True)
    long_context_input_factor = models.DecimalField(**FACTOR, null=True, blank=True)
    long_context_output_factor = models.DecimalField(**FACTOR, null=True, blank=True)
    effective_from = models.DateField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["provider", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from"], name="one_price_per_model_and_date"
            ),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0)
                & Q(cached_input_per_mtok__gte=0)
                & Q(output_per_mtok__gte=0)
                & Q(batch_input_per_mtok__gte=0)
                & Q(batch_output_per_mtok__gte=0)
                & (Q(cache_write_per_mtok__isnull=True) | Q(cache_write_per_mtok__gte=0)),
                name="prices_not_negative",
            ),
            models.CheckConstraint(
                condition=(Q(flex_input_per_mtok__isnull=True) | Q(flex_input_per_mtok__gte=0))
                & (Q(flex_cached_input_per_mtok__isnull=True) | Q(flex_cached_input_per_mtok__gte=0))
                & (Q(flex_output_per_mtok__isnull=True) | Q(flex_output_per_mtok__gte=0))
                & (Q(priority_input_per_mtok__isnull=True) | Q(priority_input_per_mtok__gte=0))
                & (Q(priority_cached_input_per_mtok__isnull=True) | Q(priority_cached_input_per_mtok__gte=0))
                & (Q(priority_output_per_mtok__isnull=True) | Q(priority_output_per_mtok__gte=0))
                & (Q(reasoning_per_mtok__isnull=True) | Q(reasoning_per_mtok__gte=0)),
                name="tier_prices_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(
                    long_context_above_tokens__isnull=True,
                    long_context_input_factor__isnull=True,
                    long_context_output_factor__isnull=True,
                )
                | Q(
                    long_context_above_tokens__isnull=False,
                    long_context_input_factor__gte=1,
                    long_context_output_factor__gte=1,
                ),
                name="long_context_whole_and_not_a_discount",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} @ {self.provider} from {self.effective_from}"

    def tier_rates(self) -> dict[str, TierRates]:
        """The flex and priority rates this row has (a tier needs all three of its prices)."""
        tiers = {}
        for tier in (TIER_FLEX, TIER_PRIORITY):
            rates = [getattr(self, f"{tier}_{name}_per_mtok") for name in ("input", "cached_input", "output")]
            if all(rate is not None for rate in rates):
                tiers[tier] = TierRates(*rates)
        return tiers

    def long_context(self) -> LongContext | None:
        if self.long_context_above_tokens is None:
            return None
        assert self.long_context_input_factor is not None and self.long_context_output_factor is not None
        return LongContext(
            self.long_context_above_tokens, self.long_context_input_factor, self.long_context_output_factor
        )

    def long_context_text(self) -> str:
        """The long-context rate in words, for the prices table ("" when the model has none)."""
        long = self.long_context()
        if long is None:
            return ""
        factors = (f"{factor.normalize():f}" for factor in (long.input_factor, long.output_factor))
        return "over {:,} input tokens: input ×{}, output ×{}".format(long.above, *factors)

    def row(self) -> PriceRow:
        """This price as the gateway's snapshot holds it (every tier and token class, per token)."""
        return PriceRow.per_mtok(
            effective_from=self.effective_from,
            input_per_mtok=self.input_per_mtok,
            cached_input_per_mtok=self.cached_input_per_mtok,
            output_per_mtok=self.output_per_mtok,
            cache_write_per_mtok=self.cache_write_per_mtok,
            reasoning_per_mtok=self.reasoning_per_mtok,
            tiers_per_mtok=self.tier_rates(),
            long_context=self.long_context(),
        )

    def cost(
        self, *, prompt_tokens: int, cached_tokens: int, completion_tokens: int, cache_write_tokens: int = 0
    ) -> Decimal:
        """USD at list prices, cached prompt tokens at the cached-input price and cache writes at the cache-write
        price (``apps.core.pricing``'s formula, which the gateway's snapshot ``PriceRow`` uses too)."""
        return (
            token_cost(
                prompt_tokens=prompt_tokens,
                cached_tokens=cached_tokens,
                completion_tokens=completion_tokens,
                input_rate=self.input_per_mtok,
                cached_input_rate=self.cached_input_per_mtok,
                output_rate=self.output_per_mtok,
                cache_write_tokens=cache_write_tokens,
                cache_write_rate=self.cache_write_per_mtok,
                long_context=self.long_context(),
            )
            / MTOK
        )

    def batch_cost(self, *, prompt_tokens: int, completion_tokens: int) -> Decimal:
        """USD at batch prices; Batch APIs price cached input like the rest of the input."""
        return (
            token_cost(
                prompt_tokens=prompt_tokens,
                cached_tokens=0,
                completion_tokens=completion_tokens,
                input_rate=self.batch_input_per_mtok,
                cached_input_rate=self.batch_input_per_mtok,
                output_rate=self.batch_output_per_mtok,
                long_context=self.long_context(),
            )
            / MTOK
        )


class ModelAlias(models.Model):
    """A name apps ask for ("default-chat") and the model we actually serve."""

    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="model_aliases")
    alias = models.CharField(max_length=200)
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="aliases")
    model = models.CharField(max_length=200)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "alias"], name="alias_unique_in_project")]

    def __str__(self) -> str:
        return f"{self.alias} → {self.model}"
