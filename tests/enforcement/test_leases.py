"""Per-process leases on budgets and rate limits, against real Redis (apps/enforcement/leases.py).

Two ``Limiter`` objects with their own connections stand for two gateway processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
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
from apps.enforcement.leases import FORGET_SECONDS, LEASE_SECONDS, MIN_LEASE
from apps.enforcement.limiter import Admission, Limiter

T0 = 1_795_000_000.0  # a fixed simulated epoch


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _budget(amount: str) -> BudgetPolicy:
    return BudgetPolicy(
        id=7, name="shared", organization_id=1, scope="organization", team_id=None, project_id=None,
        api_key_id=None, feature="", end_user="", limit_nano=to_nano(Decimal(amount)), amount_usd=Decimal(amount),
        period="monthly", timezone="UTC", starts_at=None, mode="hard", seed_period_start=0.0, seed_nano=0,
    )  # fmt: skip


def _budget_key(prefix: str, now: float) -> str:
    start = period_bounds("monthly", "UTC", dt.datetime.fromtimestamp(now, dt.UTC))[0]
    return names.budget_counter(prefix, 7, start.timestamp(), organization_id=1)


class Process:
    """One gateway process's limiter and its own Redis connection."""

    def __init__(self, prefix: str, *, leases: bool = True) -> None:
        self.client = FastRedis(settings.REDIS_URL)
        self.limiter = Limiter(self.client, prefix, leases=leases)

    async def admit(self, now: float | None, **kwargs: Any) -> Admission:
        kwargs.setdefault("budgets", [])
        kwargs.setdefault("rate_limits", [])
        kwargs.setdefault("worst_case_usd", Decimal("0"))
        kwargs.setdefault("worst_case_tokens", 0)
        return await self.limiter.admit(request_id=uuid.uuid4().hex, now=now, **kwargs)


async def _read(client: FastRedis, prefix: str, now: float) -> dict[str, int]:
    """The shared state in Redis that leases must leave exact."""
    budget_key = _budget_key(prefix, now)
    window = names.rate_window(prefix, "project:1", organization_id=1)
    spent, leased, rsum, tsum, slots = await client.execute_many([
        ("GET", budget_key), ("GET", budget_key + ":leased"), ("HGET", window, "rsum"), ("HGET", window, "tsum"),
        ("ZCARD", names.rate_inflight(prefix, "project:1", organization_id=1)),
    ])  # fmt: skip
    return {"spent": int(spent or 0), "leased": int(leased or 0), "requests": int(rsum or 0),
            "tokens": int(tsum or 0), "slots": int(slots)}  # fmt: skip


def test_leased_requests_touch_no_redis_state_and_come_out_exact_when_given_back() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    budget = _budget("100")
    limit = RateLimitPolicy(scope_name="project:1", organization_id=1, requests_per_minute=10**6,
                            tokens_per_minute=10**9, max_concurrent=1000)  # fmt: skip
    ask = {"budgets": [budget], "rate_limits": [limit], "worst_case_usd": Decimal("0.01"), "worst_case_tokens": 100}

    async def scenario() -> tuple[dict[str, int], dict[str, int], dict[str, int], list[Admission]]:
        gateway = Process(prefix)
        first = await gateway.admit(T0, **ask)
        after_first = await _read(gateway.client, prefix, T0)
        # The first request ran the script and took a lease of MIN_LEASE requests' worth on both scopes:
        # the next MIN_LEASE requests are admitted from it and change nothing in Redis.
        local = [await gateway.admit(T0 + 0.001 * i, **ask) for i in range(1, MIN_LEASE + 1)]
        after_local = await _read(gateway.client, prefix, T0)
        for admission in [first, *local]:
            await gateway.limiter.settle(admission, actual_usd=Decimal("0.004"), actual_tokens=60, now=T0 + 0.01)
        await gateway.limiter.expire_leases(now=T0 + 1)
        settled = await _read(gateway.client, prefix, T0 + 1)
        await gateway.client.close()
        return after_first, after_local, settled, local

    after_first, after_local, settled, local = run(scenario())
    assert after_first == {
        "spent": to_nano(Decimal("0.01")) * (1 + MIN_LEASE), "leased": to_nano(Decimal("0.01")) * MIN_LEASE,
        "requests": 1 + MIN_LEASE, "tokens": 100 * (1 + MIN_LEASE), "slots": 1 + MIN_LEASE,
    }  # fmt: skip
    assert after_local == after_first
    assert all(a.holds is not None for a in local)
    # Headers stay truthful from the lease: each local request sees one fewer request remaining.
    remaining = [dict(a.headers)[b"x-ratelimit-remaining-requests"] for a in local[:2]]
    assert remaining == [str(10**6 - 2).encode(), str(10**6 - 3).encode()]
    # Given back, Redis holds exactly what the nine requests used: no lease, no slot, no reserve left over.
    assert settled == {
        "spent": to_nano(Decimal("0.004")) * (1 + MIN_LEASE), "leased": 0, "requests": 1 + MIN_LEASE,
        "tokens": 60 * (1 + MIN_LEASE), "slots": 0,
    }  # fmt: skip


