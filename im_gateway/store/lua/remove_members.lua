-- uses: group
-- Remove users from a group in one step, in the group's slot. KEYS: the group's member
-- set, then (one Redis only) each user's set of groups. ARGV: prefix, group, the
-- large-group bound, the stream ttl (ms), then the users. Each leaver's position in the
-- stream goes; the group changes form once, after (lua/group.lua). Returns per user 1
-- (was a member) or 0.
local G = group_keys(ARGV[1], ARGV[2])
local out = {}
for i = 5, #ARGV do
  local u = ARGV[i]
  out[#out + 1] = redis.call('SREM', G.members, u)
  redis.call('HDEL', G.pos, u)
  if KEYS[i - 3] then redis.call('SREM', KEYS[i - 3], ARGV[2]) end
end
group_reform(G, tonumber(ARGV[3]), ARGV[4])
return out
