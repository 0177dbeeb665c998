-- uses: now, inbox, group
-- One batch on one Redis, atomic. No KEYS: the recipients of a group message are only
-- known here, so key names are built from the prefix.
-- ARGV: prefix, batch, inbox max len, inbox max age (ms), dedupe window (ms), then one
-- inbox entry per submission (stored as is). The batch is a JSON array of [client_id,
-- from, to, type, id, time, check], every item a string; check "0" skips the group
-- membership test (the server API), and a sender "0" (the system) has no inbox.
-- For each submission in order: dedupe (GET; a duplicate stores nothing and answers the
-- first one's recipients; the record is written after the appends), the group check (a
-- non-member stores nothing and releases the client id), then per recipient INCR of its
-- position and one XADD at that position. Each XADD trims by length; in about one batch
-- in 16 (by the clock), each inbox written is also trimmed by age. Then, once per
-- distinct recipient, the TTLs and the presence look-up.
-- A message to a large group (its 'large' key exists) is appended once to the group's
-- stream instead (lua/group.lua); its dedupe record names "g<group>" and the position.
-- Returns JSON [results, presence]: a result is [0, user, pos, user, pos, ...] (stored),
-- [1, first id, first time, entry or false, user, pos, ...] (duplicate), [2] (not a
-- member), [3, group, pos, n, user, pos (n pairs), gateway, ...] (stored once in a large
-- group's stream, with the gateways that have members online; the pairs: the inbox copy
-- of a server API sender who is not a member) or [4, first id, first time, entry, group,
-- pos, n, user, pos (n pairs), gateway, ...] (a duplicate of such a message); presence is
-- a list of [user, gateway, ...] for the recipients with a live gateway.
local prefix = ARGV[1]
local batch = cjson.decode(ARGV[2])
local max_len = ARGV[3]
local max_age = tonumber(ARGV[4])
local max_age_text = ARGV[4]  -- as a command's argument: a number would be formatted per call
local window = ARGV[5]
local stamp = string.format('%.0f', now)
local by_age = now % 16 == 0
local cutoff = now - max_age
local results = {}
local touched = {}
local order = {}
local appended = {}
local function ukey(u, kind)
  return prefix .. '{u:' .. u .. '}:' .. kind
