"""The cost ledger: one row per request, and hourly roll-ups for charts and reports."""

from __future__ import annotations

from decimal import Decimal

from django.contrib.postgres.fields import ArrayField
from django.db import models

from apps.core.events import (
    CACHE_HIT_MAX,
    CACHE_KEY_MAX,
    END_USER_MAX,
    ENDPOINT_MAX,
    ERROR_CODE_MAX,
    FEATURE_MAX,
    LEDGER_COST_DIGITS,
    LEDGER_COST_PLACES,
    MODEL_MAX,
    REQUEST_ID_MAX,
    ROUTE_MAX,
)
from apps.core.pricing import TIER_MAX, TIER_STANDARD
from apps.core.responses import RESPONSE_ID_MAX
from apps.providers.models import DecimalSpec


class CacheHit(models.TextChoices):
    NONE = "", "Miss / not cached"
    EXACT = "exact", "Exact"
    SEMANTIC = "semantic", "Semantic"


class Source(models.TextChoices):
    GATEWAY = "gateway", "Gateway"
    IMPORTED = "imported", "Imported"


class Lever(models.TextChoices):
    """The saving lever a request used; see ``apps.ledger.services.LEVER_SQL``."""

    CACHE = "cache", "Cache"
    CASCADE = "cascade", "Cascade"
    ROUTING = "routing", "Routing"
    BATCH = "batch", "Batch"
    NONE = "none", "None"


COST: DecimalSpec = {"max_digits": LEDGER_COST_DIGITS, "decimal_places": LEDGER_COST_PLACES}

# Lower edges (ms) of the latency and TTFT histogram buckets; the last bucket is open-ended.
# Doubling widths keep the p50/p95 estimate within one bucket's width of the true value.
HISTOGRAM_EDGES_MS: tuple[int, ...] = (0, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400)


# How every page, chart and table names a value the ledger does not know (no model, feature, key …).
UNKNOWN_LABEL = "(unknown)"


def histogram_empty() -> list[int]:
    return [0] * len(HISTOGRAM_EDGES_MS)


