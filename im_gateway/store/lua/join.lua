-- KEYS: the group's member set, the user's set of groups. ARGV: user, group, the most
-- groups per user, the most members per group. Check and add in one step, so concurrent
-- joins cannot overshoot a bound. Returns 0 (member now), 1 (the user is in too many
-- groups), 2 (the group is full) or 3 (a member already).
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[2], ARGV[2])
  return 3
end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 2
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return 0
