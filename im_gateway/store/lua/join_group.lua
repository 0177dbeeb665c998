-- Redis Cluster: the second half of a join.
-- KEYS: the group's member set. ARGV: user, the most members per group. Returns 0
-- (added now), 2 (the group is full) or 3 (a member already).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 3 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 2 end
redis.call('SADD', KEYS[1], ARGV[1])
return 0
