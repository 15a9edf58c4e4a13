-- Settle: replace reservations by what was used and free concurrency slots.
-- KEYS: budget counters, then window hashes (of scopes with a token limit), then in-flight zsets.
-- ARGV: nb, nt, nc, now second, then each budget's delta, then per window the second its tokens were
--       counted in and the token delta, then per in-flight zset the slot member to free.
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
