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
The scripts are written for the fewest Redis calls per request (`make bench`
shows what they cost): with a budget and RPM, TPM and concurrency limits an
admission is seven calls and a settle six. In the gateway, most requests run
neither: they are admitted from the process's leases (``apps.gateway.leases``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis.exceptions import RedisError, ResponseError

from apps.core import names
from apps.core.errors import GatewayError
from apps.core.periods import period_bounds
from apps.core.pricing import to_nano
from apps.core.request import WorstCase, worst_case
from apps.gateway.fastredis import FastPipeline, FastRedis
from apps.gateway.leases import (
    LEASE_HEADROOM,
    LEASE_SECONDS,
    MAX_LEASE_SLOTS,
    MIN_LEASE,
    RETRY_AFTER_LEASES,
    RETURN_BUDGET_LUA,
    RETURN_SCOPE_LUA,
    BudgetLease,
    LeaseHolds,
    ScopeLease,
    budget_return,
    next_size,
    scope_return,
)
from apps.providers.catalog import MAX_OUTPUT_TOKENS

logger = logging.getLogger(__name__)

STATUS_OK, STATUS_BUDGET, STATUS_RPM, STATUS_TPM, STATUS_CONCURRENCY, STATUS_LEASED = range(6)

# Sliding 60 s windows: one hash per rate scope holding both counts, one field per
# second for each ("r<second>" requests, "t<second>" tokens), their window totals
# ("rsum", "tsum") and "from", the oldest second not yet subtracted. Expired
# seconds are subtracted as time passes, so a check is one HMGET and an admission
# one HSET, whatever the rate. The TTL is set when the hash is made and renewed
# each time the window slides (at most once a second), not on every request.
WINDOW_LUA = """
-- The window's totals and this second's counts: {rsum, tsum, r_now, t_now, fresh}.
local function window(key, now_s)
  local m = redis.call('HMGET', key, 'rsum', 'tsum', 'from', 'r' .. now_s, 't' .. now_s)
  local rsum, tsum, from = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
  if rsum == nil then return {0, 0, 0, 0, true} end
  if from <= now_s - 60 then
    if from < now_s - 120 then
      redis.call('DEL', key)
      return {0, 0, 0, 0, true}
    end
    for sec = from, now_s - 60 do
      local old = redis.call('HMGET', key, 'r' .. sec, 't' .. sec)
      rsum = rsum - (tonumber(old[1]) or 0)
      tsum = tsum - (tonumber(old[2]) or 0)
      redis.call('HDEL', key, 'r' .. sec, 't' .. sec)
    end
    redis.call('HSET', key, 'rsum', rsum, 'tsum', tsum, 'from', now_s - 59)
    redis.call('EXPIRE', key, 180)
  end
  return {rsum, tsum, tonumber(m[4]) or 0, tonumber(m[5]) or 0, false}
end

-- Seconds until enough of the window (field kind 'r' or 't') expires for `need` more
-- under `limit` (refusals only).
local function wait_for(key, kind, now, total, need, limit)
  local now_s = math.floor(now)
  local fields = {}
  for sec = now_s - 59, now_s do fields[#fields + 1] = kind .. sec end
  local counts = redis.call('HMGET', key, unpack(fields))
  local freed = 0
  for i = 1, #counts do
    freed = freed + (tonumber(counts[i]) or 0)
    if total - freed + need <= limit then return now_s - 60 + i + 60 - now end
  end
  return 60
end
"""

