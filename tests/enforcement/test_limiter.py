"""The Lua limiter against real Redis, with a simulated clock (``now`` is passed in)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings

from apps.core import names
from apps.core.errors import GatewayError
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.core.snapshot import BudgetPolicy, RateLimitPolicy
from apps.enforcement.fastredis import FastRedis
from apps.enforcement.limiter import Admission, Limiter

T0 = 1_795_000_000.0  # a fixed simulated epoch


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _limiter() -> tuple[Limiter, FastRedis]:
    client = FastRedis(settings.REDIS_URL)
    # A fresh prefix per test keeps counters apart.
    return Limiter(client, f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"), client


def _budget(amount: str, mode: str = "hard", seed: str = "0") -> BudgetPolicy:
    return BudgetPolicy(
        id=1, name="test budget", organization_id=1, scope="organization", team_id=None, project_id=None,
        api_key_id=None, feature="", end_user="", limit_nano=to_nano(Decimal(amount)), amount_usd=Decimal(amount),
        period="monthly", timezone="UTC", starts_at=None, mode=mode, seed_period_start=0.0,
        seed_nano=to_nano(Decimal(seed)),
    )  # fmt: skip


def _limit(rpm: int = 0, tpm: int = 0, conc: int = 0) -> RateLimitPolicy:
    return RateLimitPolicy(
        scope_name="project:1", organization_id=1, requests_per_minute=rpm, tokens_per_minute=tpm, max_concurrent=conc
    )


async def _admit(limiter: Limiter, now: float, **kwargs: Any) -> Admission:
    kwargs.setdefault("budgets", [])
    kwargs.setdefault("rate_limits", [])
    kwargs.setdefault("worst_case_usd", Decimal("0"))
    kwargs.setdefault("worst_case_tokens", 0)
    return await limiter.admit(request_id=uuid.uuid4().hex, now=now, **kwargs)


def test_tokens_per_minute_holds_within_5_percent_over_sliding_windows() -> None:
    async def scenario() -> list[tuple[float, int]]:
        limiter, client = _limiter()
        admitted: list[tuple[float, int]] = []
        limit = _limit(tpm=6000)
        # 20 requests/s of 120 reserved tokens for 180 simulated seconds: 4x the limit offered.
        for step in range(180 * 20):
            now = T0 + step * 0.05
            try:
                admission = await _admit(limiter, now, rate_limits=[limit], worst_case_tokens=120)
            except GatewayError as exc:
                assert exc.status == 429 and exc.code == "rate_limit_exceeded"
                continue
            # Settle to the real count: 100 tokens used, not the 120 reserved.
            await limiter.settle(admission, actual_usd=Decimal(0), actual_tokens=100, now=now)
            admitted.append((now, 100))
        await client.close()
        return admitted

    admitted = run(scenario())
    worst = best = None
    for start_step in range(60 * 20, 120 * 20, 20):  # every whole-second window after warm-up
        start = T0 + start_step * 0.05
        used = sum(tokens for at, tokens in admitted if start <= at < start + 60)
        worst = used if worst is None else max(worst, used)
        best = used if best is None else min(best, used)
    assert worst is not None and best is not None
    assert worst <= 6000 * 1.05, f"a 60 s window carried {worst} tokens against a 6000 limit"
    assert best >= 6000 * 0.80, f"the limiter starved traffic: a window carried only {best}"


def test_requests_per_minute_refuses_with_retry_after_and_headers() -> None:
    async def scenario() -> tuple[list[Admission], GatewayError]:
        limiter, client = _limiter()
        admitted = [await _admit(limiter, T0 + i, rate_limits=[_limit(rpm=5)]) for i in range(5)]
        with pytest.raises(GatewayError) as exc:
            await _admit(limiter, T0 + 10, rate_limits=[_limit(rpm=5)])
        # The first request leaves the window 60 s after it: the 6th fits at T0 + 60.
        await _admit(limiter, T0 + 60.5, rate_limits=[_limit(rpm=5)])
        await client.close()
        return admitted, exc.value

    admitted, error = run(scenario())
    assert dict(admitted[-1].headers)[b"x-ratelimit-remaining-requests"] == b"0"
    assert error.status == 429 and error.type == "requests"
    headers = dict(error.headers)
    assert headers[b"retry-after"] == b"50"
    assert headers[b"x-ratelimit-limit-requests"] == b"5"


def test_concurrency_slots_are_freed_on_settle() -> None:
    async def scenario() -> None:
        limiter, client = _limiter()
        first = await _admit(limiter, T0, rate_limits=[_limit(conc=2)])
        await _admit(limiter, T0, rate_limits=[_limit(conc=2)])
        with pytest.raises(GatewayError, match="2 concurrent requests"):
            await _admit(limiter, T0, rate_limits=[_limit(conc=2)])
        await limiter.settle(first, actual_usd=Decimal(0), actual_tokens=0)
        await _admit(limiter, T0, rate_limits=[_limit(conc=2)])
        await client.close()

    run(scenario())


def test_requests_and_tokens_of_one_scope_share_a_window_without_mixing() -> None:
    async def scenario() -> None:
        limiter, client = _limiter()
        both = _limit(rpm=3, tpm=250)
        first = await _admit(limiter, T0, rate_limits=[both], worst_case_tokens=100)
        await _admit(limiter, T0 + 1, rate_limits=[both], worst_case_tokens=100)
        with pytest.raises(GatewayError, match="250 tokens per minute"):
            await _admit(limiter, T0 + 2, rate_limits=[both], worst_case_tokens=100)
        # The first used 10 of its 100 tokens: 90 come back, enough for one more request...
        await limiter.settle(first, actual_usd=Decimal(0), actual_tokens=10, now=T0 + 2)
        await _admit(limiter, T0 + 2, rate_limits=[both], worst_case_tokens=100)
        # ...which is the third in the minute: the fourth is refused by requests, not tokens.
        with pytest.raises(GatewayError, match="3 requests per minute"):
            await _admit(limiter, T0 + 3, rate_limits=[both], worst_case_tokens=1)
        # A minute after the first, its request and its 10 tokens have left the window.
        await _admit(limiter, T0 + 60.5, rate_limits=[both], worst_case_tokens=30)
        await client.close()

    run(scenario())


def test_a_slot_left_by_a_dead_gateway_is_reclaimed_after_15_minutes() -> None:
    async def scenario() -> None:
        limiter, client = _limiter()
        await _admit(limiter, T0, rate_limits=[_limit(conc=1)])  # never settled: its gateway died
        with pytest.raises(GatewayError, match="1 concurrent requests"):
            await _admit(limiter, T0 + 899, rate_limits=[_limit(conc=1)])
        admitted = await _admit(limiter, T0 + 901, rate_limits=[_limit(conc=1)])
        assert admitted.concurrency_keys
        with pytest.raises(GatewayError, match="1 concurrent requests"):
            await _admit(limiter, T0 + 902, rate_limits=[_limit(conc=1)])
        await client.close()

    run(scenario())


def test_hard_budget_reserves_worst_case_and_settles_to_actual() -> None:
    async def scenario() -> int:
        limiter, client = _limiter()
        budget = _budget("1.00")
        held = [await _admit(limiter, T0, budgets=[budget], worst_case_usd=Decimal("0.30")) for _ in range(3)]
        with pytest.raises(GatewayError) as exc:
            await _admit(limiter, T0, budgets=[budget], worst_case_usd=Decimal("0.30"))
        assert exc.value.status == 429 and exc.value.code == "insufficient_quota"
        for admission in held:  # each really cost 0.10
            await limiter.settle(admission, actual_usd=Decimal("0.10"), actual_tokens=0)
        more = 0
        while True:
            try:
                admission = await _admit(limiter, T0, budgets=[budget], worst_case_usd=Decimal("0.30"))
            except GatewayError:
                break
            await limiter.settle(admission, actual_usd=Decimal("0.10"), actual_tokens=0)
            more += 1
        await client.close()
        return more

    # 0.30 spent; each further request needs 0.30 headroom and spends 0.10: 5 more fit (0.30 → 0.80).
    assert run(scenario()) == 5


def test_shadow_and_soft_budgets_never_block() -> None:
    async def scenario() -> list[Admission]:
        limiter, client = _limiter()
        shadow, soft = _budget("0.10", mode="shadow"), _budget("0.10", mode="soft")
        results = [await _admit(limiter, T0, budgets=[shadow, soft], worst_case_usd=Decimal("0.06")) for _ in range(3)]
        await client.close()
        return results

    results = run(scenario())
    assert [len(a.shadow_blocked) for a in results] == [0, 1, 1]


def test_lost_counter_is_reseeded_from_the_ledger_value() -> None:
    async def scenario() -> None:
        limiter, client = _limiter()
        # The ledger already shows 0.95 spent in this period; Redis has no counter.
        period_start = period_bounds("monthly", "UTC", dt.datetime.fromtimestamp(T0, dt.UTC))[0].timestamp()
        budget = dataclasses.replace(_budget("1.00", seed="0.95"), seed_period_start=period_start)
        with pytest.raises(GatewayError, match="exhausted"):
            await _admit(limiter, T0, budgets=[budget], worst_case_usd=Decimal("0.10"))
        await _admit(limiter, T0, budgets=[budget], worst_case_usd=Decimal("0.04"))
        await client.close()

    run(scenario())


@pytest.mark.parametrize(("usd", "tokens"), [(Decimal("-1"), 10), (Decimal("0.001"), -5)])
def test_the_admission_script_refuses_a_negative_reservation(usd: Decimal, tokens: int) -> None:
    """Defence in depth: a negative reservation would lower every budget it touches; the script refuses it."""
    from redis.exceptions import ResponseError

    async def scenario() -> None:
        limiter, client = _limiter()
        await limiter.load()
        try:
            with pytest.raises(ResponseError, match="invalid"):
                await _admit(limiter, T0, budgets=[_budget("10")], rate_limits=[_limit(tpm=1000)],
                             worst_case_usd=usd, worst_case_tokens=tokens)  # fmt: skip
        finally:
            await client.close()

    run(scenario())


@pytest.mark.parametrize("reserve", ["-5", "1.5", "nan", "inf", "1e300"])
def test_the_admission_script_refuses_a_non_integer_reservation(reserve: str) -> None:
    """What the limiter sends is an integer; the script itself refuses anything else, before any counter moves."""
    import redis

    from apps.enforcement.scripts import ADMIT

    client = redis.Redis.from_url(settings.REDIS_URL)
    key = names.budget_counter(f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:", 1, 0, organization_id=1)
    # KEYS: the budget's counter and its leased total. ARGV: now, request id, lease headroom, one budget
    # (limit, reserve, seed, mode, ttl, lease), no scopes.
    with pytest.raises(redis.ResponseError, match="invalid reservation"):
        client.eval(ADMIT, 2, key, names.leased(key), T0, "r1", 8, 1, 10**12, reserve, 0, "hard", 3600, 0, 0)
    assert client.get(key) is None, "nothing was reserved"
