-- A large group, stored once (see store/keyspace.py): its keys share the group's hash tag.
-- G is a table of the group's key names: members, large, stream, last, pos, gateways,
-- joined, left, leavers, regroup.
-- 'large' exists while the group is stored once; 'stream' holds its messages (entry ids
-- "<position>-<ms>", field 'm', as an inbox); 'last' is its newest position; 'pos' maps
-- each member to the position up to which they have everything (acknowledged, or where
-- they joined); 'gateways' scores each gateway with members online by its expiry.
-- Membership in the stream's positions: 'joined' scores each member by the newest position
-- when they joined (or when the group became large); 'left' maps a leaver to
-- "<join>:<leave>", their latest ended membership, and 'leavers' scores them by the leave
-- position, so only the latest ``cap`` leavers are kept. A post at p was stored while the
-- user was a member when join < p <= leave.

local function group_keys(prefix, group)
  local base = prefix .. '{g:' .. group .. '}:'
  return {
    members = base .. 'members', large = base .. 'large', stream = base .. 'stream',
    last = base .. 'last', pos = base .. 'pos', gateways = base .. 'gateways',
    joined = base .. 'joined', left = base .. 'left', leavers = base .. 'leavers',
    regroup = base .. 'regroup',
  }
end

-- The group's newest position: its counter, else its stream's last entry, else 0.
local function group_last(G)
  local n = redis.call('GET', G.last)
  if n then return tonumber(n) end
  local top = redis.call('XREVRANGE', G.stream, '+', '-', 'COUNT', 1)
  if #top > 0 then return tonumber(string.match(top[1][1], '^(%d+)')) end
  return 0
end

-- The stream, its counter and the members' positions live and expire together.
local function group_touch(G, ttl)
  redis.call('PEXPIRE', G.stream, ttl)
  redis.call('PEXPIRE', G.last, ttl)
  redis.call('PEXPIRE', G.pos, ttl)
  redis.call('PEXPIRE', G.joined, ttl)
  redis.call('PEXPIRE', G.left, ttl)
  redis.call('PEXPIRE', G.leavers, ttl)
end

-- Append ``entry`` to the stream at the next position (a string); trims by length.
local function group_append(G, entry, max_len, ttl, stamp)
  local n = redis.call('INCR', G.last)
  if n == 1 then
    local top = redis.call('XREVRANGE', G.stream, '+', '-', 'COUNT', 1)
    if #top > 0 then
      n = math.max(n, tonumber(string.match(top[1][1], '^(%d+)')) + 1)
      redis.call('SET', G.last, string.format('%.0f', n))
    end
  end
  local pos = string.format('%.0f', n)
  redis.call('XADD', G.stream, 'MAXLEN', '~', max_len, pos .. '-' .. stamp, 'm', entry)
  group_touch(G, ttl)
  return pos
end

-- The live gateways with members online.
local function group_gateways(G, now)
  return redis.call('ZRANGEBYSCORE', G.gateways, string.format('(%.0f', now), '+inf')
end

-- A member joined: when the group is stored once (or its stream still holds posts from
-- when it was), they start at its newest position (nothing from before the join).
local function group_joined(G, user, ttl)
  if redis.call('EXISTS', G.large) == 1 or redis.call('EXISTS', G.last) == 1 then
    local last = string.format('%.0f', group_last(G))
    redis.call('HSET', G.pos, user, last)
    redis.call('ZADD', G.joined, last, user)
    group_touch(G, ttl)
  end
end

-- A member left: their position goes, and their membership (join and leave positions)
-- is kept as their latest ended one, when they had one in the stream; the oldest
-- leavers beyond ``cap`` are forgotten.
local function group_left(G, user, ttl, cap)
  redis.call('HDEL', G.pos, user)
  local joined = redis.call('ZSCORE', G.joined, user)
  if not joined and redis.call('EXISTS', G.large) == 0 then return end
  redis.call('ZREM', G.joined, user)
  local last = group_last(G)
  local start = string.format('%.0f', tonumber(joined or '0'))
  redis.call('HSET', G.left, user, start .. ':' .. string.format('%.0f', last))
  redis.call('ZADD', G.leavers, last, user)
  local over = redis.call('ZCARD', G.leavers) - tonumber(cap)
  if over > 0 then
    local gone = redis.call('ZPOPMIN', G.leavers, over)
    for i = 1, #gone, 2 do redis.call('HDEL', G.left, gone[i]) end
  end
  group_touch(G, ttl)
end

-- After the members changed: stored once above ``limit`` members, else in each member's
-- inbox. On becoming large every member without a position starts at the newest one
-- (what came before went to their inboxes), so nobody loses or gets twice a message.
-- 'regroup' then says that the members' connections have yet to follow the stream,
-- until a gateway has made them (store.regrouped): a change answered with an error
-- after this step is sent again, and finds the group large already.
local function group_reform(G, limit, ttl)
  local n = redis.call('SCARD', G.members)
  local large = redis.call('EXISTS', G.large) == 1
  if n > limit and not large then
    local last = string.format('%.0f', group_last(G))
    redis.call('SET', G.large, last)
    redis.call('SET', G.regroup, last)
    for _, user in ipairs(redis.call('SMEMBERS', G.members)) do
      redis.call('HSETNX', G.pos, user, last)
      redis.call('ZADD', G.joined, 'NX', last, user)
    end
    group_touch(G, ttl)
  elseif n <= limit and large then
    redis.call('DEL', G.large, G.regroup)
  end
end
