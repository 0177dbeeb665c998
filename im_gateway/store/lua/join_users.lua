-- Redis Cluster: the first half of adding users to a group, in one slot of users.
-- KEYS: those users' sets of groups. ARGV: group, the most groups per user. Per user,
-- as lua/join_user.lua: 0 (in it already), 1 (too many groups) or 3 (added now).
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SISMEMBER', k, ARGV[1]) == 1 then
    out[i] = 0
  elseif redis.call('SCARD', k) >= tonumber(ARGV[2]) then
    out[i] = 1
  else
    redis.call('SADD', k, ARGV[1])
    out[i] = 3
  end
end
return out
