"""What each saving lever would have saved on a project's own ledger, per feature, with its evidence.

Read from the ledger rows the gateway wrote for chat requests it answered
(status 200, not a cascade's or a retry's side row), over a window of days:

- ``exact_cache``: requests whose exact-cache key (``LedgerEntry.cache_key``) repeats for the same end
  user within a TTL of the answer that would have been stored; each repeat would have cost $0.
- ``route``: the feature's tokens priced at each cheaper model the organisation has a price for.
  Quality is not known until a shadow trial measures it: the evidence says so.
- ``cascade``: a feature's model with a cheaper priced model of the same provider that gives chat logprobs
  (the cheapest such): ask it first, keep its confident answers. Until a trial measures the kept share the
  prediction is its upper bound (every cheap answer kept); the trial's own prediction replaces it.
- ``batch``: features that never stream, priced at their model's batch rates.
- ``prompt_cache``: static prefixes (``prefix_key``) of at least 1,024 tokens sent again and again,
  against the ``cached_tokens`` the provider actually discounted.
- ``semantic_cache``: requests whose prompt is a near duplicate of an earlier one of the feature, at
  each similarity threshold, from the embeddings the semantic cache stored (``embedding_key`` points at
  a ``CacheEntry``). Bounded: the latest ``NEAR_DUPLICATE_SAMPLE`` such requests per feature are compared.

Beside them, each feature's prompt profile: the share of prompt tokens in the static prefix, the
``max_tokens`` asked against the completion tokens used (p99), and how long conversations grow.
Only requests recorded after the ledger learned cache keys (migration ``ledger.0008``) take part.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
from django.db.models import Aggregate, Avg, Count, F, FloatField, IntegerField, Max, Q, QuerySet, Sum, Value, Window
from django.db.models.functions import Cast, RowNumber
from django.utils import timezone

from apps.cache.guard import agree
from apps.cache.models import CacheEntry
from apps.core.anthropic import ANTHROPIC_KINDS
from apps.core.pricing import MTOK, token_cost
from apps.core.request import ENDPOINT_CHAT
from apps.ledger.models import LedgerEntry, Source
from apps.providers.models import Price
from apps.tenancy.models import Project

# Providers discount a cached prompt prefix from 1,024 tokens on (OpenAI's and Anthropic's minimum).
PROMPT_CACHE_MIN_TOKENS = 1024
# Route candidates shown per feature and model: the cheapest few, not every priced model.
ROUTE_CANDIDATES = 3
CENT = Decimal("0.000001")
# Near duplicates: the thresholds shown, and the most requests per feature compared with each other
# (the comparison is quadratic in the sample: 500 rows are 125,000 dot products of 384 floats).
NEAR_DUPLICATE_THRESHOLDS = (0.80, 0.85, 0.90, 0.95)
NEAR_DUPLICATE_SAMPLE = 500


class _Percentile(Aggregate):
    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, fraction: float) -> None:
        super().__init__(expression, fraction=fraction)


@dataclass
class Opportunity:
    id: str  # stable for the same lever, feature and detail: what ``apply`` will name
    lever: str
    feature: str
    predicted_savings_usd: Decimal
    share: float  # of the feature's spend in the window
    evidence: dict[str, Any] = field(default_factory=dict)
    feature_cost: Decimal = Decimal(0)  # the feature's spend in the window: what a trial's measured share scales

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "lever": self.lever,
            "feature": self.feature,
            "predicted_savings_usd": str(self.predicted_savings_usd.quantize(CENT)),
            "share": round(self.share, 4),
            "evidence": self.evidence,
        }


@dataclass
class Report:
    since: dt.datetime
    until: dt.datetime
    ttl_seconds: int
    opportunities: list[Opportunity]
    features: list[dict[str, Any]]  # each feature's spend and prompt profile

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "ttl_seconds": self.ttl_seconds,
            "opportunities": [o.as_json() for o in self.opportunities],
            "features": self.features,
        }


def _id(lever: str, *parts: str) -> str:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
    return f"{lever}-{digest}"


def replayable_rows(*, project: Project, since: dt.datetime, until: dt.datetime) -> QuerySet[LedgerEntry]:
    """The project's answered chat requests in the window that carry a cache key, side rows left out."""
    return (
        LedgerEntry.objects.filter(
            project=project,
            created_at__gte=since,
            created_at__lt=until,
            source=Source.GATEWAY,
            endpoint=ENDPOINT_CHAT,
            status_code=200,
        )
        .exclude(cache_key="")
        .exclude(decision__has_key="part")
    )


