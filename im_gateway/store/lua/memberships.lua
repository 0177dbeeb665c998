-- uses: group
-- KEYS: the member sets of the groups asked about (one slot on a cluster). ARGV: the key
-- prefix, then pairs of group and user. Per pair, read atomically: 1 or 0 (a member
-- now), the join position of the current membership ('' when none kept), and the
-- latest ended membership's "<join>:<leave>" ('' when none). See lua/group.lua.
local out = {}
for i = 2, #ARGV, 2 do
  local G = group_keys(ARGV[1], ARGV[i])
  local u = ARGV[i + 1]
  out[#out + 1] = redis.call('SISMEMBER', G.members, u)
  out[#out + 1] = redis.call('HGET', G.joined, u) or ''
  out[#out + 1] = redis.call('HGET', G.left, u) or ''
end
return out
