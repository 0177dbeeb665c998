-- Redis Cluster, step 1 of a batch (see store/cluster.py).
-- KEYS: dedupe keys (one sender's, so one slot). ARGV: window (ms), then one pending
-- record per key. Returns per key 0 (claimed now) or the record already there.
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SET', k, ARGV[i + 1], 'PX', ARGV[1], 'NX') then
    out[i] = 0
  else
    out[i] = redis.call('GET', k) or 0
  end
end
return out
