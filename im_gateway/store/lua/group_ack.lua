-- uses: group
-- KEYS: the group's member set. ARGV: the key prefix, the group, the user, the position,
-- the stream ttl (ms). A member's position in the group's stream moves forward only, and
-- never past the stream's newest position; a non-member's is not kept. Returns 1 when it
-- moved.
local G = group_keys(ARGV[1], ARGV[2])
if redis.call('SISMEMBER', G.members, ARGV[3]) == 0 then return 0 end
local want = math.min(tonumber(ARGV[4]), group_last(G))
local cur = tonumber(redis.call('HGET', G.pos, ARGV[3]) or '0')
if want > cur then
  redis.call('HSET', G.pos, ARGV[3], string.format('%.0f', want))
  group_touch(G, ARGV[5])
  return 1
end
return 0