# KEYS: budget counters (nb), then per rate scope: window hash, in-flight zset.
# ARGV: now (seconds, float), request id, lease headroom, nb, then per budget: limit, reserve, seed,
#       mode, ttl, lease wanted (nano-dollars, 0 for none); then nr, then per rate scope: rpm limit,
#       tpm limit, concurrency limit, tokens to reserve, then the lease wanted: requests, tokens, slots,
#       and the slot names' prefix (a limit of 0 means none).
# Returns {status, index, retry_ms, shadow_csv, remaining_requests, remaining_tokens}, then on
# admission each budget's lease granted, and per rate scope: requests, tokens and slots granted and
# the scope's own remaining requests and tokens (-1 where it has no such limit).
ADMIT_LUA = (
    WINDOW_LUA
    + """
-- Defence in depth: a reservation is a whole, non-negative number. A negative one would lower
-- every budget it touches; callers never send one, and if one ever did, nothing is admitted.
local function whole(value)
  return value ~= nil and value >= 0 and value == math.floor(value) and value < 2 ^ 53
end

local now = tonumber(ARGV[1])
local now_s = math.floor(now)
local request_id = ARGV[2]
local headroom = tonumber(ARGV[3]) + 1
local nb = tonumber(ARGV[4])
local a = 5

local budgets = {}
local shadow = {}
for i = 1, nb do
  local limit, reserve, seed, mode, ttl, want =
    tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4]),
    tonumber(ARGV[a + 5])
  a = a + 6
  if not whole(reserve) or not whole(want) then
    return redis.error_reply('ERR invalid reservation: ' .. tostring(ARGV[a - 5]))
  end
  local key = KEYS[i]
  local spent = tonumber(redis.call('GET', key))
  if spent == nil then
    -- Lost or new counter: start from the spend the ledger already shows for this period.
    redis.call('SET', key, seed, 'EX', ttl, 'NX')
    spent = tonumber(seed)
  end
  if spent + reserve > limit then
    if mode == 'hard' then
      -- Refused only because of what other processes hold as leases: say so, they come back shortly.
      local leased = tonumber(redis.call('GET', key .. ':leased')) or 0
      if leased > 0 and spent - leased + reserve <= limit then return {5, i, 0, '', -1, -1} end
      return {1, i, 0, '', -1, -1}
    end
    if mode == 'shadow' then shadow[#shadow + 1] = tostring(i) end
  end
  local grant = 0
  if want > 0 and (mode == 'soft' or spent + reserve + want * headroom <= limit) then grant = want end
  budgets[i] = {key, reserve, grant, ttl}
end

local nr = tonumber(ARGV[a])
a = a + 1
local scopes = {}
local remaining_requests, remaining_tokens = -1, -1
for j = 1, nr do
  local rpm, tpm, conc, tokens, want_r, want_t, want_s, slot_prefix =
    tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), ARGV[a + 7]
  a = a + 8
  if not whole(tokens) or not whole(want_t) then
    return redis.error_reply('ERR invalid token reservation: ' .. tostring(ARGV[a - 5]))
  end
  local win_key, conc_key = KEYS[nb + 2 * j - 1], KEYS[nb + 2 * j]
  if tpm == 0 then tokens = 0 end
  local w = nil
  local left_r, left_t, grant_r, grant_t, grant_s = -1, -1, 0, 0, 0
  if rpm > 0 or tpm > 0 then
    w = window(win_key, now_s)
    if rpm > 0 then
      if w[1] + 1 > rpm then
        return {2, j, math.ceil(wait_for(win_key, 'r', now, w[1], 1, rpm) * 1000), '', 0, -1}
      end
      left_r = rpm - w[1] - 1
      if remaining_requests < 0 or left_r < remaining_requests then remaining_requests = left_r end
      if want_r > 0 and w[1] + 1 + want_r * headroom <= rpm then grant_r = want_r end
    end
    if tpm > 0 then
      if w[2] + tokens > tpm then
        local wait = 60
        if tokens <= tpm then wait = wait_for(win_key, 't', now, w[2], tokens, tpm) end
        return {3, j, math.ceil(wait * 1000), '', -1, math.max(tpm - w[2], 0)}
      end
      left_t = tpm - w[2] - tokens
      if remaining_tokens < 0 or left_t < remaining_tokens then remaining_tokens = left_t end
      if want_t > 0 and w[2] + tokens + want_t * headroom <= tpm then grant_t = want_t end
    end
  end
  if conc > 0 then
    local busy = redis.call('ZCARD', conc_key)
    if busy >= conc then
      -- Slots older than 15 minutes belong to requests whose gateway died: let them go, then look again.
      redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now - 900)
      busy = redis.call('ZCARD', conc_key)
      if busy >= conc then return {4, j, 1000, '', -1, -1} end
    end
    if want_s > 0 and busy + 1 + want_s * headroom <= conc then grant_s = want_s end
  end
  scopes[j] = {win_key, conc_key, w, conc, tokens, grant_r, grant_t, grant_s, slot_prefix, left_r, left_t}
end

local reply = {0, 0, 0, table.concat(shadow, ','), remaining_requests, remaining_tokens}
for i = 1, nb do
  local b = budgets[i]
  redis.call('INCRBY', b[1], b[2] + b[3])
  if b[3] > 0 then
    redis.call('INCRBY', b[1] .. ':leased', b[3])
    redis.call('EXPIRE', b[1] .. ':leased', b[4])
  end
  reply[#reply + 1] = b[3]
end
for j = 1, nr do
  local s = scopes[j]
  local w = s[3]
  if w ~= nil then
    local r_field, t_field = 'r' .. now_s, 't' .. now_s
    local requests, tokens = 1 + s[6], s[5] + s[7]
    if w[5] then
      redis.call('HSET', s[1], r_field, requests, t_field, tokens, 'rsum', requests, 'tsum', tokens, 'from', now_s)
      redis.call('EXPIRE', s[1], 180)
    else
      redis.call('HSET', s[1], r_field, w[3] + requests, t_field, w[4] + tokens,
        'rsum', w[1] + requests, 'tsum', w[2] + tokens)
    end
  end
  if s[4] > 0 then
    local members = {now, request_id}
    for k = 1, s[8] do
      members[#members + 1] = now
      members[#members + 1] = s[9] .. k
    end
    redis.call('ZADD', s[2], unpack(members))
    redis.call('EXPIRE', s[2], 900)
  end
  reply[#reply + 1] = s[6]
  reply[#reply + 1] = s[7]
  reply[#reply + 1] = s[8]
  reply[#reply + 1] = s[10]
  reply[#reply + 1] = s[11]
end
return reply
"""
)

