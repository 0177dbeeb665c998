-- uses: group
-- Redis Cluster: the second half of adding users to a group, in the group's slot.
-- KEYS: the group's member set. ARGV: prefix, group, the most members per group, the
-- large-group bound, the stream ttl (ms), then the users. Per user 0 (added), 2 (the
-- group is full) or 3 (a member already); the form changes once, after.
local G = group_keys(ARGV[1], ARGV[2])
local out = {}
for i = 6, #ARGV do
  local u = ARGV[i]
  if redis.call('SISMEMBER', G.members, u) == 1 then
    out[#out + 1] = 3
  elseif redis.call('SCARD', G.members) >= tonumber(ARGV[3]) then
    out[#out + 1] = 2
  else
    redis.call('SADD', G.members, u)
    group_joined(G, u, ARGV[5])
    out[#out + 1] = 0
  end
end
group_reform(G, tonumber(ARGV[4]), ARGV[5])
return out
