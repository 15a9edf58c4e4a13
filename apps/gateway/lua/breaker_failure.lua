-- One failure of a deployment: count it, and open (or re-open) its breaker when it is one too many.
-- KEYS: failure counter, open hash, probe claim. ARGV: field, now, window ms, failures, cool-down s.
-- Returns 1 when this failure opened (or re-opened) the breaker.
local open_until = redis.call('HGET', KEYS[2], ARGV[1])
local now = tonumber(ARGV[2])
if open_until then
  if now < tonumber(open_until) then
    return 0
  end
  redis.call('HSET', KEYS[2], ARGV[1], tostring(now + tonumber(ARGV[5])))
  redis.call('DEL', KEYS[3])
  return 1
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
if n >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[2], ARGV[1], tostring(now + tonumber(ARGV[5])))
  redis.call('DEL', KEYS[1], KEYS[3])
  return 1
end
return 0