class LedgerEntry(models.Model):
    """One request as the gateway saw it.

    Foreign keys carry no database constraint on purpose: a row written by the
    gateway must never be refused because its project or key was deleted
    between the request and the ingest. Rows are append-only.
    """

    request_id = models.CharField(max_length=REQUEST_ID_MAX, unique=True)
    created_at = models.DateTimeField(db_index=True, help_text="When the request arrived")
    ingested_at = models.DateTimeField(auto_now_add=True, db_index=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.GATEWAY)

    # No index of their own: "ledger_org_time" and "ledger_project_time" start with them. Each index
    # costs every ingested row (see README, Sizing).
    organization = models.ForeignKey(
        "tenancy.Organization", on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    project = models.ForeignKey(
        "tenancy.Project", on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, related_name="+"
    )
    # Not indexed alone either: "ledger_key_time" starts with the key, and no reader filters by provider.
    api_key = models.ForeignKey(
        "keys.ApiKey", on_delete=models.DO_NOTHING, db_constraint=False, db_index=False, null=True, related_name="+"
    )
    provider = models.ForeignKey(
        "providers.Provider",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=True,
        related_name="+",
    )

    endpoint = models.CharField(max_length=ENDPOINT_MAX)
    feature = models.CharField(max_length=FEATURE_MAX, blank=True)
    end_user = models.CharField(max_length=END_USER_MAX, blank=True)
    requested_model = models.CharField(max_length=MODEL_MAX)
    served_model = models.CharField(max_length=MODEL_MAX, blank=True)

    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(
        default=0, help_text="Prompt tokens written to the provider's prompt cache (Anthropic): cache-write price"
    )
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(
        default=0, help_text="Of the completion tokens, how many the model spent reasoning (billed as output)"
    )
    service_tier = models.CharField(
        max_length=TIER_MAX, default=TIER_STANDARD, help_text="The tier the request was served and priced at"
    )
    usage_estimated = models.BooleanField(default=False, help_text="Counted by us: the provider reported no usage")
    possibly_billed = models.BooleanField(
        default=False,
        help_text="An attempt we gave up on (e.g. timed out) that the provider may still bill; "
        "its cost is the request's worst case, estimated",
    )

    cost = models.DecimalField(**COST, default=0)
    counterfactual_cost = models.DecimalField(
        **COST, default=0, help_text="What the request would have cost without us: requested model, no cache"
    )

    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=ERROR_CODE_MAX, blank=True)
    streamed = models.BooleanField(default=False)
    request_count = models.PositiveIntegerField(
        default=1,
        help_text="Requests this row stands for: 1 for the gateway's rows, the bucket's num_model_requests for "
        "an imported usage row",
    )
    cache_hit = models.CharField(max_length=CACHE_HIT_MAX, choices=CacheHit.choices, blank=True, default=CacheHit.NONE)
    route = models.CharField(
        max_length=ROUTE_MAX, blank=True, help_text="Routing decision and its reason, as X-Route said it"
    )
    decision = models.JSONField(
        null=True,
        blank=True,
        help_text="The routing decision as data (apps.core.route.RouteDecision); what readers ask, never the text",
    )
    route_rule = models.ForeignKey(  # indexed by "ledger_rule_time", routed rows only
        "routing.RoutingRule",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=True,
        related_name="+",
    )

    # What replaying the ledger needs (apps/opportunities), without the prompt: digests and counts only.
    cache_key = models.CharField(
        max_length=CACHE_KEY_MAX,
        blank=True,
        help_text="The exact-cache key of the chat request (apps.cache.keys.exact_key, not scoped to the end user)",
    )
    prefix_key = models.CharField(
        max_length=CACHE_KEY_MAX,
        blank=True,
        help_text="Digest of the static prompt prefix a provider could cache: tools, then the leading system messages",
    )
    prefix_tokens = models.PositiveIntegerField(default=0, help_text="Estimated tokens of that prefix")
    embedding_key = models.CharField(
        max_length=CACHE_KEY_MAX,
        blank=True,
        help_text="Exact key of the semantic-cache entry whose embedding this request matched or was stored under",
    )
    max_tokens = models.PositiveIntegerField(null=True, blank=True, help_text="The output cap the request asked for")
    turns = models.PositiveIntegerField(default=0, help_text="Messages in the chat request: history growth")

    class Meta:
        indexes = [
            models.Index(fields=["project", "created_at"], name="ledger_project_time"),
            models.Index(fields=["organization", "created_at"], name="ledger_org_time"),
            # The /ledger/ page's filters, newest first. Without them a value that few or no rows have
            # walked every row of the project back to its first month (27.9 s at 25M rows). A filter
            # on two of them reads the rows of the narrower one. Not the endpoint: a handful of values,
            # each a large share of the rows, and every index costs ingest (README, Sizing).
            models.Index(fields=["project", "feature", "created_at"], name="ledger_feature_time"),
            models.Index(fields=["project", "end_user", "created_at"], name="ledger_end_user_time"),
            models.Index(fields=["project", "served_model", "created_at"], name="ledger_served_time"),
            models.Index(fields=["project", "requested_model", "created_at"], name="ledger_requested_time"),
            models.Index(fields=["api_key", "created_at"], name="ledger_key_time"),
            # Errors are a few rows in a hundred: their index costs ingest little. The filter columns are
            # keys, not INCLUDEd, so "errors of this user/feature/model/key" is checked in the index,
            # without reading the rows it rules out.
            models.Index(
                fields=[
                    "project",
                    "created_at",
                    "end_user",
                    "feature",
                    "served_model",
                    "requested_model",
                    "endpoint",
                    "api_key",
                ],
                name="ledger_errors_time",
                condition=models.Q(status_code__gte=400),
            ),
            # Per-rule traffic and savings (routing pages); only routed rows are indexed.
            models.Index(
                fields=["route_rule", "created_at"],
                name="ledger_rule_time",
                condition=models.Q(route_rule__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(cost__gte=0), name="ledger_cost_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.served_model or self.requested_model} ${self.cost}"

    @property
    def savings(self) -> Decimal:
        return self.counterfactual_cost - self.cost


class RollupMeasures(models.Model):
    """What every roll-up adds up over its slice of the ledger."""

    requests = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()
    cache_hits = models.PositiveIntegerField()
    prompt_tokens = models.BigIntegerField()
    cached_tokens = models.BigIntegerField()
    completion_tokens = models.BigIntegerField()
    cost = models.DecimalField(**COST)
    counterfactual_cost = models.DecimalField(**COST)

    class Meta:
        abstract = True


class LatencyMeasures(models.Model):
    """Latency and TTFT sums and histograms, so percentiles can be estimated after merging rows.

    Only the gateway's rows are timed: imported rows carry no latency and count in none of these.
    """

    timed_count = models.PositiveIntegerField(default=0, help_text="Requests the gateway timed (its own rows)")
    streamed_count = models.PositiveIntegerField(default=0, help_text="Requests answered as a stream")
    latency_ms_sum = models.BigIntegerField()
    latency_hist = ArrayField(
        models.PositiveIntegerField(),
        size=len(HISTOGRAM_EDGES_MS),
        default=histogram_empty,
        help_text="Requests per latency bucket; bucket i starts at HISTOGRAM_EDGES_MS[i]",
    )
    ttft_ms_sum = models.BigIntegerField(default=0)
    ttft_count = models.PositiveIntegerField(default=0, help_text="Requests that reported a time to first token")
    ttft_hist = ArrayField(
        models.PositiveIntegerField(),
        size=len(HISTOGRAM_EDGES_MS),
        default=histogram_empty,
        help_text="Requests per TTFT bucket; bucket i starts at HISTOGRAM_EDGES_MS[i]",
    )

    class Meta:
        abstract = True


class HourlyRollup(RollupMeasures, LatencyMeasures):
    """Ledger totals per hour and full slice (key, model, feature, end user, lever, endpoint).

    The finest roll-up: reports and exports group it any way they like. It is
    nearly as many rows as the ledger has distinct end users per hour, so the
    overview reads the narrower ``ProjectHourlyRollup`` and ``SliceHourlyRollup``.
    """

    hour = models.DateTimeField()
    organization = models.ForeignKey(
        "tenancy.Organization", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    project = models.ForeignKey("tenancy.Project", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    api_key = models.ForeignKey(
        "keys.ApiKey", on_delete=models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )
    served_model = models.CharField(max_length=200)
    feature = models.CharField(max_length=100)
    end_user = models.CharField(max_length=200, blank=True, default="")
    lever = models.CharField(max_length=10, choices=Lever.choices, default=Lever.NONE)
    # Who publishes the served model (OpenAI, Anthropic; an OpenAI-compatible provider's own name): one feature's
    # spend adds up across vendors, and the overview splits it by them.
    vendor = models.CharField(max_length=200, blank=True, default="")
    endpoint = models.CharField(max_length=ENDPOINT_MAX, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=[
                    "hour",
                    "project",
                    "api_key",
                    "served_model",
                    "feature",
                    "end_user",
                    "lever",
                    "vendor",
                    "endpoint",
                ],
                name="rollup_slice_unique",
                nulls_distinct=False,
            )
        ]
        indexes = [
            models.Index(fields=["project", "hour"], name="rollup_project_hour"),
            models.Index(fields=["organization", "hour"], name="rollup_org_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.served_model} {self.feature or '-'} ${self.cost}"


class ProjectHourlyRollup(RollupMeasures, LatencyMeasures):
    """One project's totals for one hour: spend, summaries and latency percentiles read these."""

    hour = models.DateTimeField()
    organization = models.ForeignKey(
        "tenancy.Organization", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    project = models.ForeignKey("tenancy.Project", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "hour"], name="project_rollup_unique")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} project {self.project_id} ${self.cost}"


class Dimension(models.TextChoices):
    """What a ``SliceHourlyRollup`` row splits a project's hour by."""

    MODEL = "model", "Model"
    FEATURE = "feature", "Feature"
    KEY = "key", "Key"
    END_USER = "end_user", "End user"
    LEVER = "lever", "Lever"
    VENDOR = "vendor", "Vendor"
    ENDPOINT = "endpoint", "Endpoint"


class SliceHourlyRollup(RollupMeasures):
    """One project's totals for one hour and one value of one dimension (a model, a feature, a key …).

    Charts and top-N tables split by one dimension at a time, so each reads
    only its own dimension's rows: a handful per hour, end users aside.
    Key rows carry the key in ``api_key`` (``value`` stays empty); the others
    carry the served model, feature, end user or lever in ``value``.
    """

    hour = models.DateTimeField()
    organization = models.ForeignKey(
        "tenancy.Organization", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    project = models.ForeignKey("tenancy.Project", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    dimension = models.CharField(max_length=10, choices=Dimension.choices)
    value = models.CharField(max_length=200, blank=True)
    api_key = models.ForeignKey(
        "keys.ApiKey", on_delete=models.DO_NOTHING, db_constraint=False, null=True, related_name="+"
    )

    class Meta:
        constraints = [
            # Leading (project, dimension, hour): the index every chart query filters by.
            models.UniqueConstraint(
                fields=["project", "dimension", "hour", "value", "api_key"],
                name="slice_rollup_unique",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=models.Q(dimension="key") | models.Q(api_key__isnull=True),
                name="slice_rollup_key_only_on_key_rows",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H:00} {self.dimension}={self.value or self.api_key_id} ${self.cost}"


class RollupWatermark(models.Model):
    """Singleton: ledger rows ingested after this have not been rolled up yet."""

    ingested_before = models.DateTimeField()

    def __str__(self) -> str:
        return f"rolled up to {self.ingested_before:%Y-%m-%d %H:%M:%S}"


class LedgerRetention(models.Model):
    """How long an organisation's ledger rows are kept, when it differs from ``LEDGER_RETENTION_DAYS``.

    Applied daily by ``apps.ledger.retention.ledger_retention_apply``: whole month partitions are
    dropped once every organisation's retention has passed them; an organisation that keeps its
    rows for less time than others has its older rows deleted one by one. ``days`` empty: kept forever.
    """

    organization = models.OneToOneField(
        "tenancy.Organization", on_delete=models.CASCADE, primary_key=True, related_name="ledger_retention"
    )
    days = models.PositiveIntegerField(null=True, blank=True, help_text="Days of ledger rows kept; empty: forever")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(days__isnull=True) | models.Q(days__gte=1), name="ledger_retention_at_least_a_day"
            )
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}: {'forever' if self.days is None else f'{self.days} days'}"


class HeldResponse(models.Model):
    """A stored response the gateway answered from a Chat-only provider and keeps itself (the Responses
    API's state, which such a provider cannot keep): the durable copy of what the gateway holds in Redis
    for retrieve, ``input_items`` and ``previous_response_id`` (``apps.gateway.conversations``), written
    by the held-responses consumer (``apps.ledger.held_responses``). The earlier turns are the rows that
    ``previous_response_id`` leads back to."""

    response_id = models.CharField(max_length=200, unique=True)
    project = models.ForeignKey("tenancy.Project", on_delete=models.CASCADE, related_name="+")
    provider = models.ForeignKey("providers.Provider", on_delete=models.SET_NULL, null=True, related_name="+")
    model = models.CharField(max_length=200)
    previous_response_id = models.CharField(max_length=200, blank=True)
    input_items = models.JSONField(default=list)
    output_items = models.JSONField(default=list)
    usage = models.JSONField(null=True)
    response = models.JSONField()  # the Response object as the app got it
    created_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["project", "created_at"], name="heldresponse_project_time")]

    def __str__(self) -> str:
        return self.response_id


class ReadBack(models.TextChoices):
    """Where a background response's usage read-back stands (``apps.ledger.background``)."""

    PENDING = "pending", "Pending"
    READ = "read", "Real usage read back"
    UNREAD = "unread", "Given up: worst case kept"


class BackgroundResponse(models.Model):
    """A background response (``background: true`` on ``/v1/responses``) whose ledger row holds its worst case.

    The gateway answers such a request before the provider has generated anything, so its row is billed at
    the worst case and marked estimated. The ledger ingest adds this row beside it; the read-back task
    (``apps.ledger.background``) asks the provider for the response until it is done, then puts the real
    usage and price on the ledger row and gives the difference back to the budgets. After
    ``BACKGROUND_READBACK_HOURS`` (or on an answer it cannot believe) it gives up: ``unread``, worst case kept,
    ``note`` says why.
    """

    request_id = models.CharField(max_length=REQUEST_ID_MAX, unique=True, help_text="The ledger row's request id")
    ledger_created_at = models.DateTimeField(help_text="The ledger row's created_at (its partition)")
    response_id = models.CharField(max_length=RESPONSE_ID_MAX)
    organization = models.ForeignKey(
        "tenancy.Organization", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    project = models.ForeignKey("tenancy.Project", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    provider = models.ForeignKey(
        "providers.Provider", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    status = models.CharField(max_length=10, choices=ReadBack.choices, default=ReadBack.PENDING)
    provider_status = models.CharField(max_length=20, blank=True, help_text="The response's status when last read")
    claimed_until = models.DateTimeField(null=True, blank=True, help_text="A worker is reading it until then")
    checks = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=300, blank=True, help_text="Why it was given up, or what the last read said")
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["ledger_created_at"], name="background_pending", condition=models.Q(status="pending"))
        ]

    def __str__(self) -> str:
        return f"{self.response_id} {self.status}"