def project_opportunities(*, project: Project, days: int = 7, ttl_seconds: int = 3600) -> Report:
    """Every lever's saving on the last ``days`` of ``project``'s ledger, biggest first."""
    until = timezone.now()
    since = until - dt.timedelta(days=days)
    rows = replayable_rows(project=project, since=since, until=until)
    spend: dict[str, dict[str, Any]] = {r["feature"]: dict(r) for r in _feature_spend(rows)}
    prices = provider_prices(project)
    cheapest = latest_prices(prices)
    found = [
        *_exact_cache(rows, ttl_seconds),
        *_routes(rows, cheapest),
        *_cascades(rows, prices),
        *_batch(rows, cheapest, spend),
        *_prompt_cache(rows, cheapest),
        *_history_windows(rows, cheapest),
    ]
    near = near_duplicates(project=project, rows=rows)
    found += [_near_duplicate_opportunity(feature, shares) for feature, shares in sorted(near.items())]
    found = [o for o in found if o.predicted_savings_usd > 0]
    # Without embeddings nothing is known of a feature's near duplicates: a trial is how to learn it.
    found += [_unmeasured_semantic(feature) for feature in sorted(spend) if feature not in near]
    for item in found:
        total = spend.get(item.feature, {}).get("cost") or Decimal(0)
        item.share = float(item.predicted_savings_usd / total) if total > 0 else 0.0
        item.feature_cost = total
    found.sort(key=lambda o: (-o.predicted_savings_usd, o.id))
    profiles = [_profile(feature, row, near.get(feature)) for feature, row in sorted(spend.items())]
    return Report(since, until, ttl_seconds, found, profiles)


def _feature_spend(rows: QuerySet[LedgerEntry]) -> QuerySet[Any]:
    """Per feature: requests, spend, prompt and prefix tokens, streams, output use against caps, turns."""
    return rows.values("feature").annotate(
        requests=Count("id"),
        cost=Sum("cost"),
        prompt=Sum("prompt_tokens"),
        prefix=Sum("prefix_tokens"),
        streamed_requests=Count("id", filter=Q(streamed=True)),
        completion_p99=_Percentile("completion_tokens", 0.99),
        max_tokens_p50=_Percentile("max_tokens", 0.5),
        turns_avg=Avg("turns"),
        turns_max=Max("turns"),
    )


def pruning_suggestions(*, project: Project, days: int = 7) -> list[dict[str, Any]]:
    """Per feature seen in the last ``days``: the output cap its use suggests and its conversation length."""
    until = timezone.now()
    rows = replayable_rows(project=project, since=until - dt.timedelta(days=days), until=until)
    keep = ("feature", "requests", "completion_tokens_p99", "max_tokens_p50", "suggested_max_tokens", "turns_avg",
            "turns_max")  # fmt: skip
    profiles = [_profile(row["feature"], row, None) for row in _feature_spend(rows).order_by("feature")]
    return [{name: profile[name] for name in keep} for profile in profiles]


@dataclass
class NearDuplicates:
    """One feature's near-duplicate shares: of ``sample_size`` requests with a stored embedding, how many
    had an earlier one (another prompt) at least as similar as each threshold. Exact repeats are the exact
    cache's share, counted there and never here."""

    sample_size: int
    rows_with_embedding: int
    sample_cost: Decimal
    by_threshold: dict[float, tuple[int, Decimal]]  # threshold -> (requests, their cost)

    def as_json(self) -> dict[str, Any]:
        return {
            "sample_size": self.sample_size,
            "rows_with_embedding": self.rows_with_embedding,
            "thresholds": [
                {
                    "threshold": threshold,
                    "requests": n,
                    "share": round(n / self.sample_size, 4) if self.sample_size else 0.0,
                    "cost_usd": str(cost.quantize(CENT)),
                }
                for threshold, (n, cost) in self.by_threshold.items()
            ],
        }


