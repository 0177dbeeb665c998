-- KEYS: per user, its acked, pos and groups keys. Returns per user its acknowledged
-- position and its inbox's end ('0' when missing), and 1 when it is in any group, else 0:
-- many connections' openings in one call (one Redis only: the keys span slots).
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('GET', KEYS[i]) or '0'
  out[#out + 1] = redis.call('GET', KEYS[i + 1]) or '0'
  out[#out + 1] = redis.call('EXISTS', KEYS[i + 2])
end
return out
