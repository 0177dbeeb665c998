-- uses: now
-- KEYS: presence keys. ARGV: gateway id, ttl (ms). Upserts the gateway's entry, drops
-- expired members, and lets the key live as long as its latest member.
local expires = now + tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, expires, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', k, string.format('%.0f', math.ceil(tonumber(top[2]))))
end
return #KEYS