end
local function note(u)
  if not touched[u] then
    touched[u] = true
    order[#order + 1] = u
  end
end
local function acked_key(u)
  return ukey(u, 'acked')
end
local function append(u, entry)
  local ikey = ukey(u, 'inbox')
  local pos = append_entry(ikey, ukey(u, 'pos'), acked_key, u, entry, max_len, max_age, stamp)
  if not appended[u] then
    appended[u] = true
    if by_age then age_trim(ikey, cutoff) end
  end
  note(u)
  return pos
end
for i, s in ipairs(batch) do
  local cid, from, to, typ, id, time, check = s[1], s[2], s[3], s[4], s[5], s[6], s[7]
  local dkey = false
  local res = nil
  if cid ~= '' then
    dkey = ukey(from, 'dedupe:' .. cid)
    local seen = redis.call('GET', dkey)
    if seen then
      -- A write (the TTL as it is), so that a WAIT after this call covers the first one.
      local ttl = redis.call('PTTL', dkey)
      if ttl > 0 then redis.call('PEXPIRE', dkey, ttl) end
      -- "<n> <time> <user> <pos> ... (n pairs) <id>": the first one's recipients; the id
      -- is the rest of the string (it may hold spaces).
      local words, at = {}, 1
      local count = nil
      while count == nil or #words < 2 + 2 * count do
        local a, b = string.find(seen, '%S+', at)
        words[#words + 1] = string.sub(seen, a, b)
        at = b + 2
        if count == nil then count = tonumber(words[1]) end
      end
      local first_time, first_id = words[2], string.sub(seen, at)
      -- The stored message itself (not the resend's text), from the first recipient's
      -- inbox; when it was trimmed there is nothing to push again.
      local stored = {}
      local G = false
      if count > 0 and string.sub(words[3], 1, 1) == 'g' then
        G = group_keys(prefix, string.sub(words[3], 2))
        stored = redis.call('XRANGE', G.stream, words[4], words[4], 'COUNT', 1)
      elseif count > 0 then
        stored = redis.call('XRANGE', ukey(words[3], 'inbox'), words[4], words[4], 'COUNT', 1)
      end
      if #stored > 0 and G then
        res = {4, first_id, first_time, stored[1][2][2], string.sub(words[3], 2), words[4],
          count - 1}
        for j = 5, #words do
          res[#res + 1] = words[j]
          if j % 2 == 1 then note(words[j]) end
        end
        for _, gw in ipairs(group_gateways(G, now)) do res[#res + 1] = gw end
      elseif #stored > 0 then
        res = {1, first_id, first_time, stored[1][2][2]}
        for j = 3, #words do
          res[#res + 1] = words[j]
          if j % 2 == 1 then note(words[j]) end
        end
      else
        res = {1, first_id, first_time, false}
      end
    end
  end
  if not res then
    local users
    local G = typ == '2' and group_keys(prefix, to)
    if G and redis.call('EXISTS', G.large) == 1 then
      if check ~= '0' and redis.call('SISMEMBER', G.members, from) == 0 then
        res = {2}
      else
        local pos = group_append(G, ARGV[5 + i], max_len, max_age, stamp)
        if by_age then age_trim(G.stream, cutoff) end
        -- The server API posting as a user who is not a member: their inbox's copy.
        local copy = {}
        if check == '0' and from ~= '0' and redis.call('SISMEMBER', G.members, from) == 0 then
          copy = {from, append(from, ARGV[5 + i])}
        end
        if dkey then
          local record = (1 + #copy / 2) .. ' ' .. time .. ' g' .. to .. ' ' .. pos
          if #copy > 0 then record = record .. ' ' .. copy[1] .. ' ' .. copy[2] end
          redis.call('SET', dkey, record .. ' ' .. id, 'PX', window)
        end
        res = {3, to, pos, #copy / 2}
        for _, v in ipairs(copy) do res[#res + 1] = v end
        for _, gw in ipairs(group_gateways(G, now)) do res[#res + 1] = gw end
      end
    elseif G then
      local gkey = G.members
      if check == '0' then
        users = redis.call('SMEMBERS', gkey)
        if from ~= '0' and redis.call('SISMEMBER', gkey, from) == 0 then
          users[#users + 1] = from
        end
      elseif redis.call('SISMEMBER', gkey, from) == 1 then
        users = redis.call('SMEMBERS', gkey)
      else
        res = {2}
      end
    elseif from == to or from == '0' then
      users = {to}
    else
      users = {to, from}
    end
    if users then
      local entry = ARGV[5 + i]
      local written = {}
      for _, u in ipairs(users) do
        written[#written + 1] = u
        written[#written + 1] = append(u, entry)
      end
      if dkey then
        redis.call('SET', dkey, (#written / 2) .. ' ' .. time .. ' ' ..
          table.concat(written, ' ') .. ' ' .. id, 'PX', window)
      end
      res = {0}
      for _, v in ipairs(written) do
        res[#res + 1] = v
      end
    end
  end
  results[i] = res
end
local since = string.format('(%.0f', now)
local presence = {}
for _, u in ipairs(order) do
  if appended[u] then
    redis.call('PEXPIRE', ukey(u, 'inbox'), max_age_text)
    if by_age then
      -- The counter's TTL is refreshed lazily (here, and by acks): when it lapses while
      -- the inbox lives, the next append and the next ack resume from the inbox.
      redis.call('PEXPIRE', ukey(u, 'pos'), max_age_text)
    end
  end
  local gws = redis.call('ZRANGEBYSCORE', ukey(u, 'presence'), since, '+inf')
  if #gws > 0 then
    table.insert(gws, 1, u)
    presence[#presence + 1] = gws
  end
end
return cjson.encode({results, presence})
