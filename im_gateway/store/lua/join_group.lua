-- uses: group
-- Redis Cluster: the second half of a join, in the group's slot.
-- KEYS: the group's member set. ARGV: user, the most members per group, the key prefix,
-- the group, the large-group bound, the stream ttl (ms). As lua/join.lua. Returns 0
-- (added now), 2 (the group is full) or 3 (a member already).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 3 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 2 end
redis.call('SADD', KEYS[1], ARGV[1])
local G = group_keys(ARGV[3], ARGV[4])
group_joined(G, ARGV[1], ARGV[6])
group_reform(G, tonumber(ARGV[5]), ARGV[6])
return 0