def near_duplicates(
    *, project: Project, rows: QuerySet[LedgerEntry], sample: int = NEAR_DUPLICATE_SAMPLE
) -> dict[str, NearDuplicates]:
    """Each feature's near-duplicate shares over its latest ``sample`` upstream requests with an embedding.

    A request that went upstream with the semantic cache on stored its prompt's embedding under its exact
    key (the ledger's ``embedding_key``); one the semantic cache answered points at the entry it matched,
    not at its own prompt, so it is left out (its similarity is not known here). The embeddings are read
    from the project's own cache entries; an entry evicted since leaves its request out of the sample.
    """
    upstream = rows.filter(cache_hit="").exclude(embedding_key="")
    totals = dict(upstream.values_list("feature").annotate(n=Count("id")).values_list("feature", "n"))
    if not totals:
        return {}
    # Three queries whatever the number of features: counts, each feature's latest rows, their embeddings.
    latest = Window(RowNumber(), partition_by=[F("feature")], order_by=[F("created_at").desc(), F("id").desc()])
    picked: dict[str, list[tuple[str, str, Decimal]]] = defaultdict(list)
    for feature, embedding_key, cache_key, cost in (
        upstream.annotate(latest=latest).filter(latest__lte=sample).order_by("created_at", "id")
        .values_list("feature", "embedding_key", "cache_key", "cost")
    ):  # fmt: skip
        picked[feature].append((embedding_key, cache_key, cost))
    wanted = {key for rows_ in picked.values() for key, _, _ in rows_}
    vectors = dict(
        CacheEntry.objects.filter(project=project, exact_key__in=wanted, embedding__isnull=False)
        .values_list("exact_key", "embedding")
    )  # fmt: skip
    return {
        feature: _near_shares([row for row in picked[feature] if row[0] in vectors], vectors, total)
        for feature, total in totals.items()
    }