def test_near_the_limit_no_lease_is_granted_and_every_request_is_exact() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"

    async def scenario() -> list[int]:
        gateway = Process(prefix)
        # A lease of 8 x $0.01 needs 9 leases' worth of headroom ($0.72) after it: $0.50 never has it.
        spent = []
        for _ in range(3):
            admission = await gateway.admit(T0, budgets=[_budget("0.50")], worst_case_usd=Decimal("0.01"))
            assert admission.holds is None
            spent.append((await _read(gateway.client, prefix, T0))["spent"])
        await gateway.client.close()
        return spent

    assert run(scenario()) == [to_nano(Decimal("0.01")) * n for n in (1, 2, 3)]


def test_requests_that_find_a_lease_on_its_way_wait_for_it_instead_of_each_running_the_script() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    budget = _budget("100")
    ask = {"budgets": [budget], "worst_case_usd": Decimal("0.01")}

    async def scenario() -> tuple[list[Admission], dict[str, int]]:
        gateway = Process(prefix)
        await gateway.client.execute("PING")  # connected, as a gateway is from its start
        # 16 requests at once and no lease yet: the first asks for one, the others find it on its way.
        admitted = await asyncio.gather(*(gateway.admit(T0, **ask) for _ in range(16)))
        state = await _read(gateway.client, prefix, T0)
        await gateway.client.close()
        return list(admitted), state

    admitted, state = run(scenario())
    leased = [admission for admission in admitted if admission.holds is not None]
    # The lease (MIN_LEASE requests' worth) admits MIN_LEASE of the 15 that waited; the other 7 find it used up
    # and run the script, each for itself. Without the wait, all 15 ran it and none was leased.
    assert len(leased) == MIN_LEASE
    scripted = len(admitted) - len(leased)
    assert scripted == 16 - MIN_LEASE
    # Each of the 16 reservations is counted in Redis once: the used-up lease went back with the scripts that
    # followed it (what it admitted stays spent), and the lease one of them took is held apart.
    assert state["leased"] > 0
    assert state["spent"] - state["leased"] == to_nano(Decimal("0.01")) * len(admitted)


def test_no_request_waits_on_a_lease_request_where_the_last_one_got_nothing() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    near = _budget("0.50")  # no lease is ever granted on it (see the test above)
    roomy = RateLimitPolicy(scope_name="project:1", organization_id=1, requests_per_minute=10**6,
                            tokens_per_minute=0, max_concurrent=0)  # fmt: skip

    async def scenario() -> tuple[list[Admission], bool, bool]:
        gateway = Process(prefix)
        book = gateway.limiter._leases
        await gateway.admit(T0, budgets=[near], worst_case_usd=Decimal("0.01"))  # asked, got nothing
        key = _budget_key(prefix, T0)
        waiter = book.ask([key, roomy.scope_name])
        waits_near = book.renewal([key], []) is not None
        waits_roomy = book.renewal([], [roomy]) is not None  # never refused yet: a lease usually comes
        book.answered([key, roomy.scope_name], waiter, T0)
        assert waiter is not None and waiter.done() and not book.asking
        # Concurrent requests near the limit all run the script at once, exactly, none of them leased.
        admitted = await asyncio.gather(
            *(gateway.admit(T0, budgets=[near], worst_case_usd=Decimal("0.01")) for _ in range(8))
        )
        await gateway.client.close()
        return list(admitted), waits_near, waits_roomy

    admitted, waits_near, waits_roomy = run(scenario())
    assert not waits_near and waits_roomy
    assert all(admission.holds is None for admission in admitted)


def test_a_refusal_caused_only_by_another_process_lease_waits_for_it_instead() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    budget = _budget("1.00")

    async def scenario() -> tuple[float, GatewayError]:
        leasing, exact = Process(prefix), Process(prefix, leases=False)
        leasing.limiter.start()
        # Process A takes $0.01 for its request and a lease of $0.08: $0.09 reserved.
        await leasing.admit(None, budgets=[budget], worst_case_usd=Decimal("0.01"))
        # Process B asks $0.95: $0.04 too much while A holds its lease, enough once A gives it back.
        started = time.monotonic()
        await exact.admit(None, budgets=[budget], worst_case_usd=Decimal("0.95"))
        waited = time.monotonic() - started
        # $0.96 reserved now: a request for $0.10 is a real refusal.
        with pytest.raises(GatewayError) as refused:
            await exact.admit(None, budgets=[budget], worst_case_usd=Decimal("0.10"))
        await leasing.limiter.stop()
        await leasing.client.close()
        await exact.client.close()
        return waited, refused.value

    waited, refused = run(scenario())
    assert waited >= LEASE_SECONDS / 2, "admitted before the lease could have gone back"
    assert refused.status == 429 and refused.code == "insufficient_quota"


