-- A budget lease goes back: what it did not hand out leaves the counter and its ":leased" total.
-- KEYS: budget counter, its ":leased" total. ARGV: unused nano-dollars, the lease's grant.
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], ARGV[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], ARGV[2]) end
return 1
