-- uses: now, inbox, group
-- Redis Cluster, step 2 of a batch (see store/cluster.py), in a large group's slot.
-- KEYS: the group's member set. ARGV: the key prefix, the group, max len, max age (ms),
-- window (ms), then per message: its id ('' when it has no client id), its entry. A
-- message whose record '{g:<group>}:msg:<id>' holds a position is not appended again
-- (that position is answered). About one call in 16 also trims the stream by age, as an
-- inbox is trimmed. Returns JSON [positions, gateways].
local G = group_keys(ARGV[1], ARGV[2])
local stamp = string.format('%.0f', now)
local by_age = now % 16 == 0
local out = {}
for i = 6, #ARGV, 2 do
  local id, pos = ARGV[i], false
  local mark = false
  if id ~= '' then
    mark = ARGV[1] .. '{g:' .. ARGV[2] .. '}:msg:' .. id
    pos = redis.call('GET', mark)
  end
  if not pos then
    pos = group_append(G, ARGV[i + 1], ARGV[3], ARGV[4], stamp)
    if mark then redis.call('SET', mark, pos, 'PX', ARGV[5]) end
  end
  out[#out + 1] = pos
end
if by_age then age_trim(G.stream, now - tonumber(ARGV[4])) end
local gws = group_gateways(G, now)
table.insert(gws, 1, '')
return cjson.encode({out, gws})
