-- Sliding 60 s windows: one hash per rate scope holding both counts, one field per
-- second for each ("r<second>" requests, "t<second>" tokens), their window totals
-- ("rsum", "tsum") and "from", the oldest second not yet subtracted. Expired
-- seconds are subtracted as time passes, so a check is one HMGET and an admission
-- one HSET, whatever the rate. The TTL is set when the hash is made and renewed
-- each time the window slides (at most once a second), not on every request.
-- (Functions only: the admission script is this file followed by admit.lua.)
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
