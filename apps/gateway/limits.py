"""Budgets and rate limits, enforced in one Redis round trip per request.

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
admission is seven calls and a settle six.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from redis.exceptions import ResponseError

from apps.budgets.periods import period_bounds
from apps.gateway.errors import GatewayError
from apps.gateway.fastredis import FastPipeline, FastRedis
from apps.providers.catalog import MAX_OUTPUT_TOKENS

NANO = Decimal(1_000_000_000)
DEFAULT_MAX_OUTPUT_TOKENS = 4096

STATUS_OK, STATUS_BUDGET, STATUS_RPM, STATUS_TPM, STATUS_CONCURRENCY = range(5)

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
# ARGV: now (seconds, float), request id, nb, then per budget: limit, reserve, seed, mode, ttl;
#       then nr, then per rate scope: rpm limit, tpm limit, concurrency limit, tokens to reserve
#       (a limit of 0 means none).
# Returns {status, index, retry_after_ms, shadow_blocked_csv, remaining_requests, remaining_tokens}.
ADMIT_LUA = (
    WINDOW_LUA
    + """
local now = tonumber(ARGV[1])
local now_s = math.floor(now)
local request_id = ARGV[2]
local nb = tonumber(ARGV[3])
local a = 4

local budgets = {}
local shadow = {}
for i = 1, nb do
  local limit, reserve, seed, mode, ttl =
    tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3], tonumber(ARGV[a + 4])
  a = a + 5
  local key = KEYS[i]
  local spent = tonumber(redis.call('GET', key))
  if spent == nil then
    -- Lost or new counter: start from the spend the ledger already shows for this period.
    redis.call('SET', key, seed, 'EX', ttl, 'NX')
    spent = tonumber(seed)
  end
  if spent + reserve > limit then
    if mode == 'hard' then return {1, i, 0, '', -1, -1} end
    if mode == 'shadow' then shadow[#shadow + 1] = tostring(i) end
  end
  budgets[i] = {key, reserve}
end

local nr = tonumber(ARGV[a])
a = a + 1
local scopes = {}
local remaining_requests, remaining_tokens = -1, -1
for j = 1, nr do
  local rpm, tpm, conc, tokens =
    tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local win_key, conc_key = KEYS[nb + 2 * j - 1], KEYS[nb + 2 * j]
  if tpm == 0 then tokens = 0 end
  local w = nil
  if rpm > 0 or tpm > 0 then
    w = window(win_key, now_s)
    if rpm > 0 then
      if w[1] + 1 > rpm then
        return {2, j, math.ceil(wait_for(win_key, 'r', now, w[1], 1, rpm) * 1000), '', 0, -1}
      end
      local left = rpm - w[1] - 1
      if remaining_requests < 0 or left < remaining_requests then remaining_requests = left end
    end
    if tpm > 0 then
      if w[2] + tokens > tpm then
        local wait = 60
        if tokens <= tpm then wait = wait_for(win_key, 't', now, w[2], tokens, tpm) end
        return {3, j, math.ceil(wait * 1000), '', -1, math.max(tpm - w[2], 0)}
      end
      local left = tpm - w[2] - tokens
      if remaining_tokens < 0 or left < remaining_tokens then remaining_tokens = left end
    end
  end
  if conc > 0 and redis.call('ZCARD', conc_key) >= conc then
    -- Slots older than 15 minutes belong to requests whose gateway died: let them go, then look again.
    redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now - 900)
    if redis.call('ZCARD', conc_key) >= conc then return {4, j, 1000, '', -1, -1} end
  end
  scopes[j] = {win_key, conc_key, w, conc, tokens}
end

for i = 1, nb do
  redis.call('INCRBY', budgets[i][1], budgets[i][2])
end
for j = 1, nr do
  local s = scopes[j]
  local w = s[3]
  if w ~= nil then
    local r_field, t_field = 'r' .. now_s, 't' .. now_s
    if w[5] then
      redis.call('HSET', s[1], r_field, 1, t_field, s[5], 'rsum', 1, 'tsum', s[5], 'from', now_s)
      redis.call('EXPIRE', s[1], 180)
    else
      redis.call('HSET', s[1], r_field, w[3] + 1, t_field, w[4] + s[5], 'rsum', w[1] + 1, 'tsum', w[2] + s[5])
    end
  end
  if s[4] > 0 then redis.call('ZADD', s[2], now, request_id); redis.call('EXPIRE', s[2], 900) end
end
return {0, 0, 0, table.concat(shadow, ','), remaining_requests, remaining_tokens}
"""
)

# KEYS: budget counters, then window hashes (of scopes with a token limit), then in-flight zsets.
# ARGV: nb, nt, nc, request id, admitted second, now second, then budget deltas, then the token delta.
SETTLE_LUA = """
local nb, nt, nc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local request_id, second, now_s = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
for i = 1, nb do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[6 + i]) end
end
local token_delta = tonumber(ARGV[7 + nb])
if token_delta ~= 0 and second > now_s - 60 then
  -- Only while the admitted second is still in the window; after that it no longer counts.
  local field = 't' .. second
  for i = 1, nt do
    local key = KEYS[nb + i]
    if redis.call('HEXISTS', key, field) == 1 then
      redis.call('HINCRBY', key, field, token_delta)
      redis.call('HINCRBY', key, 'tsum', token_delta)
    end
  end
