-- uses: group
-- KEYS: the group's member set, then (one Redis) the user's set of groups. ARGV: user,
-- group, the key prefix, the large-group bound, the stream ttl (ms). Removes the user
-- and their position in the group's stream; the group changes form when it falls to the
-- bound (lua/group.lua). Returns 1 when the user was a member.
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[2]) end
local G = group_keys(ARGV[3], ARGV[2])
redis.call('HDEL', G.pos, ARGV[1])
group_reform(G, tonumber(ARGV[4]), ARGV[5])
return removed
