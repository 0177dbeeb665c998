"""The :class:`~im_gateway.store.Store` on Redis (redis.asyncio), and :func:`open_store`.

Keys, all under ``prefix`` (default ``"im:"``):

``{prefix}presence:{user}``
    sorted set: member = gateway id, score = expiry (ms since the epoch, Redis clock).
    Look-ups keep members scored after "now"; the key expires with its latest member.
``{prefix}group:{group}``
    set of user ids, at most ``max_group_members``. No TTL: bounded instead.
``{prefix}memberships:{user}``
    set of the group ids ``user`` is in, at most ``max_groups_per_user`` (kept by
    :meth:`RedisStore.join` and :meth:`RedisStore.leave`). No TTL: bounded instead.
``{prefix}inbox:{user}``
    stream, one entry per message with one field, ``m``: the message as a JSON array
    ``[id, from, to, type, content_type, time, content]``. Trimmed on append by length
    (``MAXLEN ~``) and by age (``MINID ~``); the key expires ``inbox_max_age`` after the
    last append.
``{prefix}acked:{user}``
    the acknowledged inbox position; only moves forward; TTL ``inbox_max_age``.
``{prefix}dedupe:{user}:{client id}``
    ``"<time> <message id>"`` of the first message with that client id; TTL
    ``dedupe_window``.

Every script reads the clock with ``TIME`` on the Redis server, so gateways with skewed
clocks still agree on presence expiry and inbox age.

:meth:`RedisStore.submit` is one ``EVALSHA`` per batch, whatever its size. That script
builds key names from its arguments (the recipients of a group message are only known
inside it), so it touches keys not passed in ``KEYS``: the store needs a single Redis
(standalone, or a primary with replicas), not Redis Cluster. Acks asked for at about the
same time (:meth:`RedisStore.ack`, any number of users) share one ``EVALSHA`` too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from transmit_hub.lifecycle import AsyncClosing
from transmit_hub.types import MESSAGE_GROUP, GatewayId, Message, MessageId, Recipient, UserId

from .store import (
    DEFAULT_MAX_GROUP_MEMBERS,
    DEFAULT_MAX_GROUPS_PER_USER,
    START,
    Accepted,
    InboxEntry,
    Refused,
    Store,
    Submission,
    group_limit_error,
    seq_key,
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

# ARGV: prefix, batch, inbox max len, inbox max age (ms), dedupe window (ms), then one
# inbox entry per submission (the message as JSON, stored as is). The batch is a JSON array
# of [client_id, from, to, type, id, time], every item a string.
# For each submission in order: dedupe (SET NX; a duplicate stores nothing), the group
# check (a non-member stores nothing and releases the client id), then one XADD per
# recipient. Each XADD trims by length, except in about one batch in 16 (by the clock),
# whose XADDs trim by age instead: one trim clause per XADD, no extra XTRIM calls.
# Then, once per distinct recipient, the inbox TTL and the presence look-up.
# Returns JSON [results, presence]: a result is [0, seq to, seq sender] (private, stored;
# one seq when to = sender), [0, user, seq, user, seq, ...] (group, stored), [1, first id,
# first time] (duplicate) or [2] (not a member); presence is a list of
# [user, gateway, ...] for the recipients with a live gateway.
_SUBMIT = (
    _NOW
    + """
local prefix = ARGV[1]
local batch = cjson.decode(ARGV[2])
local max_age = tonumber(ARGV[4])
local window = ARGV[5]
local trim, threshold = 'MAXLEN', ARGV[3]
if now % 16 == 0 then
  trim, threshold = 'MINID', string.format('%.0f-0', now - max_age)