end
for i = 1, nc do
  redis.call('ZREM', KEYS[nb + nt + i], request_id)
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

    @property
    def reserved(self) -> bool:
        return bool(self.budget_keys or self.token_keys or self.concurrency_keys)


def max_output_tokens(payload: dict[str, Any], model: str) -> int:
    """The most output a completion request can produce: its own cap, else the model's, times ``n``."""
    limit = (
        payload.get("max_completion_tokens")
        or payload.get("max_tokens")
        or MAX_OUTPUT_TOKENS.get(model, DEFAULT_MAX_OUTPUT_TOKENS)
    )
    return int(limit) * int(payload.get("n") or 1)


def to_nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


class Limiter:
    def __init__(self, redis_client: FastRedis, prefix: str) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._admit_sha = hashlib.sha1(ADMIT_LUA.encode()).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)
        self._settle_sha = hashlib.sha1(SETTLE_LUA.encode()).hexdigest()  # noqa: S324
        self._periods: dict[tuple[str, str, dt.datetime | None], tuple[float, float]] = {}
        self._scopes: dict[str, tuple[str, str]] = {}

    async def load(self) -> None:
        """Load both scripts into Redis (EVALSHA in pipelines needs them there)."""
        for script in (ADMIT_LUA, SETTLE_LUA):
            await self._redis.execute("SCRIPT", "LOAD", script)

    async def _run(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._redis.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # Redis restarted and forgot the script: EVAL loads it again.
            return await self._redis.execute("EVAL", script, len(keys), *keys, *args)

    def _scope_keys(self, scope_name: str) -> tuple[str, str]:
        """The window hash and in-flight zset of a rate-limit scope, built once per scope."""
        keys = self._scopes.get(scope_name)
        if keys is None:
            base = f"{self._prefix}rl:{scope_name}"
            keys = self._scopes[scope_name] = (base + ":win", base + ":inflight")
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

    async def admit(
        self,
        *,
        request_id: str,
        budgets: list[BudgetPolicy],
        rate_limits: list[RateLimitPolicy],
        worst_case_usd: Decimal,
        worst_case_tokens: int,
        now: float | None = None,
    ) -> Admission:
        """Reserve, or raise the 429 the app should see. ``now`` is injectable for tests."""
        now = time.time() if now is None else now
        admission = Admission(request_id=request_id, second=math.floor(now))
        if not budgets and not rate_limits:
            return admission
        reserve = to_nano(worst_case_usd)
        keys: list[str] = []
        args: list[Any] = [repr(now), request_id, len(budgets)]
        for budget in budgets:
            start_ts, end_ts = self._period(budget, now)
            key = f"{self._prefix}budget:{budget.id}:{int(start_ts)}"
            seed = budget.seed_nano if budget.seed_period_start == start_ts else 0
            ttl = int(min(end_ts - now, 400 * 86400)) + 2 * 86400
            keys.append(key)
            args += [budget.limit_nano, reserve, seed, budget.mode, ttl]
            admission.budget_keys.append(key)
            admission.budget_reserved.append(reserve)
        args.append(len(rate_limits))
        for limit in rate_limits:
            window_key, inflight_key = self._scope_keys(limit.scope_name)
            keys += [window_key, inflight_key]
            args += [limit.requests_per_minute, limit.tokens_per_minute, limit.max_concurrent, worst_case_tokens]
            if limit.tokens_per_minute:
                admission.token_keys.append(window_key)
            if limit.max_concurrent:
                admission.concurrency_keys.append(inflight_key)
        admission.tokens_reserved = worst_case_tokens
        status, index, retry_ms, shadow_csv, left_requests, left_tokens = await self._run(
            self._admit_sha, ADMIT_LUA, keys, args
        )
        if status == STATUS_BUDGET:
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

        With ``pipeline`` the script is only queued there (sent with the ledger event).
        """
        if not admission.reserved:
            return
        actual = to_nano(actual_usd)
        keys = [*admission.budget_keys, *admission.token_keys, *admission.concurrency_keys]
        args = [
            len(admission.budget_keys),
            len(admission.token_keys),
            len(admission.concurrency_keys),
            admission.request_id,
            admission.second,
            math.floor(time.time() if now is None else now),
            *[actual - reserved for reserved in admission.budget_reserved],
            actual_tokens - admission.tokens_reserved,
        ]
        if pipeline is None:
            await self._run(self._settle_sha, SETTLE_LUA, keys, args)
        else:
            # Loaded at start-up; if Redis lost it since (a restart), this one settle fails
            # and is logged, leaving the reservation in place: a budget errs on the safe
            # side, and an in-flight slot expires after 15 minutes.
            pipeline.evalsha(self._settle_sha, len(keys), *keys, *args)


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
