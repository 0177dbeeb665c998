-- The inbox, as every append script writes it (see store/entry.py for the entry itself):
-- a stream whose entry ids are "<position>-<ms>", one field 'm' holding the entry.

-- Append ``entry`` to the inbox ``ikey`` at its next position and return the position (a
-- string). ``pkey`` is the inbox's counter; ``acked_key(who)`` gives the key of its
-- acknowledged position, asked for only when the counter is fresh (a key name costs a
-- string build per recipient otherwise). A fresh counter resumes after what the inbox
-- still holds and after the acknowledged position (either may outlive a lost counter), so
-- a position is never given twice and never hidden behind an ack. Trims by length
-- (MAXLEN ~); ``stamp`` is the time (ms).
local function append_entry(ikey, pkey, acked_key, who, entry, max_len, max_age, stamp)
  local n = redis.call('INCR', pkey)
  if n == 1 then
    local top = redis.call('XREVRANGE', ikey, '+', '-', 'COUNT', 1)
    if #top > 0 then
      n = math.max(n, tonumber(string.match(top[1][1], '^(%d+)')) + 1)
    end
    n = math.max(n, tonumber(redis.call('GET', acked_key(who)) or '0') + 1)
    redis.call('SET', pkey, string.format('%.0f', n), 'PX', max_age)
  end
  local pos = string.format('%.0f', n)
  redis.call('XADD', ikey, 'MAXLEN', '~', max_len, pos .. '-' .. stamp, 'm', entry)
  return pos
end

-- Trim the inbox ``ikey`` by age, exactly, up to 32 entries per call: entries appended
-- before ``cutoff`` (ms) go. The oldest entry alone is read first: it is almost always
-- young enough, and 32 entries cost Redis a Lua table each.
local function age_trim(ikey, cutoff)
  local head = redis.call('XRANGE', ikey, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(string.match(head[1][1], '-(%d+)$')) >= cutoff then return end
  local old = redis.call('XRANGE', ikey, '-', '+', 'COUNT', 32)
  local cut = nil
  for _, e in ipairs(old) do
    local pos, t = string.match(e[1], '^(%d+)-(%d+)$')
    if tonumber(t) < cutoff then cut = pos else break end
  end
  if cut then
    redis.call('XTRIM', ikey, 'MINID', string.format('%.0f', tonumber(cut) + 1) .. '-0')
  end
end