end
local results = {}
local touched = {}
local order = {}
for i, s in ipairs(batch) do
  local cid, from, to, typ, id, time = s[1], s[2], s[3], s[4], s[5], s[6]
  local dkey = false
  local res = nil
  if cid ~= '' then
    dkey = prefix .. 'dedupe:' .. from .. ':' .. cid
    if not redis.call('SET', dkey, time .. ' ' .. id, 'PX', window, 'NX') then
      local seen = redis.call('GET', dkey)
      local sp = string.find(seen, ' ', 1, true)
      res = {1, string.sub(seen, sp + 1), string.sub(seen, 1, sp - 1)}
    end
  end
  if not res then
    local users
    if typ == '2' then
      local gkey = prefix .. 'group:' .. to
      if redis.call('SISMEMBER', gkey, from) == 1 then
        users = redis.call('SMEMBERS', gkey)
      else
        if dkey then
          redis.call('DEL', dkey)
        end
        res = {2}
      end
    elseif from == to then
      users = {to}
    else
      users = {to, from}
    end
    if users then
      local entry = ARGV[5 + i]
      res = {0}
      local group = typ == '2'
      for _, u in ipairs(users) do
        if group then
          res[#res + 1] = u
        end
        res[#res + 1] = redis.call('XADD', prefix .. 'inbox:' .. u, trim, '~', threshold, '*',
          'm', entry)
        if not touched[u] then
          touched[u] = true
          order[#order + 1] = u
        end
      end
    end
  end
  results[i] = res
end
local since = string.format('(%.0f', now)
local presence = {}
for _, u in ipairs(order) do
  redis.call('PEXPIRE', prefix .. 'inbox:' .. u, max_age)
  local gws = redis.call('ZRANGEBYSCORE', prefix .. 'presence:' .. u, since, '+inf')
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

# KEYS: acked keys. ARGV: one position "<ms>-<n>" per key, then the ttl (ms). Each key
# moves forward only. Returns how many keys moved.
_ACK = """
local ttl = ARGV[#KEYS + 1]
local moved = 0
for i, key in ipairs(KEYS) do
  local ms, n = string.match(ARGV[i], '^(%d+)-(%d+)$')
  ms, n = tonumber(ms), tonumber(n)
  local cur = redis.call('GET', key)
  local cms, cn = nil, nil
  if cur then
    cms, cn = string.match(cur, '^(%d+)-(%d+)$')
    cms, cn = tonumber(cms), tonumber(cn)
  end
  if cms and (cms > ms or (cms == ms and cn >= n)) then
    redis.call('PEXPIRE', key, ttl)
  else
    redis.call('SET', key, ARGV[i], 'PX', ttl)
    moved = moved + 1
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
  return 0
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

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_quote = json.encoder.encode_basestring  # a str as a JSON string literal (C, fast)
_STORED = 0
_DUPLICATE = 1
_NOT_MEMBER = 2


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _position(seq: str) -> str:
    ms, n = seq_key(seq)
    return f"{ms}-{n}"


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
        max_groups_per_user: int = DEFAULT_MAX_GROUPS_PER_USER,
        max_group_members: int = DEFAULT_MAX_GROUP_MEMBERS,
    ) -> None:
        if inbox_max_len < 1 or inbox_max_age <= 0 or dedupe_window <= 0 or presence_ttl <= 0:
            raise ValueError("store limits and TTLs must be positive")
        if max_groups_per_user < 1 or max_group_members < 1:
            raise ValueError("group limits must be positive")
        self.max_groups_per_user = max_groups_per_user
        self.max_group_members = max_group_members
        if isinstance(client, str):
            # Timeouts so a hung Redis fails calls instead of stalling them; the URL's
            # query (?socket_timeout=...) overrides them.
            self._client = aioredis.Redis.from_url(
                client, socket_timeout=10.0, socket_connect_timeout=5.0
            )
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
        self._acks: dict[str, str] = {}
        """Ack writes being gathered: acked key -> the highest position asked for."""
        self._ack_batch: asyncio.Future[None] | None = None
        """Completes when the gathered acks are written (None: none being gathered)."""
        self._ack_writes: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the store uses."""
        return self._client

    def _key(self, kind: str, name: object) -> str:
        return f"{self.prefix}{kind}:{name}"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")

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
                rows.append((s.client_id, str(m.sender), str(m.to), str(m.type), m.id, str(m.time)))
                # The inbox entry: the message as a JSON array, read back by _message().
                entries.append(
                    f"[{_quote(m.id)},{m.sender:d},{m.to:d},{m.type:d},"
                    f"{m.content_type:d},{m.time:d},{_quote(m.content)}]"
                )
            reply = await self._submit(
                args=(
                    self.prefix,
                    _encode(rows),
                    self.inbox_max_len,
                    self._max_age_ms,
                    self._window_ms,
                    *entries,
                )
            )
            results, live = json.loads(reply)
            presence: dict[int, tuple[GatewayId, ...]] = {
                int(entry[0]): tuple(entry[1:]) for entry in live
            }
            done = [_result(s, res, presence) for s, res in zip(todo, results, strict=True)]
        if not bad:
            return done
        stored = iter(done)
        return [
            Refused(s.client_id, "bad_request", "content is not valid Unicode")
            if i in bad
            else next(stored)
            for i, s in enumerate(batch)
        ]

    async def read_inbox(self, user: UserId, after: str, limit: int) -> list[InboxEntry]:
        self._check_open()
        key = seq_key(after)
        if limit <= 0:
            return []
        start = "-" if key == (0, 0) else f"({key[0]}-{key[1]}"
        rows: Any = await self._client.xrange(self._key("inbox", user), start, "+", count=limit)
        return [InboxEntry(_text(seq), _message(fields)) for seq, fields in rows or ()]

    async def ack(self, user: UserId, seq: str) -> None:
        self._check_open()
        position = _position(seq)
        if position == "0-0":
            return
        key = self._key("acked", user)
        current = self._acks.get(key)
        if current is None or seq_key(position) > seq_key(current):
            self._acks[key] = position
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
        try:
            await self._ack(keys=list(acks), args=(*acks.values(), self._max_age_ms))
        except asyncio.CancelledError:
            batch.cancel()
            raise
        except Exception as exc:
            batch.set_exception(exc)
        else:
            batch.set_result(None)

    async def acked(self, user: UserId) -> str:
        self._check_open()
        value = await self._client.get(self._key("acked", user))
        return START if value is None else _text(value)

    # -- groups ---------------------------------------------------------------------------

    def _memberships_key(self, user: UserId) -> str:
        """The set of groups ``user`` is in (bounded by ``max_groups_per_user``)."""
        return self._key("memberships", user)

    async def join(self, group: int, user: UserId) -> None:
        self._check_open()
        keys = [self._key("group", group), self._memberships_key(user)]
        args: list[str | int] = [
            str(user),
            str(group),
            self.max_groups_per_user,
            self.max_group_members,
        ]
        refused = _JOIN_REFUSED.get(int(await self._join(keys, args)))
        if refused == "user_full":
            raise group_limit_error(refused, group, self.max_groups_per_user)
        if refused is not None:
            raise group_limit_error(refused, group, self.max_group_members)

    async def leave(self, group: int, user: UserId) -> None:
        self._check_open()
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(self._key("group", group), str(user))
            pipe.srem(self._memberships_key(user), str(group))
            await pipe.execute()

    async def is_member(self, group: int, user: UserId) -> bool:
        self._check_open()
        return bool(await self._client.sismember(self._key("group", group), str(user)))

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
    if kind == _STORED:
        users: list[UserId]
        if m.type == MESSAGE_GROUP:
            users = [UserId(int(u)) for u in res[1::2]]
            seqs = res[2::2]
        else:
            users = [m.sender] if m.to == m.sender else [UserId(m.to), m.sender]
            seqs = res[1:]
        recipients = tuple(map(Recipient, users, seqs))
        live = {u: presence[u] for u in users if u in presence}
        return Accepted(sub.client_id, m, False, recipients, live)
    if kind == _DUPLICATE:
        first = dataclasses.replace(m, id=MessageId(res[1]), time=int(res[2]))
        return Accepted(sub.client_id, first, duplicate=True)
    return Refused(sub.client_id, "not_member", f"you are not in group {m.to}")


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a shared ack write's error as seen (every waiter may have been cancelled)."""
    if not future.cancelled():
        future.exception()


def _message(fields: Mapping[Any, Any]) -> Message:
    blob = fields.get(b"m")
    if blob is None:
        blob = fields["m"]
    mid, sender, to, kind, content_type, time, content = json.loads(blob)
    return Message(MessageId(mid), UserId(sender), to, kind, content_type, time, content)


async def open_store(url: str, **options: Any) -> Store:
    """A store for ``url``: ``memory://`` or ``redis://``, ``rediss://``, ``unix://``.

    ``options`` go to the store's constructor. A Redis store is pinged first, so an
    unreachable server fails here (the client is closed and the error re-raised).
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported store URL {url!r}: use memory:// or redis://HOST:PORT/DB")
    store = RedisStore(url, **options)
    try:
        await store.ping()
    except BaseException:
        await store.close()
        raise
    return store