# KEYS: budget counters, then window hashes (of scopes with a token limit), then in-flight zsets.
# ARGV: nb, nt, nc, now second, then each budget's delta, then per window the second its tokens were
#       counted in and the token delta, then per in-flight zset the slot member to free.
SETTLE_LUA = """
local nb, nt, nc, now_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 1, nb do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[4 + i]) end
end
for i = 1, nt do
  local second, delta = tonumber(ARGV[3 + nb + 2 * i]), tonumber(ARGV[4 + nb + 2 * i])
  -- Only while that second is still in the window; after that it no longer counts.
  if delta ~= 0 and second > now_s - 60 then
    local key, field = KEYS[nb + i], 't' .. second
    if redis.call('HEXISTS', key, field) == 1 then
      redis.call('HINCRBY', key, field, delta)
      redis.call('HINCRBY', key, 'tsum', delta)
    end
  end
end
for i = 1, nc do
  redis.call('ZREM', KEYS[nb + nt + i], ARGV[4 + nb + 2 * nt + i])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    id: int
    name: str
    organization_id: int
    scope: str
    team_id: int | None
    project_id: int | None
    api_key_id: int | None
    feature: str
    end_user: str
    limit_nano: int
    amount_usd: Decimal
    period: str
    timezone: str
    starts_at: dt.datetime | None
    mode: str
    seed_period_start: float  # period start (epoch s) the seed was computed for
    seed_nano: int  # spend the ledger showed for that period when the snapshot was built

    def applies(self, *, project_id: int, team_id: int | None, key_id: int, feature: str, end_user: str) -> bool:
        scope = self.scope
        if scope == "organization":
            return True
        if scope == "team":
            return team_id is not None and team_id == self.team_id
        if scope == "project":
            return project_id == self.project_id
        if scope == "key":
            return key_id == self.api_key_id
        if self.project_id is not None and self.project_id != project_id:
            return False
        if scope == "feature":
            return feature == self.feature
        return end_user == self.end_user  # end_user scope


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    scope_name: str  # "project:3" or "key:17"
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int


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


def request_worst_case(
    endpoint: str, payload: dict[str, Any], model: str, *, unknown_model_max_output: int
) -> WorstCase:
    """What ``payload`` may use on ``model`` (the shared rule), with the catalogue's output limit for it."""
    return worst_case(
        endpoint,
        payload,
        model_max_output=MAX_OUTPUT_TOKENS.get(model),
        unknown_model_max_output=unknown_model_max_output,
    )


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)


