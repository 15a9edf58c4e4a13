"""Budgets and rate limits, enforced in at most one Redis round trip per request.

Before forwarding, one Lua script checks every rate limit (requests/min,
tokens/min, concurrent requests) and every budget that applies, and only if
all pass reserves: +1 request, the worst-case tokens, a concurrency slot, and
the worst-case cost (prompt estimate + max output at the model's price) on
each budget. Scripts run atomically, so many gateway processes can never
together spend past a hard budget. After the response (or stream, or client
disconnect) a second script settles each reservation to what was really used.

Money in Redis is integer nano-dollars. Windows are 60 one-second buckets in a
hash per scope, so "per minute" means the last 60 seconds, not a fixed minute.
The scripts (``lua/``) are written for the fewest Redis calls per request
(`make bench` shows what they cost): with a budget and RPM, TPM and
concurrency limits an admission is seven calls and a settle six. In the
gateway, most requests run neither: they are admitted from the process's
leases (``apps.enforcement.leases``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis.exceptions import RedisError, ResponseError

from apps.core import names
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.core.snapshot import BudgetPolicy, RateLimitPolicy
from apps.enforcement import replies, scripts
from apps.enforcement.leases import (
    LEASE_HEADROOM,
    LEASE_SECONDS,
    MAX_LEASE_SLOTS,
    RETRY_AFTER_LEASES,
    LeaseBook,
    LeaseHolds,
    Unsettled,
)
from apps.enforcement.redis_clients import FastClient

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Admission:
    """What one request reserved, so it can be settled."""

    request_id: str
    second: int
    budget_keys: list[str] = field(default_factory=list)
    budget_reserved: list[int] = field(default_factory=list)
    token_keys: list[str] = field(default_factory=list)
    tokens_reserved: int = 0
    concurrency_keys: list[str] = field(default_factory=list)
    shadow_blocked: list[BudgetPolicy] = field(default_factory=list)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Set when this process's leases admitted it (no Redis call): settled into them while they last.
    holds: LeaseHolds | None = None

    @property
    def reserved(self) -> bool:
        return bool(self.budget_keys or self.token_keys or self.concurrency_keys)


class Limiter:
    """Admits and settles requests against budgets and rate limits.

    With ``leases`` (the gateway) most requests are admitted from this process's
    short leases without a Redis call; see ``apps.enforcement.leases``. Without
    (batch workers, tests of the exact path) every request runs the admission script.
    """

    def __init__(self, redis_client: FastClient, prefix: str, *, leases: bool = False) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._leasing = leases
        self._leases = LeaseBook()
        self._admit_sha, self._settle_sha = scripts.sha(scripts.ADMIT), scripts.sha(scripts.SETTLE)
        self._periods: dict[tuple[str, str, dt.datetime | None], tuple[float, float]] = {}
        # Budget id -> (the policy it was made for, period start, period end, counter key): every request asks.
        self._counters: dict[int, tuple[BudgetPolicy, float, float, str]] = {}
        self._scopes: dict[str, tuple[str, str]] = {}
        self._expirer: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Load the scripts into Redis (EVALSHA in pipelines needs them there)."""
        for script in scripts.ALL:
            await self._redis.execute("SCRIPT", "LOAD", script)

    def start(self) -> None:
        """Give leases back as they expire, also when no request comes to carry them."""
        if self._leasing:
            self._expirer = asyncio.create_task(self._expire_forever())

    async def stop(self) -> None:
        """Give every lease back (a clean shutdown leaves nothing reserved)."""
        if self._expirer is not None:
            self._expirer.cancel()
            await asyncio.gather(self._expirer, return_exceptions=True)
        try:
            await self.expire_leases(now=math.inf)
        except (RedisError, OSError):
            logger.warning("could not give leases back on shutdown; they stay reserved", exc_info=True)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 2)
            try:
                await self.expire_leases()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("giving expired leases back failed; will retry", exc_info=True)

    async def expire_leases(self, now: float | None = None) -> None:
        """Close every lease whose time is up and send what closed leases did not use back to Redis."""
        self._leases.expire(time.time() if now is None else now)
        returns = self._leases.take_returns()
        if returns:
            self._check_returns(await self._redis.execute_many(returns))

    def _check_returns(self, replies_: list[Any]) -> None:
        for reply in replies_:
            if isinstance(reply, ResponseError):
                # NOSCRIPT after a Redis restart: the counters went with it, so nothing is left to give back.
                logger.warning("giving a lease back failed: %s", reply)

    async def _run(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script, with any lease returns waiting ahead of it in the same round trip. Durable: what
        it reserves (a request's worst case, a lease) is on the replicas asked for before it is relied on."""
        *returns, reply = await self._redis.execute_many(
            [*self._leases.take_returns(), ("EVALSHA", sha, len(keys), *keys, *args)], durable=True
        )
        self._check_returns(returns)
        if isinstance(reply, ResponseError):
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            # Redis restarted and forgot the scripts: load them again (settles and returns need them too).
            await self.load()
            [reply] = await self._redis.execute_many([("EVALSHA", sha, len(keys), *keys, *args)], durable=True)
            if isinstance(reply, ResponseError):
                raise reply
        return reply

    def _scope_keys(self, limit: RateLimitPolicy) -> tuple[str, str]:
        """The window hash and in-flight zset of a rate-limit scope, built once per scope."""
        keys = self._scopes.get(limit.scope_name)
        if keys is None:
            org = limit.organization_id
            keys = self._scopes[limit.scope_name] = (
                names.rate_window(self._prefix, limit.scope_name, organization_id=org),
                names.rate_inflight(self._prefix, limit.scope_name, organization_id=org),
            )
        return keys

    def _period(self, budget: BudgetPolicy, now: float) -> tuple[float, float]:
        """The budget's current period as epoch seconds, cached until it ends."""
        cache_key = (budget.period, budget.timezone, budget.starts_at)
        cached = self._periods.get(cache_key)
        if cached is not None and cached[0] <= now < cached[1]:
            return cached
        start, end = period_bounds(
            budget.period, budget.timezone, dt.datetime.fromtimestamp(now, dt.UTC), budget.starts_at
        )
        bounds = (start.timestamp(), end.timestamp())
        self._periods[cache_key] = bounds
        return bounds

    def _counter(self, budget: BudgetPolicy, now: float) -> str:
        """The budget's counter key for the period ``now`` is in, made once per policy and period."""
        cached = self._counters.get(budget.id)
        if cached is not None and cached[0] is budget and cached[1] <= now < cached[2]:
            return cached[3]
        start, end = self._period(budget, now)
        key = names.budget_counter(self._prefix, budget.id, start, organization_id=budget.organization_id)
        self._counters[budget.id] = (budget, start, end, key)
        return key

    async def admit(
        self,
        *,
        request_id: str,
        budgets: list[BudgetPolicy],
        rate_limits: list[RateLimitPolicy],
        worst_case_usd: Decimal,
        worst_case_tokens: int,
        now: float | None = None,
        _retried: bool = False,
    ) -> Admission:
        """Reserve, or raise the 429 the app should see. ``now`` is injectable for tests."""
        wall_clock = now is None
        now = time.time() if now is None else now
        if not budgets and not rate_limits:
            return Admission(request_id=request_id, second=math.floor(now))
        reserve = to_nano(worst_case_usd)
        budget_keys = [self._counter(budget, now) for budget in budgets]
        if self._leasing and self._redis.connected:
            holds = self._leases.take(budget_keys, budgets, rate_limits, reserve, worst_case_tokens, now)
            renewal = self._leases.renewal(budget_keys, rate_limits) if holds is None and not _retried else None
            if renewal is not None:
                # This process is asking for a lease these limits need: its round trip, not one of our own.
                await asyncio.shield(renewal)  # shielded: a cancelled request must not cancel the others' wait
                holds = self._leases.take(budget_keys, budgets, rate_limits, reserve, worst_case_tokens, now)
            if holds is not None:
                return self._leased(request_id, holds, budget_keys, rate_limits, reserve, worst_case_tokens, now)
        leasing = self._leasing and not _retried
        periods = [self._period(budget, now) for budget in budgets]
        admission = Admission(request_id=request_id, second=math.floor(now))
        keys: list[str] = []
        args: list[Any] = [repr(now), request_id, LEASE_HEADROOM, len(budgets)]
        wanted_budgets: list[int] = []
        for budget, key, (start_ts, end_ts) in zip(budgets, budget_keys, periods, strict=True):
            seed = budget.seed_nano if budget.seed_period_start == start_ts else 0
            ttl = int(min(end_ts - now, 400 * 86400)) + 2 * 86400
            want = self._leases.budget_want(key, budget, reserve, now) if leasing else 0
            wanted_budgets.append(want)
            keys += [key, names.leased(key)]
            args += [budget.limit_nano, reserve, seed, budget.mode, ttl, want]
            admission.budget_keys.append(key)
            admission.budget_reserved.append(reserve)
        args.append(len(rate_limits))
        wanted_scopes: list[tuple[int, str]] = []
        for limit in rate_limits:
            window_key, inflight_key = self._scope_keys(limit)
            keys += [window_key, inflight_key]
            size, prefix = self._leases.scope_want(limit, worst_case_tokens, now) if leasing else (0, "")
            wanted_scopes.append((size, prefix))
            args += [
                limit.requests_per_minute,
                limit.tokens_per_minute,
                limit.max_concurrent,
                worst_case_tokens,
                size if limit.requests_per_minute else 0,
                size * worst_case_tokens if limit.tokens_per_minute else 0,
                min(size, MAX_LEASE_SLOTS) if limit.max_concurrent else 0,
                prefix,
            ]
            if limit.tokens_per_minute:
                admission.token_keys.append(window_key)
            if limit.max_concurrent:
                admission.concurrency_keys.append(inflight_key)
        admission.tokens_reserved = worst_case_tokens
        asked = [k for k, w in zip(admission.budget_keys, wanted_budgets, strict=True) if w]
        asked += [lim.scope_name for lim, (size, _) in zip(rate_limits, wanted_scopes, strict=True) if size]
        waiter = self._leases.ask(asked)
        try:
            status, index, retry_ms, shadow_csv, left_requests, left_tokens, *grants = await self._run(
                self._admit_sha, keys, args
            )
            if status == scripts.STATUS_OK and self._leasing:
                self._take_grants(budgets, rate_limits, admission, wanted_budgets, wanted_scopes, grants, now)
        finally:
            self._leases.answered(asked, waiter, now)
        if status == scripts.STATUS_LEASED and not _retried:
            # Other processes' leases stand in the way: they are all back within RETRY_AFTER_LEASES.
            await asyncio.sleep(RETRY_AFTER_LEASES)
            return await self.admit(
                request_id=request_id, budgets=budgets, rate_limits=rate_limits, worst_case_usd=worst_case_usd,
                worst_case_tokens=worst_case_tokens, now=None if wall_clock else now + RETRY_AFTER_LEASES,
                _retried=True,
            )  # fmt: skip
        if status in (scripts.STATUS_BUDGET, scripts.STATUS_LEASED):
            raise replies.budget_exhausted(budgets[index - 1], worst_case_usd)
        if status in (scripts.STATUS_RPM, scripts.STATUS_TPM, scripts.STATUS_CONCURRENCY):
            raise replies.rate_limited(status, rate_limits[index - 1], retry_ms, left_tokens)
        if shadow_csv:
            shadow_ids = {int(i) for i in shadow_csv.decode().split(",")}
            admission.shadow_blocked = [b for i, b in enumerate(budgets, 1) if i in shadow_ids]
        admission.headers = replies.remaining_headers(rate_limits, left_requests, left_tokens)
        return admission

    def _leased(
        self,
        request_id: str,
        holds: LeaseHolds,
        budget_keys: list[str],
        rate_limits: list[RateLimitPolicy],
        reserve: int,
        tokens: int,
        now: float,
    ) -> Admission:
        """The admission of a request the leases took (no Redis call); ``budget_keys`` are its leases' keys."""
        token_keys, concurrency_keys = [], []
        for scope_lease in holds.scopes:
            _rpm, tpm, conc = scope_lease.limits
            if tpm:
                token_keys.append(scope_lease.window_key)
            if conc:
                concurrency_keys.append(scope_lease.inflight_key)
        return Admission(
            request_id=request_id, second=math.floor(now), budget_keys=budget_keys,
            budget_reserved=[reserve] * len(budget_keys), token_keys=token_keys, tokens_reserved=tokens,
            concurrency_keys=concurrency_keys,
            headers=replies.remaining_headers(rate_limits, holds.left_requests, holds.left_tokens), holds=holds,
        )  # fmt: skip

    def _take_grants(
        self,
        budgets: list[BudgetPolicy],
        rate_limits: list[RateLimitPolicy],
        admission: Admission,
        wanted_budgets: list[int],
        wanted_scopes: list[tuple[int, str]],
        grants: list[int],
        now: float,
    ) -> None:
        for budget, key, want, granted in zip(budgets, admission.budget_keys, wanted_budgets, grants, strict=False):
            if want:
                self._leases.grant_budget(key, budget, want, granted, now)
        scope_grants = grants[len(budgets) :]
        for j, (limit, (size, prefix)) in enumerate(zip(rate_limits, wanted_scopes, strict=True)):
            if size:
                grant = scope_grants[5 * j : 5 * j + 5]
                self._leases.grant_scope(limit, self._scope_keys(limit), size, prefix, grant, now)

    async def settle(
        self, admission: Admission, *, actual_usd: Decimal, actual_tokens: int, now: float | None = None
    ) -> None:
        """Replace the reservation by what was used, and free the concurrency slot.

        What was taken from a lease that is still open goes back into it; the rest
        (and any closed leases' unused part) goes to Redis, durably: a settle can add
        spend (usage past the worst case). The gateway sends ``settle_commands`` with
        the ledger event instead.
        """
        commands = self.settle_commands(admission, actual_usd=actual_usd, actual_tokens=actual_tokens, now=now)
        if not commands:
            return
        *returns, reply = await self._redis.execute_many(commands, durable=True)
        self._check_returns(returns)
        if isinstance(reply, ResponseError):
            raise reply

    def settle_commands(
        self, admission: Admission, *, actual_usd: Decimal, actual_tokens: int, now: float | None = None
    ) -> list[tuple[Any, ...]]:
        """``settle``'s bookkeeping, now: what goes back into open leases is put back, and the Redis
        commands for the rest (and for leases given back since) are returned, to send with the ledger event.

        The settle script is loaded at start-up; if Redis lost it since (a restart), the one settle sent
        with an event fails and is logged, leaving the reservation in place: a budget errs on the safe
        side, and an in-flight slot expires after 15 minutes."""
        if not admission.reserved:
            return []
        actual = to_nano(actual_usd)
        token_delta = actual_tokens - admission.tokens_reserved
        rest: Unsettled | None
        if admission.holds is None:
            rest = Unsettled(
                budget_keys=admission.budget_keys,
                budget_deltas=[actual - r for r in admission.budget_reserved],
                token_keys=admission.token_keys,
                token_args=[n for _ in admission.token_keys for n in (admission.second, token_delta)],
                slot_keys=admission.concurrency_keys,
                slot_members=[admission.request_id] * len(admission.concurrency_keys),
            )
        else:
            rest = self._leases.settle(admission.holds, admission.budget_reserved, actual, token_delta)
        commands = self._leases.take_returns()
        if rest is not None and (rest.budget_keys or rest.token_keys or rest.slot_keys):
            keys = [*rest.budget_keys, *rest.token_keys, *rest.slot_keys]
            args = [
                len(rest.budget_keys),
                len(rest.token_keys),
                len(rest.slot_keys),
                math.floor(time.time() if now is None else now),
                *rest.budget_deltas,
                *rest.token_args,
                *rest.slot_members,
            ]
            commands.append(("EVALSHA", self._settle_sha, len(keys), *keys, *args))
        return commands
