-- uses: now, inbox
-- Redis Cluster, step 2 of a batch (see store/cluster.py), in one slot.
-- KEYS: per user of the slot its inbox, pos, acked and presence keys; then the msg keys.
-- ARGV: max len, max age (ms), window (ms), the number of users, then per append: the
-- user's index (from 1), its msg key's index in KEYS (0: none), the entry. In order, each
-- append is skipped when its msg key holds a position (that position is answered), else
-- INCR + XADD as on one Redis and the msg key is set. Every user appended to (or found
-- appended) has its TTLs refreshed: a write, so a WAIT after this call covers it. Returns
-- JSON [positions per append, presence per user].
local max_len = ARGV[1]
local max_age = tonumber(ARGV[2])
local window = ARGV[3]
local nusers = tonumber(ARGV[4])
local stamp = string.format('%.0f', now)
local by_age = now % 16 == 0
local cutoff = now - max_age
local touched = {}
local function acked_key(base)
  return KEYS[base + 3]
end
local function append(u, entry)
  local base = (u - 1) * 4
  local ikey = KEYS[base + 1]
  local pos = append_entry(ikey, KEYS[base + 2], acked_key, base, entry, max_len, max_age, stamp)
  if by_age and not touched[u] then age_trim(ikey, cutoff) end
  return pos
end
local out = {}
for i = 5, #ARGV, 3 do
  local u, mark, entry = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2]
  local pos = false
  if mark > 0 then pos = redis.call('GET', KEYS[mark]) end
  if not pos then
    pos = append(u, entry)
    if mark > 0 then redis.call('SET', KEYS[mark], pos, 'PX', window) end
  end
  touched[u] = true
  out[#out + 1] = pos
end
local since = string.format('(%.0f', now)
local presence = {}
for u = 1, nusers do
  local base = (u - 1) * 4
  if touched[u] then
    redis.call('PEXPIRE', KEYS[base + 1], max_age)
    redis.call('PEXPIRE', KEYS[base + 2], max_age)
  end
  local gws = redis.call('ZRANGEBYSCORE', KEYS[base + 4], since, '+inf')
  table.insert(gws, 1, '')
  presence[u] = gws
end
return cjson.encode({out, presence})
