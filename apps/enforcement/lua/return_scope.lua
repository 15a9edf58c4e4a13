-- A rate-limit lease goes back: its unused requests, tokens and slots.
-- KEYS: window hash, in-flight zset. ARGV: granted second, now second, unused requests,
-- unused tokens, then the unused slot members.
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