def _near_shares(picked: list[tuple[str, str, Decimal]], vectors: dict[str, Any], total: int) -> NearDuplicates:
    if not picked:
        return NearDuplicates(0, total, Decimal(0), {t: (0, Decimal(0)) for t in NEAR_DUPLICATE_THRESHOLDS})
    matrix = np.array([vectors[key] for key, _, _ in picked], dtype=np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    similarity = matrix @ matrix.T
    # Only earlier requests count, and never an exact repeat of the same request (the exact cache's share).
    keys = np.array([cache_key for _, cache_key, _ in picked])
    similarity[np.triu_indices(len(picked))] = -1.0
    similarity[keys[:, None] == keys[None, :]] = -1.0
    best = similarity.max(axis=1)
    # An exact repeat is the exact cache's to serve: it is nobody's near duplicate.
    seen: set[str] = set()
    for index, cache_key in enumerate(keys):
        if cache_key in seen:
            best[index] = -1.0
        seen.add(cache_key)
    costs = [cost for _, _, cost in picked]
    by_threshold = {}
    for threshold in NEAR_DUPLICATE_THRESHOLDS:
        hits = np.flatnonzero(best >= threshold)
        by_threshold[threshold] = (len(hits), sum((costs[i] for i in hits), Decimal(0)))
    return NearDuplicates(len(picked), total, sum(costs, Decimal(0)), by_threshold)


def _near_duplicate_opportunity(feature: str, near: NearDuplicates) -> Opportunity:
    """What a semantic cache would save at the strictest threshold that finds near duplicates, scaled from
    the sample to the feature's requests with an embedding. Quality is for a shadow trial to measure."""
    threshold = next((t for t in reversed(NEAR_DUPLICATE_THRESHOLDS) if near.by_threshold[t][0]), None)
    saved = Decimal(0)
    if threshold is not None and near.sample_size:
        saved = near.by_threshold[threshold][1] * near.rows_with_embedding / near.sample_size
    return Opportunity(
        id=_id("semantic_cache", feature),
        lever="semantic_cache",
        feature=feature,
        predicted_savings_usd=saved,
        share=0.0,
        evidence={
            **near.as_json(),
            "threshold": threshold,
            "quality": "unmeasured: a near duplicate may still need another answer (monthly/yearly)",
        },
    )


def _unmeasured_semantic(feature: str) -> Opportunity:
    return Opportunity(
        id=_id("semantic_cache", feature),
        lever="semantic_cache",
        feature=feature,
        predicted_savings_usd=Decimal(0),
        share=0.0,
        evidence={
            "threshold": None,
            "quality": "unmeasured: no prompt embeddings yet. A shadow trial indexes the feature's prompts and "
            "measures its near duplicates and what a semantic cache would serve of them, at $0.",
        },
    )


def cache_replay(
    *, project: Project, rows: QuerySet[LedgerEntry], threshold: float, learned: frozenset[tuple[str, str]]
) -> tuple[Decimal, Decimal]:
    """What a semantic cache at ``threshold`` would have served of one feature's ``rows`` that have a stored
    embedding, replayed in order as the gateway serves them: a request is served when the nearest prompt the
    cache stored before it is at least ``threshold`` similar and the cache guard lets the hit through (with
    the project's ``learned`` opposites); else it goes upstream and its prompt is stored. An exact repeat is
    the exact cache's, neither served nor stored here. Returns (the served requests' cost, all their cost)."""
    picked = [
        (key, cache_key, cost)
        for key, cache_key, cost in rows.filter(cache_hit="").exclude(embedding_key="")
        .order_by("created_at", "id").values_list("embedding_key", "cache_key", "cost")[:NEAR_DUPLICATE_SAMPLE]
    ]  # fmt: skip
    entries = {
        key: (vector, text)
        for key, vector, text in CacheEntry.objects.filter(
            project=project, exact_key__in={key for key, _, _ in picked}, embedding__isnull=False
        ).values_list("exact_key", "embedding", "prompt_text")
    }
    picked = [row for row in picked if row[0] in entries]
    if not picked:
        return Decimal(0), Decimal(0)
    matrix = np.array([entries[key][0] for key, _, _ in picked], dtype=np.float32)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    similarity = matrix @ matrix.T
    stored: list[int] = []
    seen: set[str] = set()
    served = Decimal(0)
    for index, (key, cache_key, cost) in enumerate(picked):
        if cache_key in seen:
            continue
        seen.add(cache_key)
        if stored:
            best = stored[int(np.argmax(similarity[index, stored]))]
            if similarity[index, best] >= threshold and agree(entries[key][1], entries[picked[best][0]][1], learned):
                served += cost
                continue
        stored.append(index)
    return served, sum((cost for _, _, cost in picked), Decimal(0))


def _profile(feature: str, row: dict[str, Any], near: NearDuplicates | None) -> dict[str, Any]:
    prompt = row["prompt"] or 0
    p99 = row["completion_p99"]
    cap = row["max_tokens_p50"]
    # A cap sized from use: p99 and a quarter more, when the one asked for is larger or none is asked for
    # (the budget then reserves the model's whole output limit).
    suggested = int(p99 * 1.25) + 1 if p99 is not None else None
    return {
        "feature": feature,
        "requests": row["requests"],
        "cost_usd": str((row["cost"] or Decimal(0)).quantize(CENT)),
        "prompt_tokens": prompt,
        "static_prefix_share": round((row["prefix"] or 0) / prompt, 4) if prompt else 0.0,
        "streamed_requests": row["streamed_requests"],
        "completion_tokens_p99": round(p99, 1) if p99 is not None else None,
        "max_tokens_p50": round(cap, 1) if cap is not None else None,
        "suggested_max_tokens": suggested if suggested is not None and (cap is None or cap > suggested) else None,
        "turns_avg": round(row["turns_avg"] or 0, 2),
        "turns_max": row["turns_max"] or 0,
        "near_duplicates": near.as_json() if near is not None else None,
    }


def _exact_cache(rows: QuerySet[LedgerEntry], ttl_seconds: int) -> list[Opportunity]:
    """Replay an exact cache with this TTL over the requests that went upstream: an answer stored at its
    key's first request serves every repeat (same end user) until it expires; then the next one stores."""
    upstream = rows.filter(cache_hit="")
    repeated = (
        upstream.values("feature", "end_user", "cache_key").annotate(n=Count("id")).filter(n__gt=1)
        .values_list("cache_key", flat=True)
    )  # fmt: skip
    ttl = dt.timedelta(seconds=ttl_seconds)
    stored: dict[tuple[str, str, str], dt.datetime] = {}
    saved: dict[str, Decimal] = defaultdict(Decimal)
    hits: dict[str, int] = defaultdict(int)
    keys: dict[str, set[str]] = defaultdict(set)
    for feature, end_user, key, at, cost in (
        upstream.filter(cache_key__in=repeated)
        .order_by("created_at", "id")
        .values_list("feature", "end_user", "cache_key", "created_at", "cost")
        .iterator(chunk_size=5000)
    ):
        slot = (feature, end_user, key)
        first = stored.get(slot)
        if first is not None and at - first < ttl:
            saved[feature] += cost
            hits[feature] += 1
            keys[feature].add(key)
        else:
            stored[slot] = at
    totals = dict(upstream.values_list("feature").annotate(n=Count("id")).values_list("feature", "n"))
    return [
        Opportunity(
            id=_id("exact_cache", feature, str(ttl_seconds)),
            lever="exact_cache",
            feature=feature,
            predicted_savings_usd=saved[feature],
            share=0.0,
            evidence={
                "requests": totals.get(feature, 0),
                "repeats_within_ttl": hits[feature],
                "repeat_share": round(hits[feature] / totals[feature], 4) if totals.get(feature) else 0.0,
                "distinct_repeated_prompts": len(keys[feature]),
                "ttl_seconds": ttl_seconds,
                "scope": "per end user",
            },
        )
        for feature in sorted(saved)
        if saved[feature] > 0
    ]


@dataclass(frozen=True)
class _Price:
    provider_id: int
    model: str
    input: Decimal
    cached: Decimal
    output: Decimal
    batch_input: Decimal
    batch_output: Decimal
    kind: str  # the provider's

    def cost(self, prompt: int, cached: int, completion: int) -> Decimal:
        return token_cost(
            prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
            input_rate=self.input, cached_input_rate=self.cached, output_rate=self.output,
        ) / MTOK  # fmt: skip


def provider_prices(project: Project) -> dict[tuple[int, str], _Price]:
    """The organisation's price in effect today for each (provider, model) it prices."""
    today = timezone.now().date()
    found: dict[tuple[int, str], _Price] = {}
    for price in (
        Price.objects.filter(
            provider__organization_id=project.organization_id, provider__is_active=True, effective_from__lte=today
        )
        .select_related("provider")
        .order_by("provider_id", "model", "-effective_from")
    ):
        found.setdefault(
            (price.provider_id, price.model),
            _Price(price.provider_id, price.model, price.input_per_mtok, price.cached_input_per_mtok,
                   price.output_per_mtok, price.batch_input_per_mtok, price.batch_output_per_mtok,
                   price.provider.kind),
        )  # fmt: skip
    return found


def latest_input_rates(project: Project) -> dict[str, Decimal]:
    """USD per input token of each model the organisation prices (at its cheapest provider)."""
    return {model: price.input / MTOK for model, price in latest_prices(provider_prices(project)).items()}


def latest_prices(prices: dict[tuple[int, str], _Price]) -> dict[str, _Price]:
    """Each model's price at its cheapest provider (if several price it)."""
    found: dict[str, _Price] = {}
    for row in prices.values():
        current = found.get(row.model)
        if current is None or (row.input, row.output) < (current.input, current.output):
            found[row.model] = row
    return found


def _by_model(rows: QuerySet[LedgerEntry], *, streamed: bool | None = None) -> QuerySet[Any]:
    selected = rows.filter(cache_hit="")
    if streamed is not None:
        selected = selected.filter(streamed=streamed)
    return selected.values("feature", "served_model").annotate(
        requests=Count("id"),
        prompt=Sum("prompt_tokens"),
        cached=Sum("cached_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost"),
    )


def _routes(rows: QuerySet[LedgerEntry], prices: dict[str, _Price]) -> list[Opportunity]:
    found = []
    for group in _by_model(rows):
        prompt, cached, completion, cost = group["prompt"], group["cached"], group["completion"], group["cost"]
        candidates = sorted(
            (price.cost(prompt, cached, completion), model)
            for model, price in prices.items()
            # A model priced for no output (an embedding model) answers no chat request.
            if model != group["served_model"] and price.output > 0
        )
        for candidate_cost, model in [c for c in candidates if c[0] < cost][:ROUTE_CANDIDATES]:
            found.append(
                Opportunity(
                    id=_id("route", group["feature"], group["served_model"], model),
                    lever="route",
                    feature=group["feature"],
                    predicted_savings_usd=cost - candidate_cost,
                    share=0.0,
                    evidence={
                        "requests": group["requests"],
                        "from_model": group["served_model"],
                        "to_model": model,
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "cost_usd": str(cost.quantize(CENT)),
                        "cost_at_to_model_usd": str(candidate_cost.quantize(CENT)),
                        "quality": "unmeasured: a shadow trial compares the two models' answers",
                    },
                )
            )
    return found


# A history window keeps the system messages and this many others: three exchanges and the question.
HISTORY_WINDOW_TURNS = 7


def _history_windows(rows: QuerySet[LedgerEntry], prices: dict[str, _Price]) -> list[Opportunity]:
    """What sending only the system messages and the last ``HISTORY_WINDOW_TURNS`` others would save, per
    feature and model, on the requests with more turns than that.

    The ledger keeps counts, not prompts: each longer request's conversation (its prompt less its static
    prefix) is taken as evenly spread over its messages after the first, so the window keeps that share of
    it. An estimate; the trial measures the answers, and the enabled policy's rows say what it trimmed.
    """
    turns = HISTORY_WINDOW_TURNS
    conversation = Cast(F("prompt_tokens") - F("prefix_tokens"), FloatField())
    kept_share = Value(float(turns)) / Cast(F("turns") - 1, FloatField())
    longer = Q(turns__gt=turns + 1, prompt_tokens__gt=F("prefix_tokens"))
    groups = (
        rows.filter(cache_hit="")
        .values("feature", "served_model")
        .annotate(
            requests=Count("id"),
            trimmed=Count("id", filter=longer),
            saved=Sum(conversation * (Value(1.0) - kept_share), filter=longer),
            prompt=Sum("prompt_tokens"),
        )
        .filter(trimmed__gt=0)
        .order_by("feature", "served_model")
    )
    found = []
    for group in groups:
        price = prices.get(group["served_model"])
        saved_tokens = round(group["saved"] or 0)
        if price is None or saved_tokens <= 0:
            continue
        found.append(
            Opportunity(
                id=_id("history_window", group["feature"], group["served_model"], str(turns)),
                lever="history_window",
                feature=group["feature"],
                predicted_savings_usd=price.cost(saved_tokens, 0, 0),
                share=0.0,
                evidence={
                    "model": group["served_model"],
                    "turns": turns,
                    "requests": group["requests"],
                    "requests_trimmed": group["trimmed"],
                    "prompt_tokens": group["prompt"],
                    "prompt_tokens_saved_estimate": saved_tokens,
                    "quality": "unmeasured: a shadow trial asks the same model without the earlier turns",
                },
            )
        )
    return found


# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5…) answer no logprobs; Anthropic's Messages API has none;
# an instruct model answers the legacy Completions API, not chat.
_NO_CHAT_LOGPROBS = re.compile(r"o\d|gpt-5|.*-instruct$")


def gives_logprobs(kind: str, model: str) -> bool:
    """Whether a chat model of a provider of ``kind`` can answer with logprobs, as a cascade's cheap model must."""
    return kind not in ANTHROPIC_KINDS and _NO_CHAT_LOGPROBS.match(model) is None


def _cascades(rows: QuerySet[LedgerEntry], prices: dict[tuple[int, str], _Price]) -> list[Opportunity]:
    found = []
    groups = (
        rows.filter(cache_hit="", provider_id__isnull=False)
        .values("feature", "served_model", "provider_id")
        .annotate(requests=Count("id"), prompt=Sum("prompt_tokens"), cached=Sum("cached_tokens"),
                  completion=Sum("completion_tokens"), cost=Sum("cost"))
    )  # fmt: skip
    for group in groups:
        provider_id, served = group["provider_id"], group["served_model"]
        prompt, cached, completion, cost = group["prompt"], group["cached"], group["completion"], group["cost"]
        candidates = sorted(
            (price.cost(prompt, cached, completion), model)
            for (provider, model), price in prices.items()
            if provider == provider_id and model != served and price.output > 0 and gives_logprobs(price.kind, model)
        )
        cheaper = [c for c in candidates if c[0] < cost]
        if not cheaper:
            continue
        cheap_cost, model = cheaper[0]
        found.append(
            Opportunity(
                id=_id("cascade", group["feature"], served, model),
                lever="cascade",
                feature=group["feature"],
                predicted_savings_usd=cost - cheap_cost,
                share=0.0,
                evidence={
                    "requests": group["requests"],
                    "from_model": served,
                    "to_model": model,
                    "cost_usd": str(cost.quantize(CENT)),
                    "cost_at_to_model_usd": str(cheap_cost.quantize(CENT)),
                    "prediction": "upper bound: every cheap answer kept; a shadow trial measures the kept share "
                    "and the cheap calls wasted on escalations",
                    "quality": "unmeasured: a shadow trial measures agreement per confidence bin",
                },
            )
        )
    return found


def _batch(rows: QuerySet[LedgerEntry], prices: dict[str, _Price], spend: dict[str, Any]) -> list[Opportunity]:
    """Features that never streamed: their model's batch rates, when it has them."""
    found = []
    for group in _by_model(rows, streamed=False):
        feature = group["feature"]
        price = prices.get(group["served_model"])
        if spend[feature]["streamed_requests"] or price is None or price.batch_input <= 0:
            continue
        batch_cost = (
            token_cost(
                prompt_tokens=group["prompt"], cached_tokens=0, completion_tokens=group["completion"],
                input_rate=price.batch_input, cached_input_rate=price.batch_input, output_rate=price.batch_output,
            ) / MTOK
        )  # fmt: skip
        if batch_cost >= group["cost"]:
            continue
        found.append(
            Opportunity(
                id=_id("batch", feature, group["served_model"]),
                lever="batch",
                feature=feature,
                predicted_savings_usd=group["cost"] - batch_cost,
                share=0.0,
                evidence={
                    "requests": group["requests"],
                    "model": group["served_model"],
                    "streamed_requests": 0,
                    "cost_usd": str(group["cost"].quantize(CENT)),
                    "batch_cost_usd": str(batch_cost.quantize(CENT)),
                    "latency": "the feature must tolerate answers within 24 hours",
                },
            )
        )
    return found


def _prompt_cache(rows: QuerySet[LedgerEntry], prices: dict[str, _Price]) -> list[Opportunity]:
    """Static prefixes of 1,024+ tokens sent more than once: after the first, each send could have been
    billed at the cached-input rate; what the provider already discounted (``cached_tokens``) is not
    counted again."""
    groups = (
        rows.filter(cache_hit="", prefix_tokens__gte=PROMPT_CACHE_MIN_TOKENS)
        .values("feature", "served_model", "prefix_key")
        .annotate(
            requests=Count("id"),
            prefix=Sum("prefix_tokens"),
            first=Max("prefix_tokens"),
            received=Sum(F("cached_tokens"), output_field=IntegerField()),
        )
        .filter(requests__gt=1)
    )
    found: dict[tuple[str, str], Opportunity] = {}
    for group in groups:
        price = prices.get(group["served_model"])
        if price is None or price.cached >= price.input:
            continue
        cacheable = group["prefix"] - group["first"]
        missed = max(cacheable - group["received"], 0)
        saving = missed * (price.input - price.cached) / MTOK
        if saving <= 0:
            continue
        slot = (group["feature"], group["served_model"])
        item = found.setdefault(
            slot,
            Opportunity(
                id=_id("prompt_cache", *slot),
                lever="prompt_cache",
                feature=group["feature"],
                predicted_savings_usd=Decimal(0),
                share=0.0,
                evidence={"model": group["served_model"], "prefixes": 0, "requests": 0, "cacheable_tokens": 0,
                          "cached_tokens_received": 0, "min_prefix_tokens": PROMPT_CACHE_MIN_TOKENS,
                          "how": "put the static part first and keep it byte-identical across requests"},
            ),
        )  # fmt: skip
        item.predicted_savings_usd += saving
        evidence = item.evidence
        evidence["prefixes"] += 1
        evidence["requests"] += group["requests"]
        evidence["cacheable_tokens"] += cacheable
        evidence["cached_tokens_received"] += group["received"]
    return list(found.values())
