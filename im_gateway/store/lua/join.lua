-- uses: group
-- KEYS: the group's member set, the user's set of groups. ARGV: user, group, the most
-- groups per user, the most members per group, the key prefix, the large-group bound,
-- the stream ttl (ms). Check and add in one step, so concurrent joins cannot overshoot a
-- bound; a large group's new member starts at its newest position, and the group
-- changes form when it crosses the bound (lua/group.lua). Returns 0 (member now), 1 (the user is in too many
-- groups), 2 (the group is full) or 3 (a member already).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  return 3
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 2
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
local G = group_keys(ARGV[5], ARGV[2])
group_joined(G, ARGV[1], ARGV[7])
group_reform(G, tonumber(ARGV[6]), ARGV[7])
return 0
