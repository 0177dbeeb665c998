-- KEYS: per user, its acked key, its pos key and its inbox key. ARGV: one position per
-- user, then the ttl (ms). Each acked key moves forward only, and never past the user's
-- newest position. Returns how many keys moved.
local ttl = ARGV[#ARGV]
local moved = 0
for i = 1, #KEYS, 3 do
  local key = KEYS[i]
  local want = tonumber(ARGV[(i + 2) / 3])
  local top = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if top == 0 then
    -- The counter lapsed (its TTL is refreshed lazily) while the inbox lives: its last
    -- entry says where the inbox ends.
    local last = redis.call('XREVRANGE', KEYS[i + 2], '+', '-', 'COUNT', 1)
    if #last > 0 then
      top = tonumber(string.match(last[1][1], '^(%d+)'))
      redis.call('SET', KEYS[i + 1], string.format('%.0f', top), 'PX', ttl)
    end
  end
  if want > top then want = top end
  local cur = tonumber(redis.call('GET', key) or '0')
  if want > cur then
    redis.call('SET', key, string.format('%.0f', want), 'PX', ttl)
    moved = moved + 1
  elseif cur > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
  if top > 0 then
    -- The counter lives at least as long as the ack, so positions go on from it.
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  end
end
return moved
