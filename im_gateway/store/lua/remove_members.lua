-- uses: group
-- Remove users from a group in one step, in the group's slot. KEYS: the group's member
-- set, then (one Redis only) each user's set of groups. ARGV: prefix, group, the
-- large-group bound, the stream ttl (ms), the most leavers kept per group, then the
-- users. Each leaver's position in the stream goes and their membership's join and leave
-- positions are kept; the group changes form once, after (lua/group.lua). Returns per
-- user 1 (was a member) or 0.
local G = group_keys(ARGV[1], ARGV[2])
local out = {}
for i = 6, #ARGV do
  local u = ARGV[i]
  local removed = redis.call('SREM', G.members, u)
  out[#out + 1] = removed
  if removed == 1 then group_left(G, u, ARGV[4], ARGV[5]) end
  if KEYS[i - 4] then redis.call('SREM', KEYS[i - 4], ARGV[2]) end
end
group_reform(G, tonumber(ARGV[3]), ARGV[4])
return out
