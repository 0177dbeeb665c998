"""The :class:`~im_gateway.store.Store` on Redis (redis.asyncio), and :func:`open_store`.

Keys, all under ``prefix`` (default ``"im:"``). Every key of one user shares the hash
tag ``{u:<user>}`` and every key of one group ``{g:<group>}``, ready for Redis Cluster:

``{prefix}{u:<user>}:inbox``
    stream, one entry per message, with one field, ``m``: the message as a JSON array
    ``[id, from, to, type, content_type, time, content]``. The entry id is
    ``<position>-<ms>``: the consecutive inbox position (1, 2, 3, ...) and the Redis clock
    at the append, so a range by position is a plain ``XRANGE`` and trimming by age reads
    the time from the ids. Trimmed on append by length (``MAXLEN ~``) and, about one batch
    in 16, by age (exactly, up to 32 entries per inbox per pass); the key expires
    ``inbox_max_age`` after the last append.
``{prefix}{u:<user>}:pos``
    the position of the newest message ever appended (``INCR``); TTL ``inbox_max_age``,
    refreshed lazily (about one batch in 16, and by acks).
    When it is missing but the inbox is not, the next append resumes after the inbox's
    last entry, so positions never repeat while an inbox exists.
``{prefix}{u:<user>}:acked``
    the acknowledged position; only moves forward, never past ``pos``; TTL
    ``inbox_max_age``.
``{prefix}{u:<user>}:presence``
    sorted set: member = gateway id, score = expiry (ms since the epoch, Redis clock).
    Look-ups keep members scored after "now"; the key expires with its latest member.
``{prefix}{u:<user>}:dedupe:<client id>``
    ``"<n> <time> <user> <position> ... <message id>"`` (n pairs; the id is the rest) of
    the first message with that client id (its recipients, so a resend can be pushed
    again); TTL ``dedupe_window``.
``{prefix}{u:<user>}:groups``
    set of the group ids ``user`` is in, at most ``max_groups_per_user`` (kept by
    :meth:`RedisStore.join` and :meth:`RedisStore.leave`). No TTL: bounded instead.
``{prefix}{g:<group>}:members``
    set of user ids, at most ``max_group_members``. No TTL: bounded instead.
``{prefix}gateway:<gateway id>``
    a live gateway's beacon (:meth:`RedisStore.beacon`), TTL ``presence_ttl``: when it is
    missing, the gateway re-asserts its presence (Redis lost it).
``{prefix}epoch``
    the data generation, made once (no TTL: one small key); a gateway that sees it change
    knows Redis lost its data, so inbox positions start from 1 again.

Every script reads the clock with ``TIME`` on the Redis server, so gateways with skewed
clocks still agree on presence expiry and inbox age.

:meth:`RedisStore.submit` is one ``EVALSHA`` per batch, whatever its size, and atomic:
a batch is stored whole or not at all, so retrying it is safe (its client ids dedupe
it, and the duplicates carry their recipients to be pushed again). That script builds
key names from its arguments (the recipients of a group message are only known inside
it), so it touches keys not passed in ``KEYS``: the store needs a single Redis
(standalone, or a primary with replicas); on Redis Cluster,
:class:`~im_gateway.store_cluster.ClusterStore` stores a batch with one script per slot.
With ``wait_replicas``, the script and a ``WAIT`` share one pipeline (one connection), and
a batch that too few replicas confirmed is answered ``internal`` ("not replicated; send
again"); its resend is a duplicate, whose script writes (a TTL), so its ``WAIT`` covers
the first one's writes. Acks asked for at about the
same time (:meth:`RedisStore.ack`, any number of users) share one ``EVALSHA`` too, and a
read is one round trip (``XRANGE`` and ``GET`` pipelined).

The client retries a command once a pooled connection turns out dead (the server
restarted, say) on a fresh connection, with a short backoff; a timeout is not retried
here (the caller decides: a stored batch whose reply was lost is deduplicated when it is
sent again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError, NoScriptError

from transmit_hub.lifecycle import AsyncClosing
from transmit_hub.types import GatewayId, Message, MessageId, Recipient, UserId

from .errors import StoreError
from .store import (
    DEFAULT_MAX_GROUP_MEMBERS,
    DEFAULT_MAX_GROUPS_PER_USER,
    MAX_POSITION,
    Accepted,
    Beacon,
    InboxEntry,
    InboxPage,
    Refused,
    Store,
    Submission,
    group_limit_error,
    unencodable,
)
from .store_memory import MemoryStore

__all__ = ["RedisStore", "open_store"]

# Shared Lua prologue: the server's clock in milliseconds. Effects replication (the
# default since Redis 5) allows writes after TIME; the call keeps 3.2-4.x happy too.
_NOW = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Lua: trim an inbox by age, exactly, up to 32 entries per call (the ids are
# "<position>-<ms>"); needs a local ``cutoff`` (ms). Shared by the one-Redis and the
# cluster append scripts.
_AGE_TRIM = """
local function age_trim(ikey)
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
"""

# ARGV: prefix, batch, inbox max len, inbox max age (ms), dedupe window (ms), then one
# inbox entry per submission (the message as JSON, stored as is). The batch is a JSON array
# of [client_id, from, to, type, id, time, check], every item a string; check "0" skips the
# group membership test (the server API), and a sender "0" (the system) has no inbox.
# For each submission in order: dedupe (GET; a duplicate stores nothing and answers the
# first one's recipients; the record is written after the appends), the group check (a non-member stores nothing and releases the
# client id), then per recipient INCR of its position and one XADD at that position. Each
# XADD trims by length; in about one batch in 16 (by the clock), each inbox written is also
# trimmed by age. Then, once per distinct recipient, the TTLs and the presence look-up.
# Returns JSON [results, presence]: a result is [0, user, pos, user, pos, ...] (stored),
# [1, first id, first time, user, pos, ...] (duplicate) or [2] (not a member); presence is
# a list of [user, gateway, ...] for the recipients with a live gateway.
_SUBMIT = (
    _NOW
    + """
