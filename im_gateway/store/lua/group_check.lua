-- Redis Cluster, step 1 of a batch (see store/cluster.py), in a group's slot.
-- KEYS: the group's member set, its 'large' key. ARGV: the senders to check. Returns
-- {1, sender, ...} (stored once: the senders that are members) or {0, member, ...}.
if redis.call('EXISTS', KEYS[2]) == 1 then
  local out = {1}
  for _, s in ipairs(ARGV) do
    if redis.call('SISMEMBER', KEYS[1], s) == 1 then out[#out + 1] = s end
  end
  return out
end
local out = redis.call('SMEMBERS', KEYS[1])
table.insert(out, 1, 0)
return out