class Limiter:
    """Admits and settles requests against budgets and rate limits.

    With ``leases`` (the gateway) most requests are admitted from this process's
    short leases without a Redis call; see ``apps.gateway.leases``. Without (batch
    workers, tests of the exact path) every request runs the admission script.
    """

    def __init__(self, redis_client: FastRedis, prefix: str, *, leases: bool = False) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._leasing = leases
        self._scripts = {_sha(s): s for s in (ADMIT_LUA, SETTLE_LUA, RETURN_BUDGET_LUA, RETURN_SCOPE_LUA)}
        self._admit_sha, self._settle_sha = _sha(ADMIT_LUA), _sha(SETTLE_LUA)
        self._return_budget_sha, self._return_scope_sha = _sha(RETURN_BUDGET_LUA), _sha(RETURN_SCOPE_LUA)
        self._periods: dict[tuple[str, str, dt.datetime | None], tuple[float, float]] = {}
        self._scopes: dict[str, tuple[str, str]] = {}
        self._budget_leases: dict[str, BudgetLease] = {}  # by counter key
        self._scope_leases: dict[str, ScopeLease] = {}  # by scope name
        self._lease_sizes: dict[str, int] = {}
        # Budget keys and scopes with a lease request on its way: concurrent requests don't ask again.
        self._asking: set[str] = set()
        self._returns: list[tuple[Any, ...]] = []  # closed leases' unused part, sent with the next round trip
        self._lease_ids = itertools.count(1)
        self._slot_prefix = f"lease:{os.getpid()}:{secrets.token_hex(4)}:"
        self._expirer: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Load the scripts into Redis (EVALSHA in pipelines needs them there)."""
        for script in self._scripts.values():
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
        now = time.time() if now is None else now
        for leases in (self._budget_leases, self._scope_leases):
            for name in [name for name, lease in leases.items() if now >= lease.expires]:
                self._close(leases.pop(name), now)
        if self._returns:
            replies = await self._redis.execute_many(self._take_returns())
            self._check_returns(replies)

    def _close(self, lease: BudgetLease | ScopeLease, now: float) -> None:
        """End a lease: size the next one by how this one went, and queue its unused part to go back."""
        name = lease.key if isinstance(lease, BudgetLease) else lease.scope_name
        self._lease_sizes[name] = next_size(lease.size, lease.used, ran_out=now < lease.expires)
        self._give_back(lease, now)

    def _give_back(self, lease: BudgetLease | ScopeLease, now: float) -> None:
        lease.open = False
        if isinstance(lease, BudgetLease):
            keys, args = budget_return(lease)
            self._returns.append(("EVALSHA", self._return_budget_sha, len(keys), *keys, *args))
        else:
            keys, args = scope_return(lease, math.floor(now if math.isfinite(now) else time.time()))
            self._returns.append(("EVALSHA", self._return_scope_sha, len(keys), *keys, *args))

    def _take_returns(self) -> list[tuple[Any, ...]]:
        """The queued lease returns, to send now. They are taken for good: a return whose round trip
        fails is not sent again, because Redis may have applied it before the connection broke and
        applying it twice would under-count. Dropped, a lease stays reserved, which errs toward refusing."""
        commands, self._returns = self._returns, []
        return commands

    def _check_returns(self, replies: list[Any]) -> None:
        for reply in replies:
            if isinstance(reply, ResponseError):
                # NOSCRIPT after a Redis restart: the counters went with it, so nothing is left to give back.
                logger.warning("giving a lease back failed: %s", reply)

    async def _run(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script, with any lease returns waiting ahead of it in the same round trip."""
        *returns, reply = await self._redis.execute_many(
            [*self._take_returns(), ("EVALSHA", sha, len(keys), *keys, *args)]
        )
        self._check_returns(returns)
        if isinstance(reply, ResponseError):
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            # Redis restarted and forgot the scripts: load them again (settles and returns need them too).
            await self.load()
            reply = await self._redis.execute("EVALSHA", sha, len(keys), *keys, *args)
        return reply

    def _scope_keys(self, scope_name: str) -> tuple[str, str]:
        """The window hash and in-flight zset of a rate-limit scope, built once per scope."""
        keys = self._scopes.get(scope_name)
        if keys is None:
            keys = self._scopes[scope_name] = (
                names.rate_window(self._prefix, scope_name),
                names.rate_inflight(self._prefix, scope_name),
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

    def _budget_key(self, budget: BudgetPolicy, period_start: float) -> str:
        """The budget's counter for the period starting at ``period_start`` (epoch seconds)."""
        return names.budget_counter(self._prefix, budget.id, period_start)

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
        if self._leasing and self._redis.connected:
            leased = self._admit_from_leases(request_id, budgets, rate_limits, reserve, worst_case_tokens, now)
            if leased is not None:
                return leased
        admission = Admission(request_id=request_id, second=math.floor(now))
        keys: list[str] = []
        args: list[Any] = [repr(now), request_id, LEASE_HEADROOM, len(budgets)]
        wanted_budgets: list[int] = []
        for budget in budgets:
            start_ts, end_ts = self._period(budget, now)
            key = self._budget_key(budget, start_ts)
            seed = budget.seed_nano if budget.seed_period_start == start_ts else 0
            ttl = int(min(end_ts - now, 400 * 86400)) + 2 * 86400
            want = self._budget_want(key, budget, reserve, now) if self._leasing and not _retried else 0
            wanted_budgets.append(want)
            keys.append(key)
            args += [budget.limit_nano, reserve, seed, budget.mode, ttl, want]
            admission.budget_keys.append(key)
            admission.budget_reserved.append(reserve)
        args.append(len(rate_limits))
        wanted_scopes: list[tuple[int, str]] = []
        for limit in rate_limits:
            window_key, inflight_key = self._scope_keys(limit.scope_name)
            keys += [window_key, inflight_key]
            size = self._scope_want(limit, worst_case_tokens, now) if self._leasing and not _retried else 0
            prefix = f"{self._slot_prefix}{next(self._lease_ids)}:" if size else ""
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
        self._asking.update(asked)
        try:
            status, index, retry_ms, shadow_csv, left_requests, left_tokens, *grants = await self._run(
                self._admit_sha, keys, args
            )
            if status == STATUS_OK and self._leasing:
                self._take_grants(budgets, rate_limits, admission, wanted_budgets, wanted_scopes, grants, now)
        finally:
            self._asking.difference_update(asked)
        if status == STATUS_LEASED and not _retried:
            # Other processes' leases stand in the way: they are all back within RETRY_AFTER_LEASES.
            await asyncio.sleep(RETRY_AFTER_LEASES)
            return await self.admit(
                request_id=request_id, budgets=budgets, rate_limits=rate_limits, worst_case_usd=worst_case_usd,
                worst_case_tokens=worst_case_tokens, now=None if wall_clock else now + RETRY_AFTER_LEASES,
                _retried=True,
            )  # fmt: skip
        if status in (STATUS_BUDGET, STATUS_LEASED):
            budget = budgets[index - 1]
            raise GatewayError(
                429,
                f"Budget '{budget.name}' (${budget.amount_usd} {budget.period.replace('_', '-')}) is exhausted: "
                f"this request could cost up to ${worst_case_usd:.6f}. Lower max_tokens or ask your team lead "
                "to raise the budget.",
                type="insufficient_quota",
                code="insufficient_quota",
            )
        if status in (STATUS_RPM, STATUS_TPM, STATUS_CONCURRENCY):
            limit = rate_limits[index - 1]
            raise _rate_limited(status, limit, retry_ms, left_tokens)
        if shadow_csv:
            shadow_ids = {int(i) for i in shadow_csv.decode().split(",")}
            admission.shadow_blocked = [b for i, b in enumerate(budgets, 1) if i in shadow_ids]
        admission.headers = _remaining_headers(rate_limits, left_requests, left_tokens)
        return admission

    def _budget_want(self, key: str, budget: BudgetPolicy, reserve: int, now: float) -> int:
        """The lease to ask for on this budget: none while the one held can still serve (or no reserve)."""
        if key in self._asking:
            return 0
        lease = self._budget_leases.get(key)
        if lease is not None:
            if _budget_lease_serves(lease, budget, reserve, now):
                return 0
            self._close(self._budget_leases.pop(key), now)
        return reserve * self._lease_sizes.get(key, MIN_LEASE)

    def _scope_want(self, limit: RateLimitPolicy, tokens: int, now: float) -> int:
        """The lease to ask for on this scope, in requests' worth (0: the one held can still serve)."""
        if limit.scope_name in self._asking:
            return 0
        lease = self._scope_leases.get(limit.scope_name)
        if lease is not None:
            if _scope_lease_serves(lease, limit, tokens, now):
                return 0
            self._close(self._scope_leases.pop(limit.scope_name), now)
        return self._lease_sizes.get(limit.scope_name, MIN_LEASE)

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
        expires = now + LEASE_SECONDS
        for budget, key, want, granted in zip(budgets, admission.budget_keys, wanted_budgets, grants, strict=False):
            if want and not granted:
                # Not enough headroom for a lease this size: ask for less next time.
                self._lease_sizes[key] = max(self._lease_sizes.get(key, MIN_LEASE) // 2, MIN_LEASE)
            if want and granted:
                self._install(self._budget_leases, key, now)
                self._budget_leases[key] = BudgetLease(
                    key=key, limit_nano=budget.limit_nano, mode=budget.mode, granted=granted, available=granted,
                    expires=expires, size=self._lease_sizes.get(key, MIN_LEASE),
                )  # fmt: skip
        scope_grants = grants[len(budgets) :]
        for j, (limit, (size, prefix)) in enumerate(zip(rate_limits, wanted_scopes, strict=True)):
            requests, tokens, slots, left_requests, left_tokens = scope_grants[5 * j : 5 * j + 5]
            if not size:
                continue
            if not (requests or tokens or slots):
                self._lease_sizes[limit.scope_name] = max(size // 2, MIN_LEASE)
                continue
            window_key, inflight_key = self._scope_keys(limit.scope_name)
            lease = ScopeLease(
                scope_name=limit.scope_name, window_key=window_key, inflight_key=inflight_key,
                limits=(limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrent),
                second=math.floor(now), requests=requests, tokens=tokens,
                free_slots=[f"{prefix}{k}" for k in range(slots, 0, -1)], left_requests=left_requests,
                left_tokens=left_tokens, expires=expires, size=size,
            )  # fmt: skip
            if _scope_lease_serves(lease, limit, 1 if limit.tokens_per_minute else 0, now):
                self._install(self._scope_leases, limit.scope_name, now)
                self._scope_leases[limit.scope_name] = lease
            else:
                # Headroom for some of its limits but not all: it could serve nobody, so it goes back.
                self._give_back(lease, now)

    def _install(self, leases: dict[str, Any], name: str, now: float) -> None:
        """Make room for a new lease. Only one request asks at a time, so none should be there; if one
        is, it is given back rather than dropped (a dropped lease would stay reserved until period end)."""
        old = leases.pop(name, None)
        if old is not None:
            self._close(old, now)

    def _admit_from_leases(
        self,
        request_id: str,
        budgets: list[BudgetPolicy],
        rate_limits: list[RateLimitPolicy],
        reserve: int,
        tokens: int,
        now: float,
    ) -> Admission | None:
        """Admit from this process's leases if every budget and scope has one that can take it, else None."""
        budget_leases = []
        for budget in budgets:
            lease = self._budget_leases.get(self._budget_key(budget, self._period(budget, now)[0]))
            if lease is None or not _budget_lease_serves(lease, budget, reserve, now):
                return None
            budget_leases.append(lease)
        scope_leases = []
        for limit in rate_limits:
            scope_lease = self._scope_leases.get(limit.scope_name)
            if scope_lease is None or not _scope_lease_serves(scope_lease, limit, tokens, now):
                return None
            scope_leases.append(scope_lease)
        admission = Admission(request_id=request_id, second=math.floor(now), tokens_reserved=tokens)
        holds = admission.holds = LeaseHolds(budgets=budget_leases, scopes=scope_leases)
        for lease in budget_leases:
            lease.available -= reserve
            lease.used += 1
            admission.budget_keys.append(lease.key)
            admission.budget_reserved.append(reserve)
        left_requests, left_tokens = -1, -1
        for scope_lease in scope_leases:
            rpm, tpm, conc = scope_lease.limits
            scope_lease.used += 1
            if rpm:
                scope_lease.requests -= 1
                left = scope_lease.left_requests - scope_lease.used
                left_requests = left if left_requests < 0 else min(left, left_requests)
            if tpm:
                scope_lease.tokens -= tokens
                scope_lease.used_tokens += tokens
                left = scope_lease.left_tokens - scope_lease.used_tokens
                left_tokens = left if left_tokens < 0 else min(left, left_tokens)
                admission.token_keys.append(scope_lease.window_key)
            if conc:
                holds.members.append(scope_lease.free_slots.pop())
                admission.concurrency_keys.append(scope_lease.inflight_key)
        admission.headers = _remaining_headers(rate_limits, left_requests, left_tokens)
        return admission

    async def settle(
        self,
        admission: Admission,
        *,
        actual_usd: Decimal,
        actual_tokens: int,
        now: float | None = None,
        pipeline: FastPipeline | None = None,
    ) -> None:
        """Replace the reservation by what was used, and free the concurrency slot.

        What was taken from a lease that is still open goes back into it; the rest
        (and any closed leases' unused part) goes to Redis. With ``pipeline`` the
        scripts are only queued there (sent with the ledger event).
        """
        if not admission.reserved:
            return
        now_s = math.floor(time.time() if now is None else now)
        actual = to_nano(actual_usd)
        token_delta = actual_tokens - admission.tokens_reserved
        budget_keys: list[str] = []
        budget_deltas: list[int] = []
        token_keys: list[str] = []
        token_args: list[int] = []
        slot_keys: list[str] = []
        slot_members: list[str] = []
        holds = admission.holds
        if holds is None:
            budget_keys, budget_deltas = admission.budget_keys, [actual - r for r in admission.budget_reserved]
            token_keys = admission.token_keys
            for _ in token_keys:
                token_args += [admission.second, token_delta]
            slot_keys = admission.concurrency_keys
            slot_members = [admission.request_id] * len(slot_keys)
        else:
            for lease, reserved in zip(holds.budgets, admission.budget_reserved, strict=True):
                if lease.open:
                    lease.available += reserved - actual
                else:
                    budget_keys.append(lease.key)
                    budget_deltas.append(actual - reserved)
            members = iter(holds.members)
            for scope_lease in holds.scopes:
                _rpm, tpm, conc = scope_lease.limits
                if tpm:
                    if scope_lease.open:
                        scope_lease.tokens -= token_delta
                        scope_lease.used_tokens += token_delta
                    else:
                        token_keys.append(scope_lease.window_key)
                        token_args += [scope_lease.second, token_delta]
                if conc:
                    member = next(members)
                    if scope_lease.open:
                        scope_lease.free_slots.append(member)
                    else:
                        slot_keys.append(scope_lease.inflight_key)
                        slot_members.append(member)
        commands = self._take_returns()
        if budget_keys or token_keys or slot_keys:
            keys = [*budget_keys, *token_keys, *slot_keys]
            args = [
                len(budget_keys),
                len(token_keys),
                len(slot_keys),
                now_s,
                *budget_deltas,
                *token_args,
                *slot_members,
            ]
            commands.append(("EVALSHA", self._settle_sha, len(keys), *keys, *args))
        if not commands:
            return
        if pipeline is None:
            *returns, reply = await self._redis.execute_many(commands)
            self._check_returns(returns)
            if isinstance(reply, ResponseError):
                raise reply
        else:
            # Loaded at start-up; if Redis lost them since (a restart), this one settle fails
            # and is logged, leaving the reservation in place: a budget errs on the safe
            # side, and an in-flight slot expires after 15 minutes.
            pipeline.commands += commands


def _budget_lease_serves(lease: BudgetLease, budget: BudgetPolicy, reserve: int, now: float) -> bool:
    return (
        now < lease.expires
        and lease.available >= reserve
        and lease.limit_nano == budget.limit_nano
        and lease.mode == budget.mode
    )


def _scope_lease_serves(lease: ScopeLease, limit: RateLimitPolicy, tokens: int, now: float) -> bool:
    rpm, tpm, conc = lease.limits
    return (
        now < lease.expires
        and (rpm, tpm, conc) == (limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrent)
        and (not rpm or lease.requests >= 1)
        and (not tpm or lease.tokens >= tokens)
        and (not conc or bool(lease.free_slots))
    )


def _rate_limited(status: int, limit: RateLimitPolicy, retry_ms: int, left_tokens: int) -> GatewayError:
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


def _remaining_headers(
    limits: list[RateLimitPolicy], left_requests: int, left_tokens: int
) -> list[tuple[bytes, bytes]]:
    headers = []
    rpm = min((lim.requests_per_minute for lim in limits if lim.requests_per_minute), default=0)
    tpm = min((lim.tokens_per_minute for lim in limits if lim.tokens_per_minute), default=0)
    if rpm:
        headers += [
            (b"x-ratelimit-limit-requests", str(rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(left_requests, 0)).encode()),
        ]
    if tpm:
        headers += [
            (b"x-ratelimit-limit-tokens", str(tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(left_tokens, 0)).encode()),
        ]
    return headers