local prefix = ARGV[1]
local batch = cjson.decode(ARGV[2])
local max_len = ARGV[3]
local max_age = tonumber(ARGV[4])
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
"""
    + _AGE_TRIM
    + """
local function append(u, entry)
  local pkey = ukey(u, 'pos')
  local ikey = ukey(u, 'inbox')
  local n = redis.call('INCR', pkey)
  if n == 1 then
    -- A fresh counter: resume after what the inbox still holds and after the
    -- acknowledged position (either may outlive a lost counter), so a position is
    -- never given twice and never hidden behind an ack.
    local top = redis.call('XREVRANGE', ikey, '+', '-', 'COUNT', 1)
    if #top > 0 then
      n = math.max(n, tonumber(string.match(top[1][1], '^(%d+)')) + 1)
    end
    local acked = tonumber(redis.call('GET', ukey(u, 'acked')) or '0')
    n = math.max(n, acked + 1)
    redis.call('SET', pkey, string.format('%.0f', n), 'PX', max_age)
  end
  local pos = string.format('%.0f', n)
  redis.call('XADD', ikey, 'MAXLEN', '~', max_len, pos .. '-' .. stamp, 'm', entry)
  if not appended[u] then
    appended[u] = true
    if by_age then age_trim(ikey) end
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
      if count > 0 then
        stored = redis.call('XRANGE', ukey(words[3], 'inbox'), words[4], words[4], 'COUNT', 1)
      end
      if #stored > 0 then
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
    if typ == '2' then
      local gkey = prefix .. '{g:' .. to .. '}:members'
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
    redis.call('PEXPIRE', ukey(u, 'inbox'), max_age)
    if by_age then
      -- The counter's TTL is refreshed lazily (here, and by acks): when it lapses while
      -- the inbox lives, the next append and the next ack resume from the inbox.
      redis.call('PEXPIRE', ukey(u, 'pos'), max_age)
    end
  end
  local gws = redis.call('ZRANGEBYSCORE', ukey(u, 'presence'), since, '+inf')
  if #gws > 0 then
    table.insert(gws, 1, u)
    presence[#presence + 1] = gws
  end
end
return cjson.encode({results, presence})
"""
)

# KEYS: presence keys. ARGV: gateway id, ttl (ms). Upserts the gateway's entry, drops
# expired members, and lets the key live as long as its latest member.
_REFRESH = (
    _NOW
    + """
local expires = now + tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, expires, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local top = redis.call('ZRANGE', k, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', k, string.format('%.0f', math.ceil(tonumber(top[2]))))
end
return #KEYS
"""
)

# KEYS: presence keys. Returns, per key, the gateways whose entry has not expired.
_LOOKUP = (
    _NOW
    + """
local since = string.format('(%.0f', now)
local out = {}
for i, k in ipairs(KEYS) do
  out[i] = redis.call('ZRANGEBYSCORE', k, since, '+inf')
end
return out
"""
)

# KEYS: per user, its acked key, its pos key and its inbox key. ARGV: one position per
# user, then the ttl (ms). Each acked key moves forward only, and never past the user's newest position.
# Returns how many keys moved.
_ACK = """
local ttl = ARGV[#ARGV]
local moved = 0
for i = 1, #KEYS, 3 do
  local key = KEYS[i]
  local want = tonumber(ARGV[(i + 2) / 3])
  local top = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  if top == 0 then
    -- The counter lapsed (its TTL is refreshed lazily) while the inbox lives: its last
    -- entry says where the inbox ends.
    local last = redis.call('XREVRANGE', KEYS[i + 2], '+', '-', 'COUNT', 1)
    if #last > 0 then
      top = tonumber(string.match(last[1][1], '^(%d+)'))
      redis.call('SET', KEYS[i + 1], string.format('%.0f', top), 'PX', ttl)
    end
  end
  if want > top then want = top end
  local cur = tonumber(redis.call('GET', key) or '0')
  if want > cur then
    redis.call('SET', key, string.format('%.0f', want), 'PX', ttl)
    moved = moved + 1
  elseif cur > 0 then
    redis.call('PEXPIRE', key, ttl)
  end
  if top > 0 then
    -- The counter lives at least as long as the ack, so positions go on from it.
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  end
end
return moved
"""

# KEYS: the group's member set, the user's set of groups. ARGV: user, group, the most
# groups per user, the most members per group. Check and add in one step, so concurrent
# joins cannot overshoot a bound. Returns 0 (member now), 1 (the user is in too many
# groups) or 2 (the group is full).
_JOIN = """
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
"""
_JOIN_REFUSED = {1: "user_full", 2: "group_full"}
_JOIN_ALREADY = 3

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_quote = json.encoder.encode_basestring  # a str as a JSON string literal (C, fast)
_DUPLICATE = 1
_NOT_MEMBER = 2
NOT_REPLICATED = "not replicated; send again"
"""The refusal (code ``internal``) of a message that WAIT did not see on enough replicas."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_position(entry_id: bytes | str) -> int:
    """The inbox position in a stream entry id ``<position>-<ms>``."""
    text = _text(entry_id)
    return int(text.partition("-")[0])


def client_options(socket_timeout: float) -> dict[str, Any]:
    """Connection settings for the store's Redis clients.

    A command on a pooled connection that died (the server restarted) is retried on a
    fresh one, up to 3 times with a short backoff; a timeout is not retried (that would
    multiply a stall), it reaches the caller. Idle connections are checked before use.
    """
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3, (ConnectionError,)),
        "retry_on_timeout": False,
        "health_check_interval": 5,
    }


class RedisStore(AsyncClosing):
    """Presence, groups, inboxes and dedupe in one Redis (6.2 or later).

    ``client`` is a ``redis.asyncio.Redis`` (the caller keeps owning it; :meth:`close`
    leaves it open) or a URL (the store makes the client and closes it). Options:

    - ``prefix``: every key starts with it.
    - ``inbox_max_len``: entries kept per inbox (approximately: Redis trims whole
      stream nodes, so up to about 100 more may stay).
    - ``inbox_max_age``: seconds an inbox entry is kept (also approximate), and the TTL of
      the inbox and acknowledged-position keys.
    - ``dedupe_window``: seconds a client id is remembered per user.
    - ``presence_ttl``: seconds a presence entry lives unless refreshed.
    - ``max_groups_per_user``, ``max_group_members``: bounds :meth:`join` keeps.
    """

    def __init__(
        self,
        client: aioredis.Redis | str,
        *,
        prefix: str = "im:",
        inbox_max_len: int = 10_000,
        inbox_max_age: float = 7 * 86400,
        dedupe_window: float = 600,
        presence_ttl: float = 30,
        socket_timeout: float = 5.0,
        max_groups_per_user: int = DEFAULT_MAX_GROUPS_PER_USER,
        max_group_members: int = DEFAULT_MAX_GROUP_MEMBERS,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        if wait_replicas < 0 or wait_timeout <= 0:
            raise StoreError("wait_replicas must be 0 or more and wait_timeout positive")
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._wait_ms = max(1, round(wait_timeout * 1000))
        if inbox_max_len < 1 or inbox_max_age <= 0 or dedupe_window <= 0 or presence_ttl <= 0:
            raise StoreError("store limits and TTLs must be positive")
        if "{" in prefix or "}" in prefix:
            raise StoreError(f"the key prefix {prefix!r} must not contain braces")
        if max_groups_per_user < 1 or max_group_members < 1:
            raise StoreError("group limits must be positive")
        self.max_groups_per_user = max_groups_per_user
        self.max_group_members = max_group_members
        if isinstance(client, str):
            # Timeouts so a hung Redis fails calls instead of stalling them; the URL's
            # query (?socket_timeout=...) overrides them.
            self._client = aioredis.Redis.from_url(client, **client_options(socket_timeout))
            self._owns_client = True
        else:
            self._client = client
            self._owns_client = False
        self.prefix = prefix
        self.inbox_max_len = inbox_max_len
        self.inbox_max_age = inbox_max_age
        self.dedupe_window = dedupe_window
        self.presence_ttl = presence_ttl
        self._max_age_ms = max(1, round(inbox_max_age * 1000))
        self._window_ms = max(1, round(dedupe_window * 1000))
        self._presence_ms = max(1, round(presence_ttl * 1000))
        self._submit = self._client.register_script(_SUBMIT)
        self._refresh = self._client.register_script(_REFRESH)
        self._lookup = self._client.register_script(_LOOKUP)
        self._ack = self._client.register_script(_ACK)
        self._join = self._client.register_script(_JOIN)
        self._acks: dict[str, int] = {}
        """Ack writes being gathered: acked key -> the highest position asked for."""
        self._ack_batch: asyncio.Future[None] | None = None
        """Completes when the gathered acks are written (None: none being gathered)."""
        self._ack_writes: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the store uses."""
        return self._client

    def _key(self, kind: str, user: object) -> str:
        """The key of one of ``user``'s records (``inbox``, ``pos``, ``acked``, ...)."""
        return f"{self.prefix}{{u:{user}}}:{kind}"

    def _group_key(self, group: int) -> str:
        return f"{self.prefix}{{g:{group}}}:members"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    # -- messages -------------------------------------------------------------------------

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        self._check_open()
        bad = unencodable(batch)
        todo = [s for i, s in enumerate(batch) if i not in bad] if bad else batch
        done: list[Accepted | Refused] = []
        if todo:
            rows = []
            entries = []
            for s in todo:
                m = s.message
                rows.append(
                    (
                        s.client_id,
                        str(m.sender),
                        str(m.to),
                        str(m.type),
                        m.id,
                        str(m.time),
                        "1" if s.check_member else "0",
                    )
                )
                # The inbox entry: the message as a JSON array, read back by _message().
                entries.append(
                    f"[{_quote(m.id)},{m.sender:d},{m.to:d},{m.type:d},"
                    f"{m.content_type:d},{m.time:d},{_quote(m.content)}]"
                )
            args: tuple[str | int, ...] = (
                self.prefix,
                _encode(rows),
                self.inbox_max_len,
                self._max_age_ms,
                self._window_ms,
                *entries,
            )
            if self.wait_replicas:
                reply, replicated = await self._submit_and_wait(args)
            else:
                reply, replicated = await self._submit(args=args), True
            results, live = json.loads(reply)
            presence: dict[int, tuple[GatewayId, ...]] = {
                int(entry[0]): tuple(entry[1:]) for entry in live
            }
            done = [_result(s, res, presence) for s, res in zip(todo, results, strict=True)]
            if not replicated:
                done = [
                    Refused(r.client_id, "internal", NOT_REPLICATED)
                    if isinstance(r, Accepted)
                    else r
                    for r in done
                ]
        if not bad:
            return done
        stored = iter(done)
        return [
            Refused(s.client_id, "bad_request", "content is not valid Unicode")
            if i in bad
            else next(stored)
            for i, s in enumerate(batch)
        ]

    async def _submit_and_wait(self, args: Sequence[Any]) -> tuple[Any, bool]:
        """The batch script and ``WAIT`` in one pipeline, so on one connection (WAIT
        counts the replicas that have that connection's writes); True when enough do."""
        for attempt in (1, 2):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._submit.sha, 0, *args)
                pipe.execute_command("WAIT", self.wait_replicas, self._wait_ms)
                reply, count = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and attempt == 1:
                await self._client.script_load(_SUBMIT)
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply, isinstance(count, int) and count >= self.wait_replicas
        raise AssertionError("unreachable")

    async def read_inbox(self, user: UserId, after: int, limit: int) -> InboxPage:
        self._check_open()
        # The newest position first: every position up to it that the range then lacks
        # was trimmed (an append between the two only adds entries beyond it).
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(self._key("pos", user))
            if limit > 0 and after < MAX_POSITION:
                pipe.xrange(self._key("inbox", user), str(after + 1), "+", count=limit)
            replies: list[Any] = await pipe.execute()
        last = int(replies[0] or 0)
        rows = replies[1] if len(replies) > 1 else ()
        return InboxPage(
            [InboxEntry(_entry_position(eid), _message(fields)) for eid, fields in rows or ()],
            last,
        )

    async def ack(self, user: UserId, upto: int) -> None:
        self._check_open()
        if upto <= 0:
            return
        key = self._key("acked", user)
        current = self._acks.get(key)
        if current is None or upto > current:
            self._acks[key] = upto
        batch = self._ack_batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._ack_batch = loop.create_future()
            batch.add_done_callback(_retrieve)
            task = loop.create_task(self._write_acks(batch))
            self._ack_writes.add(task)
            task.add_done_callback(self._ack_writes.discard)
        await asyncio.shield(batch)  # a caller's cancellation leaves the write to finish

    async def _write_acks(self, batch: asyncio.Future[None]) -> None:
        """One script call for every ack asked for since the previous one.

        Sessions write acks (type 11) as their clients send them; a client that acks
        each message would otherwise cost a round trip per message. Acks asked for
        before this task runs (at least every one of the same loop turn) share it.
        """
        acks, self._acks, self._ack_batch = self._acks, {}, None
        keys: list[str] = []
        for key in acks:
            base = key[: -len("acked")]
            keys += (key, base + "pos", base + "inbox")
        try:
            await self._ack(keys=keys, args=(*acks.values(), self._max_age_ms))
        except asyncio.CancelledError:
            batch.cancel()
            raise
        except Exception as exc:
            batch.set_exception(exc)
        else:
            batch.set_result(None)

    async def acked(self, user: UserId) -> int:
        self._check_open()
        value = await self._client.get(self._key("acked", user))
        return 0 if value is None else int(value)

    # -- groups ---------------------------------------------------------------------------

    def _memberships_key(self, user: UserId) -> str:
        """The set of groups ``user`` is in (bounded by ``max_groups_per_user``)."""
        return self._key("groups", user)

    async def join(self, group: int, user: UserId) -> bool:
        self._check_open()
        keys = [self._group_key(group), self._memberships_key(user)]
        args: list[str | int] = [
            str(user),
            str(group),
            self.max_groups_per_user,
            self.max_group_members,
        ]
        answer = int(await self._join(keys, args))
        refused = _JOIN_REFUSED.get(answer)
        if refused == "user_full":
            raise group_limit_error(refused, group, self.max_groups_per_user)
        if refused is not None:
            raise group_limit_error(refused, group, self.max_group_members)
        return answer != _JOIN_ALREADY

    async def leave(self, group: int, user: UserId) -> bool:
        self._check_open()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(self._group_key(group), str(user))
            pipe.srem(self._memberships_key(user), str(group))
            removed, _ = await pipe.execute()
        return bool(removed)

    async def members(self, group: int) -> list[UserId]:
        self._check_open()
        found = await self._client.smembers(self._group_key(group))
        return sorted(UserId(int(u)) for u in found)

    async def is_member(self, group: int, user: UserId) -> bool:
        self._check_open()
        return bool(await self._client.sismember(self._group_key(group), str(user)))

    # -- presence -------------------------------------------------------------------------

    async def attach(self, user: UserId, gateway: GatewayId) -> None:
        await self.refresh(gateway, (user,))

    async def detach(self, user: UserId, gateway: GatewayId) -> None:
        self._check_open()
        await self._client.zrem(self._key("presence", user), gateway)

    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        if users:
            keys = [self._key("presence", user) for user in users]
            await self._refresh(keys=keys, args=(gateway, self._presence_ms))

    async def forget(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        if not users:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zrem(self._key("presence", user), gateway)
            await pipe.execute()

    async def lookup(self, users: Collection[UserId]) -> dict[UserId, tuple[GatewayId, ...]]:
        self._check_open()
        if not users:
            return {}
        order = list(users)
        keys = [self._key("presence", user) for user in order]
        rows = await self._lookup(keys=keys)
        return {
            user: tuple(GatewayId(_text(gw)) for gw in gateways)
            for user, gateways in zip(order, rows, strict=True)
            if gateways
        }

    async def beacon(self, gateway: GatewayId, ttl: float) -> Beacon:
        self._check_open()
        fresh = secrets.token_hex(8)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(f"{self.prefix}gateway:{gateway}", "1", px=max(1, round(ttl * 1000)), get=True)
            pipe.set(f"{self.prefix}epoch", fresh, nx=True)
            pipe.get(f"{self.prefix}epoch")
            mark, _, epoch = await pipe.execute()
        return Beacon(mark is None, fresh if epoch is None else _text(epoch))

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        self._check_open()
        await self._client.ping()

    async def close(self) -> None:
        """Close the client if the store made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ack_writes:  # acks record what clients confirmed: let them land
            await asyncio.gather(*self._ack_writes, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()


def _result(
    sub: Submission, res: list[Any], presence: dict[int, tuple[GatewayId, ...]]
) -> Accepted | Refused:
    kind = res[0]
    m = sub.message
    if kind == _NOT_MEMBER:
        return Refused(sub.client_id, "not_member", f"you are not in group {m.to}")
    if kind == _DUPLICATE:
        # The first message, as stored (the resend's text may differ), or only its id
        # and time when its inbox entry is gone (then nothing is pushed again).
        stored = res[3]
        if isinstance(stored, str):
            m = _message_json(stored)
        else:
            m = dataclasses.replace(m, id=MessageId(res[1]), time=int(res[2]))
        pairs = res[4:]
    else:
        pairs = res[1:]
    users = [UserId(int(u)) for u in pairs[0::2]]
    recipients = tuple(map(Recipient, users, pairs[1::2]))
    live = {u: presence[u] for u in users if u in presence}
    return Accepted(sub.client_id, m, kind == _DUPLICATE, recipients, live)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared ack write's error as seen (every waiter may have been cancelled)."""
    if not future.cancelled():
        future.exception()


def _message(fields: Mapping[Any, Any]) -> Message:
    blob = fields.get(b"m")
    if blob is None:
        blob = fields["m"]
    return _message_json(blob)


def _message_json(blob: str | bytes) -> Message:
    """A message from its inbox entry (the JSON array that :meth:`RedisStore.submit` wrote)."""
    mid, sender, to, kind, content_type, time, content = json.loads(blob)
    return Message(MessageId(mid), UserId(sender), to, kind, content_type, time, content)


async def open_store(url: str, **options: Any) -> Store:
    """A store for ``url``: ``memory://``, ``redis://``, ``rediss://``, ``unix://`` (one
    Redis) or ``redis+cluster://HOST:PORT[,HOST:PORT...]`` (a Redis Cluster).

    ``options`` go to the store's constructor. A Redis store is pinged first, so an
    unreachable server fails here (the client is closed and the error re-raised).
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        for option in ("socket_timeout", "wait_replicas", "wait_timeout"):
            options.pop(option, None)
        return MemoryStore(**options)
    store: RedisStore
    if scheme == "redis+cluster":
        from .store_cluster import ClusterStore

        store = ClusterStore(url, **options)
    elif scheme in ("redis", "rediss", "unix"):
        store = RedisStore(url, **options)
    else:
        raise StoreError(
            f"unsupported store URL {url!r}: use memory://, redis://HOST:PORT/DB or "
            "redis+cluster://HOST:PORT[,HOST:PORT...]"
        )
    try:
        await store.ping()
    except BaseException:
        await store.close()
        raise
    return store
