-- uses: group
-- One Redis: add users to a group in one step (key names from the prefix).
-- ARGV: prefix, group, the most groups per user, the most members per group, the
-- large-group bound, the stream ttl (ms), then the users. Per user, as lua/join.lua:
-- 0 (added), 1 (the user is in too many groups), 2 (the group is full) or 3 (a member
-- already). A large group's new members start at its newest position; the group changes
-- form once, after the adds (lua/group.lua).
local prefix, group = ARGV[1], ARGV[2]
local max_groups, max_members = tonumber(ARGV[3]), tonumber(ARGV[4])
local G = group_keys(prefix, group)
local out = {}
for i = 7, #ARGV do
  local u = ARGV[i]
  local ukey = prefix .. '{u:' .. u .. '}:groups'
  local code = 0
  if redis.call('SISMEMBER', G.members, u) == 1 then
    redis.call('SADD', ukey, group)
    code = 3
  elseif redis.call('SCARD', ukey) >= max_groups then
    code = 1
  elseif redis.call('SCARD', G.members) >= max_members then
    code = 2
  else
    redis.call('SADD', G.members, u)
    redis.call('SADD', ukey, group)
    group_joined(G, u, ARGV[6])
  end
  out[#out + 1] = code
end
group_reform(G, tonumber(ARGV[5]), ARGV[6])
return out
