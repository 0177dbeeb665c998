-- uses: group
-- KEYS: per group, its member set (the groups of one slot, or any on one Redis). ARGV:
-- the key prefix, the user, the most entries per group, then the groups. For each group
-- the user is in that is stored once (or whose stream still holds messages): the user's
-- position there (0: none kept), the stream's newest position and the entries after the
-- position. Returns JSON [[group, position, last, [[id, fields], ...]], ...].
local prefix, user, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local G = group_keys(prefix, ARGV[i])
  if redis.call('SISMEMBER', G.members, user) == 1
    and (redis.call('EXISTS', G.large) == 1 or redis.call('EXISTS', G.stream) == 1) then
    local pos = tonumber(redis.call('HGET', G.pos, user) or '0')
    local rows = {}
    if limit > 0 then
      rows = redis.call('XRANGE', G.stream, string.format('%.0f', pos + 1), '+', 'COUNT', limit)
    end
    out[#out + 1] = {ARGV[i], string.format('%.0f', pos), string.format('%.0f', group_last(G)), rows}
  end
end
return cjson.encode(out)
