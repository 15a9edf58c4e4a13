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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apps.core import names

LEASE_SECONDS = 0.2
# A lease is granted only if the limit still has this many more leases' worth of headroom after it.
LEASE_HEADROOM = 8
MIN_LEASE = 8  # requests' worth
MAX_LEASE = 2048
MAX_LEASE_SLOTS = 64
# Any lease is back in Redis at most this long after it was granted (it expires after LEASE_SECONDS and
# the expirer looks every LEASE_SECONDS / 2), with a margin: how long a refusal caused by leases waits.
RETRY_AFTER_LEASES = LEASE_SECONDS * 1.5 + 0.05

# KEYS: budget counter, its ":leased" total. ARGV: unused nano-dollars, the lease's grant.
RETURN_BUDGET_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: window hash, in-flight zset. ARGV: granted second, now second, unused requests,
# unused tokens, then the unused slot members.
RETURN_SCOPE_LUA = """
local second, now_s = tonumber(ARGV[1]), tonumber(ARGV[2])
if second > now_s - 60 then
  -- Only while the granted second is still in the window; after that it no longer counts.
  for kind, unused in pairs({r = tonumber(ARGV[3]), t = tonumber(ARGV[4])}) do
    if unused ~= 0 and redis.call('HEXISTS', KEYS[1], kind .. second) == 1 then
      redis.call('HINCRBY', KEYS[1], kind .. second, -unused)
      redis.call('HINCRBY', KEYS[1], kind .. 'sum', -unused)
    end
  end
end
if #ARGV > 4 then redis.call('ZREM', KEYS[2], unpack(ARGV, 5)) end
return 1
"""


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


def next_size(size: int, used: int, *, ran_out: bool) -> int:
    """Twice as big after a lease ran out before expiring, half as big after one expired mostly unused."""
    if ran_out:
        return min(size * 2, MAX_LEASE)
    return max(size // 2, MIN_LEASE) if used < size // 2 else size


def budget_return(lease: BudgetLease) -> tuple[list[str], list[Any]]:
    return [lease.key, names.leased(lease.key)], [lease.available, lease.granted]


def scope_return(lease: ScopeLease, now_s: int) -> tuple[list[str], list[Any]]:
    unused_requests = lease.requests if lease.limits[0] else 0
    unused_tokens = lease.tokens if lease.limits[1] else 0
    return [lease.window_key, lease.inflight_key], [
        lease.second,
        now_s,
        unused_requests,
        unused_tokens,
        *lease.free_slots,
    ]
