-- Redis Cluster: the first half of a join.
-- KEYS: the user's set of groups. ARGV: group, the most groups per user. Returns 0 (in
-- it already), 1 (too many groups) or 3 (added now).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 1 end
redis.call('SADD', KEYS[1], ARGV[1])
return 3