def test_tokens_per_minute_holds_within_5_percent_with_leases_on_two_processes() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    limit = RateLimitPolicy(
        scope_name="project:1", organization_id=1, requests_per_minute=0, tokens_per_minute=600_000, max_concurrent=0
    )

    async def scenario() -> tuple[list[tuple[float, int]], int]:
        processes = [Process(prefix), Process(prefix)]
        admitted: list[tuple[float, int]] = []
        leased = 0
        # 60 s at half the limit (leases granted and given back all along), then 90 s at 3x the limit;
        # the two processes take turns; each request reserves 120 tokens and uses 100.
        now, step = T0, 0
        while now < T0 + 150:
            rate = 50 if now < T0 + 60 else 300  # requests per second, all processes together
            process = processes[step % 2]
            try:
                admission = await process.admit(now, rate_limits=[limit], worst_case_tokens=120)
            except GatewayError as exc:
                assert exc.code == "rate_limit_exceeded"
            else:
                leased += admission.holds is not None
                await process.limiter.settle(admission, actual_usd=Decimal(0), actual_tokens=100, now=now)
                admitted.append((now, 100))
            for other in processes:
                await other.limiter.expire_leases(now=now)
            step += 1
            now += 1 / rate
        for process in processes:
            await process.client.close()
        return admitted, leased

    admitted, leased = run(scenario())
    assert leased > 1000, "the test must exercise leases"
    worst = best = 0
    for start in range(0, 91):  # every whole-second window that ends in the busy phase
        used = sum(tokens for at, tokens in admitted if T0 + start <= at < T0 + start + 60)
        worst = max(worst, used)
        if start >= 60:
            best = used if not best else min(best, used)
    assert worst <= 600_000 * 1.05, f"a 60 s window carried {worst} tokens against a 600000 limit"
    assert best >= 600_000 * 0.80, f"leases starved traffic: a busy window carried only {best}"


def test_a_request_never_waits_on_another_organisations_lease_request() -> None:
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    mine = RateLimitPolicy(scope_name="project:1", organization_id=1, requests_per_minute=10**6,
                           tokens_per_minute=0, max_concurrent=0)  # fmt: skip
    theirs = RateLimitPolicy(scope_name="project:2", organization_id=2, requests_per_minute=10**6,
                             tokens_per_minute=0, max_concurrent=0)  # fmt: skip

    async def scenario() -> tuple[bool, bool]:
        book = Process(prefix).limiter._leases
        their_budget = names.budget_counter(prefix, 8, T0, organization_id=2)
        waiter = book.ask([their_budget, theirs.scope_name])  # organisation 2 is asking
        mine_waits = book.renewal([_budget_key(prefix, T0)], [mine]) is not None
        theirs_wait = book.renewal([their_budget], [theirs]) is not None
        book.answered([their_budget, theirs.scope_name], waiter, T0)
        return mine_waits, theirs_wait

    mine_waits, theirs_wait = run(scenario())
    assert not mine_waits and theirs_wait


def test_a_long_lived_process_forgets_what_it_knew_of_budget_periods_long_over() -> None:
    """Budget counter keys name their period: a process up for a year must not keep a year of them."""
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    roomy, near = _budget("100"), dataclasses.replace(_budget("0.50"), id=8)
    months = [T0 + k * 31 * 86400 for k in range(12)]

    async def scenario() -> tuple[set[str], set[str], set[str], str]:
        gateway = Process(prefix)
        book = gateway.limiter._leases
        for now in months:
            # A lease on this month's counter of the roomy budget (its next size is remembered when it
            # closes), and a refused lease request on the near one (remembered as ungranted).
            await gateway.admit(now, budgets=[roomy, near], worst_case_usd=Decimal("0.01"))
            await gateway.limiter.expire_leases(now=now + 1)
        last = months[-1] + FORGET_SECONDS + 1
        await gateway.admit(last, budgets=[roomy], worst_case_usd=Decimal("0.01"))  # this month, used again
        await gateway.limiter.expire_leases(now=last + 1)
        await gateway.client.close()
        return set(book._sizes), set(book._ungranted), set(book._noted), _budget_key(prefix, last)

    sizes, ungranted, noted, current = run(scenario())
    assert sizes == noted == {current}
    assert ungranted == set()
