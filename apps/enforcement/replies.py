"""What an app sees from enforcement: the 429s in OpenAI's shape and the ``x-ratelimit-*`` headers."""

from __future__ import annotations

import math
from decimal import Decimal

from apps.core.errors import GatewayError
from apps.core.snapshot import BudgetPolicy, RateLimitPolicy
from apps.enforcement.scripts import STATUS_RPM, STATUS_TPM


def budget_exhausted(budget: BudgetPolicy, worst_case_usd: Decimal) -> GatewayError:
    return GatewayError(
        429,
        f"Budget '{budget.name}' (${budget.amount_usd} {budget.period.replace('_', '-')}) is exhausted: "
        f"this request could cost up to ${worst_case_usd:.6f}. Lower max_tokens or ask your team lead "
        "to raise the budget.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def rate_limited(status: int, limit: RateLimitPolicy, retry_ms: int, left_tokens: int) -> GatewayError:
    retry_after = max(1, math.ceil(retry_ms / 1000))
    if status == STATUS_RPM:
        what = f"{limit.requests_per_minute} requests per minute"
        headers = [
            (b"x-ratelimit-limit-requests", str(limit.requests_per_minute).encode()),
            (b"x-ratelimit-remaining-requests", b"0"),
            (b"x-ratelimit-reset-requests", f"{retry_after}s".encode()),
        ]
    elif status == STATUS_TPM:
        what = f"{limit.tokens_per_minute} tokens per minute"
        headers = [
            (b"x-ratelimit-limit-tokens", str(limit.tokens_per_minute).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(left_tokens, 0)).encode()),
            (b"x-ratelimit-reset-tokens", f"{retry_after}s".encode()),
        ]
    else:
        what = f"{limit.max_concurrent} concurrent requests"
        headers = []
    headers.append((b"retry-after", str(retry_after).encode()))
    return GatewayError(
        429,
        f"Rate limit reached for {limit.scope_name.replace(':', ' ')}: {what}. Try again in {retry_after}s.",
        type="requests" if status != STATUS_TPM else "tokens",
        code="rate_limit_exceeded",
        headers=headers,
    )


def remaining_headers(limits: list[RateLimitPolicy], left_requests: int, left_tokens: int) -> list[tuple[bytes, bytes]]:
    """The tightest limits and what is left of them, for an admitted request's response (every admitted
    request with a rate limit: one pass over the limits)."""
    rpm = tpm = 0
    for limit in limits:
        requests, tokens = limit.requests_per_minute, limit.tokens_per_minute
        if requests and (not rpm or requests < rpm):
            rpm = requests
        if tokens and (not tpm or tokens < tpm):
            tpm = tokens
    headers = []
    if rpm:
        headers.append((b"x-ratelimit-limit-requests", b"%d" % rpm))
        headers.append((b"x-ratelimit-remaining-requests", b"%d" % max(left_requests, 0)))
    if tpm:
        headers.append((b"x-ratelimit-limit-tokens", b"%d" % tpm))
        headers.append((b"x-ratelimit-remaining-tokens", b"%d" % max(left_tokens, 0)))
    return headers
