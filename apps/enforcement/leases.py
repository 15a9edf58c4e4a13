"""Short leases on budgets and rate limits, so most requests are admitted without a Redis call.

When the admission script has plenty of headroom on a budget or a rate-limit
scope, it reserves a little more than the request needs: a slice of the budget
(so many requests' worst case), some requests and tokens in the current second
of the sliding window, a few concurrency slots. The slice is counted in Redis
like any reservation, so other gateway processes see it and no process can
spend what another holds. The process then admits its next requests from the
slice locally and settles them into it locally, until the lease expires
(``LEASE_SECONDS``) or runs out; what is left then goes back to Redis.

Why this keeps the guarantees:
- Overspend: a lease is reserved atomically against the limit like a request,
  so a budget is never exceeded by leases (the bound stays one request's worth).
- Headroom: a lease is granted only while the limit has ``LEASE_HEADROOM`` more
  leases' worth left after it, so near a limit every request is checked exactly.
- False refusals: a hard-budget refusal that only happens because of other
  processes' leases comes back as "leased", and the gateway asks again once those
  leases have expired and gone back (one wait of about ``RETRY_AFTER_LEASES``).
- Windows: a lease's requests and tokens are counted in the second it was
  granted, up to ``LEASE_SECONDS`` before they are used, so a 60 s window can
  see at most the leases granted in its first ``LEASE_SECONDS`` as already gone.
- A process that dies holding a lease leaves its slice reserved: a budget errs
  toward refusing until its period ends, a window until it slides past, a slot
  until the 15-minute sweep, the same as a request in flight when a gateway dies.

``LeaseBook`` is one process's leases; the ``Limiter`` asks it first and settles into it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from apps.core import names
from apps.core.snapshot import BudgetPolicy, RateLimitPolicy
from apps.enforcement import scripts

LEASE_SECONDS = 0.2
# A lease is granted only if the limit still has this many more leases' worth of headroom after it.
LEASE_HEADROOM = 8
MIN_LEASE = 8  # requests' worth
MAX_LEASE = 2048
MAX_LEASE_SLOTS = 64
# Any lease is back in Redis at most this long after it was granted (it expires after LEASE_SECONDS and
# the expirer looks every LEASE_SECONDS / 2), with a margin: how long a refusal caused by leases waits.
RETRY_AFTER_LEASES = LEASE_SECONDS * 1.5 + 0.05
# What the book remembers of a name that holds no lease (its next lease's size, that its last request was
# refused) is forgotten this long after it was last set. Budget counter keys name their period, so without
# this a long-lived process would keep an entry for every budget period and scope it ever leased.
FORGET_SECONDS = 600.0

Command = tuple[Any, ...]


@dataclass(slots=True)
class BudgetLease:
    key: str
    limit_nano: int
    mode: str
    granted: int
    available: int  # nano-dollars still to hand out; requests' unused worst case comes back here
    expires: float
    size: int  # requests' worth it was asked for, to size the next one
    used: int = 0
    open: bool = True


@dataclass(slots=True)
class ScopeLease:
    scope_name: str
    window_key: str
    inflight_key: str
    limits: tuple[int, int, int]  # rpm, tpm, concurrency when granted: a changed limit ends the lease
    second: int  # the window second its requests and tokens are counted in
    requests: int  # still to hand out (only counted where there is an RPM limit)
    tokens: int
    free_slots: list[str]
    left_requests: int  # the window's remaining requests/tokens as the grant saw them, for headers
    left_tokens: int
    expires: float
    size: int
    used: int = 0  # requests admitted from it
    used_tokens: int = 0
    open: bool = True


@dataclass(slots=True)
class LeaseHolds:
    """What a request admitted from leases took from each, so it can give back what it did not use."""

    budgets: list[BudgetLease]
    scopes: list[ScopeLease]
    members: list[str] = field(default_factory=list)  # its concurrency slot per scope with a limit
    left_requests: int = -1  # the tightest remaining requests and tokens, for the rate-limit headers
    left_tokens: int = -1


@dataclass(slots=True)
class Unsettled:
    """What a settle must still send to Redis: the parts taken from leases that closed meanwhile."""

    budget_keys: list[str] = field(default_factory=list)
    budget_deltas: list[int] = field(default_factory=list)
    token_keys: list[str] = field(default_factory=list)
    token_args: list[int] = field(default_factory=list)  # second, delta per token key
    slot_keys: list[str] = field(default_factory=list)
    slot_members: list[str] = field(default_factory=list)


def next_size(size: int, used: int, *, ran_out: bool) -> int:
    """Twice as big after a lease ran out before expiring, half as big after one expired mostly unused."""
    if ran_out:
        return min(size * 2, MAX_LEASE)
    return max(size // 2, MIN_LEASE) if used < size // 2 else size


def budget_lease_serves(lease: BudgetLease, budget: BudgetPolicy, reserve: int, now: float) -> bool:
    return (
        now < lease.expires
        and lease.available >= reserve
        and lease.limit_nano == budget.limit_nano
        and lease.mode == budget.mode
    )


def scope_lease_serves(lease: ScopeLease, limit: RateLimitPolicy, tokens: int, now: float) -> bool:
    rpm, tpm, conc = lease.limits
    return (
        now < lease.expires
        and (rpm, tpm, conc) == (limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrent)
        and (not rpm or lease.requests >= 1)
        and (not tpm or lease.tokens >= tokens)
        and (not conc or bool(lease.free_slots))
    )


class LeaseBook:
    """One process's leases: admits from them, sizes the next ones, queues what goes back to Redis."""

    def __init__(self) -> None:
        self.budgets: dict[str, BudgetLease] = {}  # by counter key
        self.scopes: dict[str, ScopeLease] = {}  # by scope name
        self._sizes: dict[str, int] = {}
        # Budget keys and scopes with a lease request on its way, each to the future its round trip's end
        # settles: concurrent requests don't ask again, and those that find no lease wait for it (``renewal``).
        self.asking: dict[str, asyncio.Future[None]] = {}
        # Budget keys and scopes whose last lease request left them without a lease (near a limit): a request
        # finding no lease there runs its own admission at once rather than wait on a lease unlikely to come.
        self._ungranted: set[str] = set()
        # When each name's size or ungranted mark was last set, for ``_forget_idle``.
        self._noted: dict[str, float] = {}
        self._next_forget = 0.0
        self._returns: list[Command] = []  # closed leases' unused part, sent with the next round trip
        self._ids = itertools.count(1)
        self._slot_prefix = f"lease:{os.getpid()}:{secrets.token_hex(4)}:"
        self._return_budget_sha, self._return_scope_sha = (
            scripts.sha(scripts.RETURN_BUDGET),
            scripts.sha(scripts.RETURN_SCOPE),
        )

    # --- admitting from leases ----------------------------------------------------------------

    def take(
        self,
        budget_keys: list[str],
        budgets: list[BudgetPolicy],
        rate_limits: list[RateLimitPolicy],
        reserve: int,
        tokens: int,
        now: float,
    ) -> LeaseHolds | None:
        """Take one request's reservation from the leases, if every budget and scope has one that can."""
        budget_leases = []
        for key, budget in zip(budget_keys, budgets, strict=True):
            lease = self.budgets.get(key)
            if lease is None or not budget_lease_serves(lease, budget, reserve, now):
                return None
            budget_leases.append(lease)
        scope_leases = []
        for limit in rate_limits:
            scope_lease = self.scopes.get(limit.scope_name)
            if scope_lease is None or not scope_lease_serves(scope_lease, limit, tokens, now):
                return None
            scope_leases.append(scope_lease)
        holds = LeaseHolds(budgets=budget_leases, scopes=scope_leases)
        for lease in budget_leases:
            lease.available -= reserve
            lease.used += 1
        for scope_lease in scope_leases:
            rpm, tpm, conc = scope_lease.limits
            scope_lease.used += 1
            if rpm:
                scope_lease.requests -= 1
                left = scope_lease.left_requests - scope_lease.used
                holds.left_requests = left if holds.left_requests < 0 else min(left, holds.left_requests)
            if tpm:
                scope_lease.tokens -= tokens
                scope_lease.used_tokens += tokens
                left = scope_lease.left_tokens - scope_lease.used_tokens
                holds.left_tokens = left if holds.left_tokens < 0 else min(left, holds.left_tokens)
            if conc:
                holds.members.append(scope_lease.free_slots.pop())
        return holds

    def settle(self, holds: LeaseHolds, reserved: list[int], actual: int, token_delta: int) -> Unsettled | None:
        """Give a request's unused part back to the leases it came from; what belongs to leases that closed
        meanwhile is returned, to be settled in Redis (None: nothing, as for most requests)."""
        rest: Unsettled | None = None
        for lease, reserve in zip(holds.budgets, reserved, strict=True):
            if lease.open:
                lease.available += reserve - actual
            else:
                rest = rest or Unsettled()
                rest.budget_keys.append(lease.key)
                rest.budget_deltas.append(actual - reserve)
        members = iter(holds.members)
        for scope_lease in holds.scopes:
            _rpm, tpm, conc = scope_lease.limits
            if tpm:
                if scope_lease.open:
                    scope_lease.tokens -= token_delta
                    scope_lease.used_tokens += token_delta
                else:
                    rest = rest or Unsettled()
                    rest.token_keys.append(scope_lease.window_key)
                    rest.token_args += [scope_lease.second, token_delta]
            if conc:
                member = next(members)
                if scope_lease.open:
                    scope_lease.free_slots.append(member)
                else:
                    rest = rest or Unsettled()
                    rest.slot_keys.append(scope_lease.inflight_key)
                    rest.slot_members.append(member)
        return rest

    # --- asking for leases --------------------------------------------------------------------

    def ask(self, asked: list[str]) -> asyncio.Future[None] | None:
        """Note that one request is asking for leases on ``asked``; the future to hand to ``answered``."""
        if not asked:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for name in asked:
            self.asking[name] = waiter
        return waiter

    def answered(self, asked: list[str], waiter: asyncio.Future[None] | None, now: float) -> None:
        """The lease request for ``asked`` is over (granted, refused or failed): wake whoever waits on it."""
        for name in asked:
            if self.asking.get(name) is waiter:
                del self.asking[name]
            if name in self.budgets or name in self.scopes:
                self._ungranted.discard(name)
            else:
                self._ungranted.add(name)
                self._noted[name] = now
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def renewal(self, budget_keys: list[str], rate_limits: list[RateLimitPolicy]) -> asyncio.Future[None] | None:
        """A lease request on its way for a budget or scope of these, which usually gets a lease (None:
        none). Under load, a lease runs out while the requests in flight keep coming: without this each of
        them ran the admission script itself until the new lease came (~7% of requests at 16 connections)."""
        for name in budget_keys:
            waiter = self.asking.get(name)
            if waiter is not None and name not in self._ungranted:
                return waiter
        for limit in rate_limits:
            waiter = self.asking.get(limit.scope_name)
            if waiter is not None and limit.scope_name not in self._ungranted:
                return waiter
        return None

    def budget_want(self, key: str, budget: BudgetPolicy, reserve: int, now: float) -> int:
        """The lease to ask for on this budget: none while the one held can still serve (or no reserve)."""
        if key in self.asking:
            return 0
        lease = self.budgets.get(key)
        if lease is not None:
            if budget_lease_serves(lease, budget, reserve, now):
                return 0
            self._close(self.budgets.pop(key), now)
        return reserve * self._sizes.get(key, MIN_LEASE)

    def scope_want(self, limit: RateLimitPolicy, tokens: int, now: float) -> tuple[int, str]:
        """The lease to ask for on this scope, in requests' worth (0: the one held can still serve), and the
        prefix of the slot names it would hold."""
        if limit.scope_name in self.asking:
            return 0, ""
        lease = self.scopes.get(limit.scope_name)
        if lease is not None:
            if scope_lease_serves(lease, limit, tokens, now):
                return 0, ""
            self._close(self.scopes.pop(limit.scope_name), now)
        return self._sizes.get(limit.scope_name, MIN_LEASE), f"{self._slot_prefix}{next(self._ids)}:"

    def grant_budget(self, key: str, budget: BudgetPolicy, want: int, granted: int, now: float) -> None:
        """Install what the script granted on a budget (nothing granted: ask for less next time)."""
        if not granted:
            self._sizes[key] = max(self._sizes.get(key, MIN_LEASE) // 2, MIN_LEASE)
            self._noted[key] = now
            return
        self._install(self.budgets, key, now)
        self.budgets[key] = BudgetLease(
            key=key, limit_nano=budget.limit_nano, mode=budget.mode, granted=granted, available=granted,
            expires=now + LEASE_SECONDS, size=self._sizes.get(key, MIN_LEASE),
        )  # fmt: skip

    def grant_scope(
        self,
        limit: RateLimitPolicy,
        keys: tuple[str, str],
        size: int,
        prefix: str,
        grant: list[int],
        now: float,
    ) -> None:
        """Install what the script granted on a scope: ``grant`` is requests, tokens, slots, and the window's
        remaining requests and tokens."""
        requests, tokens, slots, left_requests, left_tokens = grant
        if not (requests or tokens or slots):
            self._sizes[limit.scope_name] = max(size // 2, MIN_LEASE)
            self._noted[limit.scope_name] = now
            return
        lease = ScopeLease(
            scope_name=limit.scope_name, window_key=keys[0], inflight_key=keys[1],
            limits=(limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrent),
            second=math.floor(now), requests=requests, tokens=tokens,
            free_slots=[f"{prefix}{k}" for k in range(slots, 0, -1)], left_requests=left_requests,
            left_tokens=left_tokens, expires=now + LEASE_SECONDS, size=size,
        )  # fmt: skip
        if scope_lease_serves(lease, limit, 1 if limit.tokens_per_minute else 0, now):
            self._install(self.scopes, limit.scope_name, now)
            self.scopes[limit.scope_name] = lease
        else:
            # Headroom for some of its limits but not all: it could serve nobody, so it goes back.
            self._give_back(lease, now)

    def _install(self, leases: dict[str, Any], name: str, now: float) -> None:
        """Make room for a new lease. Only one request asks at a time, so none should be there; if one
        is, it is given back rather than dropped (a dropped lease would stay reserved until period end)."""
        old = leases.pop(name, None)
        if old is not None:
            self._close(old, now)

    # --- giving leases back -------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Close every lease whose time is up (queueing what it did not use)."""
        for leases in (self.budgets, self.scopes):
            for name in [name for name, lease in leases.items() if now >= lease.expires]:
                self._close(leases.pop(name), now)
        if now >= self._next_forget:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        """Forget the size and ungranted mark of every name left alone for ``FORGET_SECONDS`` (none is held
        or asked for); a name used again starts from the smallest lease, as a new one does."""
        self._next_forget = now + FORGET_SECONDS / 2
        for name in [name for name, noted in self._noted.items() if now - noted >= FORGET_SECONDS]:
            if name not in self.budgets and name not in self.scopes and name not in self.asking:
                self._sizes.pop(name, None)
                self._ungranted.discard(name)
                del self._noted[name]

    def _close(self, lease: BudgetLease | ScopeLease, now: float) -> None:
        """End a lease: size the next one by how this one went, and queue its unused part to go back."""
        name = lease.key if isinstance(lease, BudgetLease) else lease.scope_name
        self._sizes[name] = next_size(lease.size, lease.used, ran_out=now < lease.expires)
        self._noted[name] = now
        self._give_back(lease, now)

    def _give_back(self, lease: BudgetLease | ScopeLease, now: float) -> None:
        lease.open = False
        if isinstance(lease, BudgetLease):
            keys: list[Any] = [lease.key, names.leased(lease.key)]
            args: list[Any] = [lease.available, lease.granted]
            self._returns.append(("EVALSHA", self._return_budget_sha, len(keys), *keys, *args))
        else:
            now_s = math.floor(now if math.isfinite(now) else time.time())
            unused_requests = lease.requests if lease.limits[0] else 0
            unused_tokens = lease.tokens if lease.limits[1] else 0
            keys = [lease.window_key, lease.inflight_key]
            args = [lease.second, now_s, unused_requests, unused_tokens, *lease.free_slots]
            self._returns.append(("EVALSHA", self._return_scope_sha, len(keys), *keys, *args))

    def take_returns(self) -> list[Command]:
        """The queued lease returns, to send now. They are taken for good: a return whose round trip
        fails is not sent again, because Redis may have applied it before the connection broke and
        applying it twice would under-count. Dropped, a lease stays reserved, which errs toward refusing."""
        commands, self._returns = self._returns, []
        return commands
