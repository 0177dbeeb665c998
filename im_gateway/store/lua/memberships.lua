-- KEYS: the member sets of the groups asked about (one slot on a cluster). ARGV: the key
-- prefix, then per group: the group, "since", the number of users n (at most 1,000), the
-- n users. Read atomically, per group in that order (see lua/group.lua):
-- - since "0" (exact): {SMISMEMBER of the users (1 or 0: a member now), ZMSCORE of their
--   join positions (nil when none kept), HMGET of their latest ended membership
--   ("<join>:<leave>"; nil when none)};
-- - since > 0 (only posts after it matter): {SMISMEMBER of the users, [member, join, ...]
--   of every member who joined after since, [leaver, "<join>:<leave>", ...] of every
--   leaver who left after since}: the cost is the member test plus the changes since,
--   whatever the number of users.
local prefix = ARGV[1]
local out = {}
local i = 2
while i <= #ARGV do
  local base = prefix .. '{g:' .. ARGV[i] .. '}:'
  local since = ARGV[i + 1]
  local first, last = i + 3, i + 2 + tonumber(ARGV[i + 2])
  local member = redis.call('SMISMEMBER', base .. 'members', unpack(ARGV, first, last))
  if since == '0' then
    out[#out + 1] = {
      member,
      redis.call('ZMSCORE', base .. 'joined', unpack(ARGV, first, last)),
      redis.call('HMGET', base .. 'left', unpack(ARGV, first, last)),
    }
  else
    local bound = '(' .. since
    local leavers = redis.call('ZRANGEBYSCORE', base .. 'leavers', bound, '+inf')
    local ended = {}
    for from = 1, #leavers, 1000 do
      local to = math.min(from + 999, #leavers)
      local spans = redis.call('HMGET', base .. 'left', unpack(leavers, from, to))
      for k = from, to do
        ended[#ended + 1] = leavers[k]
        ended[#ended + 1] = spans[k - from + 1] or ''
      end
    end
    out[#out + 1] = {
      member,
      redis.call('ZRANGEBYSCORE', base .. 'joined', bound, '+inf', 'WITHSCORES'),
      ended,
    }
  end
  i = last + 1
end
return out
