-- uses: now
-- KEYS: presence keys. Returns, per key, the gateways whose entry has not expired.
local since = string.format('(%.0f', now)
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('ZRANGEBYSCORE', k, since, '+inf')
end
return out
