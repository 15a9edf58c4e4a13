-- Admission: check every rate limit and budget, and only if all pass reserve on each.
-- Runs after window.lua (its functions).
-- KEYS: per budget its counter and the counter's ":leased" total (2 nb), then per rate scope: window
--       hash, in-flight zset. Every key is declared (Redis Cluster routes and checks scripts by them).
-- ARGV: now (seconds, float), request id, lease headroom, nb, then per budget: limit, reserve, seed,
--       mode, ttl, lease wanted (nano-dollars, 0 for none); then nr, then per rate scope: rpm limit,
--       tpm limit, concurrency limit, tokens to reserve, then the lease wanted: requests, tokens, slots,
--       and the slot names' prefix (a limit of 0 means none).
-- Returns {status, index, retry_ms, shadow_csv, remaining_requests, remaining_tokens}, then on
-- admission each budget's lease granted, and per rate scope: requests, tokens and slots granted and
-- the scope's own remaining requests and tokens (-1 where it has no such limit).

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
  local key, leased_key = KEYS[2 * i - 1], KEYS[2 * i]
  local spent = tonumber(redis.call('GET', key))
  if spent == nil then
    -- Lost or new counter: start from the spend the ledger already shows for this period.
    redis.call('SET', key, seed, 'EX', ttl, 'NX')
    spent = tonumber(seed)
  end
  if spent + reserve > limit then
    if mode == 'hard' then
      -- Refused only because of what other processes hold as leases: say so, they come back shortly.
      local leased = tonumber(redis.call('GET', leased_key)) or 0
      if leased > 0 and spent - leased + reserve <= limit then return {5, i, 0, '', -1, -1} end
      return {1, i, 0, '', -1, -1}
    end
    if mode == 'shadow' then shadow[#shadow + 1] = tostring(i) end
  end
  local grant = 0
  if want > 0 and (mode == 'soft' or spent + reserve + want * headroom <= limit) then grant = want end
  budgets[i] = {key, reserve, grant, ttl, leased_key}
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
  local win_key, conc_key = KEYS[2 * nb + 2 * j - 1], KEYS[2 * nb + 2 * j]
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
    redis.call('INCRBY', b[5], b[3])
    redis.call('EXPIRE', b[5], b[4])
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
