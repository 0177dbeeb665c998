-- KEYS: the member sets of the groups asked about (one slot on a cluster). ARGV: the key
-- prefix, then per group: the group, the number of users n (at most 1,000), the n users.
-- Read atomically, per group in that order: {SMISMEMBER of the users (1 or 0: a member
-- now), HMGET of their join positions (the current membership; nil when none kept),
-- HMGET of their latest ended membership ("<join>:<leave>"; nil when none)}; see
-- lua/group.lua. Bulk reads only: no per-user work in Lua.
local prefix = ARGV[1]
local out = {}
local i = 2
while i <= #ARGV do
  local base = prefix .. '{g:' .. ARGV[i] .. '}:'
  local first, last = i + 2, i + 1 + tonumber(ARGV[i + 1])
  out[#out + 1] = {
    redis.call('SMISMEMBER', base .. 'members', unpack(ARGV, first, last)),
    redis.call('HMGET', base .. 'joined', unpack(ARGV, first, last)),
    redis.call('HMGET', base .. 'left', unpack(ARGV, first, last)),
  }
  i = last + 1
end
return out
