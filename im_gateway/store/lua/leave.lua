-- uses: group
-- KEYS: the group's member set, then (one Redis) the user's set of groups. ARGV: user,
-- group, the key prefix, the large-group bound, the stream ttl (ms), the most leavers
-- kept per group. Removes the user and their position in the group's stream, and keeps
-- their membership's join and leave positions (lua/group.lua); the group changes form
-- when it falls to the bound. Returns 1 when the user was a member.
local removed = redis.call('SREM', KEYS[1], ARGV[1])
if KEYS[2] then redis.call('SREM', KEYS[2], ARGV[2]) end
local G = group_keys(ARGV[3], ARGV[2])
if removed == 1 then group_left(G, ARGV[1], ARGV[5], ARGV[6]) end
group_reform(G, tonumber(ARGV[4]), ARGV[5])
return removed
