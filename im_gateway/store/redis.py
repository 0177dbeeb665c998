"""The :class:`~im_gateway.store.Store` on one Redis (redis.asyncio, Redis 6.2 or later).

The keys: :mod:`~im_gateway.store.keyspace`. The dedupe record of a client id is
``"<n> <time> <user> <position> ... <message id>"`` (n pairs; the id is the rest).

:meth:`RedisStore.submit` is one ``EVALSHA`` per batch (``lua/submit.lua``), whatever its
size, and atomic: a batch is stored whole or not at all, so retrying it is safe (its
client ids dedupe it, and the duplicates carry their recipients to be pushed again). That
script builds key names from its arguments (the recipients of a group message are only
known inside it), so it touches keys not passed in ``KEYS``: the store needs a single
Redis (standalone, or a primary with replicas); on Redis Cluster,
:class:`~im_gateway.store.cluster.ClusterStore` stores a batch with one script per slot.
With ``wait_replicas``, the script and a ``WAIT`` share one pipeline (one connection), and
a batch that too few replicas confirmed is refused
(:attr:`~im_gateway.store.Refusal.NOT_REPLICATED`); its resend is a duplicate, whose
script writes (a TTL), so its ``WAIT`` covers the first one's writes. Acks asked for at about the same time (:meth:`RedisStore.ack`, any number
of users) share one ``EVALSHA`` too, and a read is one round trip (``XRANGE`` and ``GET``
pipelined).

The batch, ack, presence and opening scripts go over the store's own connection (:mod:`.lane`: a
bare protocol with hiredis's parser, about 100 µs less gateway CPU per call than
redis-py's client) when the store made its client from a plain TCP URL; everything else,
and a client the caller lends, goes through redis-py.

The client retries a command once a pooled connection turns out dead (the server
restarted, say) on a fresh connection, with a short backoff; a timeout is not retried
here (the caller decides: a stored batch whose reply was lost is deduplicated when it is
sent again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError, NoScriptError

from transmit_hub.types import GatewayId, MessageId, Recipient, UserId, new_recipient

from ..errors import GroupLimitError
from . import entry, scripts
from .contract import (
    DEFAULT_KEYS_PER_CALL,
    DEFAULT_LARGE_GROUP,
    DEFAULT_MAX_GROUP_MEMBERS,
    DEFAULT_MAX_GROUPS_PER_USER,
    Accepted,
    GroupPost,
    GroupStream,
    Joined,
    Membership,
    Opening,
    Refusal,
    Refused,
    Submission,
    Unread,
    new_accepted,
    unencodable,
)
from .keyspace import KeyspaceStore, Settings, group_streams, membership_args, membership_rows, text
from .lane import Arg, Lane

__all__ = ["RedisStore", "client_options"]

_encode = msgspec.json.Encoder().encode
"""The batch rows as JSON (UTF-8 bytes, for ``lua/submit.lua``'s ``cjson.decode``): several
times faster than ``json``'s encoder (every row is strings, checked encodable first)."""
_decode = msgspec.json.Decoder().decode
"""``lua/submit.lua``'s JSON reply (``cjson.encode``'s, so plain JSON)."""
# What lua/submit.lua answers per submission (the first item), and lua/join.lua.
_STORED = 0
_DUPLICATE = 1
_NOT_MEMBER = 2
_JOIN_USER_FULL = 1
_JOIN_GROUP_FULL = 2
_JOIN_ALREADY = 3
_POSTED = 3
_POSTED_BEFORE = 4


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


class RedisStore(KeyspaceStore):
    """Presence, groups, inboxes and dedupe in one Redis (6.2 or later).

    ``client`` is a ``redis.asyncio.Redis`` (the caller keeps owning it; :meth:`close`
    leaves it open) or a URL (the store makes the client and closes it). The options are
    :class:`~im_gateway.store.keyspace.Settings`' fields.
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
        large_group: int = DEFAULT_LARGE_GROUP,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
        keys_per_call: int = DEFAULT_KEYS_PER_CALL,
    ) -> None:
        settings = Settings(
            prefix=prefix,
            inbox_max_len=inbox_max_len,
            inbox_max_age=inbox_max_age,
            dedupe_window=dedupe_window,
            presence_ttl=presence_ttl,
            socket_timeout=socket_timeout,
            max_groups_per_user=max_groups_per_user,
            max_group_members=max_group_members,
            large_group=large_group,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            keys_per_call=keys_per_call,
        )
        owns = isinstance(client, str)
        if isinstance(client, str):
            # Timeouts so a hung Redis fails calls instead of stalling them; the URL's
            # query (?socket_timeout=...) overrides them.
            client = aioredis.Redis.from_url(client, **client_options(socket_timeout))
        super().__init__(client, settings, owns_client=owns)
        self._client = client
        self._submit = client.register_script(scripts.SUBMIT)
        self._refresh = client.register_script(scripts.REFRESH)
        self._lookup = client.register_script(scripts.LOOKUP)
        self._ack = client.register_script(scripts.ACK)
        self._opening = client.register_script(scripts.OPENING)
        self._join = client.register_script(scripts.JOIN)
        self._leave = client.register_script(scripts.LEAVE)
        self._add_members = client.register_script(scripts.ADD_MEMBERS)
        self._remove_members = client.register_script(scripts.REMOVE_MEMBERS)
        self._streams = client.register_script(scripts.STREAMS)
        self._group_ack = client.register_script(scripts.GROUP_ACK)
        self._memberships = client.register_script(scripts.MEMBERSHIPS)
        # A client the caller lends stays the store's only connection (the caller owns
        # every connection it made, and may never close the store).
        self._lane = Lane.of(client) if owns else None
        """The batch, ack and presence scripts' and the beacon's own connection (None: the
        client's)."""

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the store uses."""
        return self._client

    @property
    def lane(self) -> Lane | None:
        """The batch, ack and presence scripts' and the beacon's own connection (None: the
        client's)."""
        return self._lane

    # -- messages -------------------------------------------------------------------------

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        self._check_open()
        settings = self.settings
        bad = unencodable(batch)
        todo = [s for i, s in enumerate(batch) if i not in bad] if bad else batch
        done: list[Accepted | Refused] = []
        if todo:
            rows = []
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
            args: tuple[str | bytes | int, ...] = (
                settings.prefix,
                _encode(rows),
                settings.inbox_max_len,
                settings.max_age_ms,
                settings.window_ms,
                *[entry.encode_bytes(s.message) for s in todo],
            )
            if settings.wait_replicas:
                reply, replicated = await self._submit_and_wait(args)
            else:
                reply, replicated = await self._script(self._submit, (), args), True
            results, live = _decode(reply)
            done = _answers(todo, results, live)
            if not replicated:
                done = [
                    Refused(r.client_id, Refusal.NOT_REPLICATED) if isinstance(r, Accepted) else r
                    for r in done
                ]
        if not bad:
            return done
        stored = iter(done)
        return [
            Refused(s.client_id, Refusal.UNENCODABLE) if i in bad else next(stored)
            for i, s in enumerate(batch)
        ]

    async def _submit_and_wait(self, args: Sequence[Any]) -> tuple[Any, bool]:
        """The batch script and ``WAIT`` in one pipeline, so on one connection (WAIT
        counts the replicas that have that connection's writes); True when enough do."""
        wait_replicas = self.settings.wait_replicas
        for attempt in (1, 2):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._submit.sha, 0, *args)
                pipe.execute_command("WAIT", wait_replicas, self.settings.wait_ms)
                reply, count = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError) and attempt == 1:
                await self._client.script_load(scripts.SUBMIT)
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply, isinstance(count, int) and count >= wait_replicas
        raise AssertionError("unreachable")

    async def _read_openings(self, users: list[UserId]) -> list[Opening | Exception]:
        """Many users' openings in one script call (a pipeline costs the gateway about
        four times the CPU per user: a command each to pack and parse), on the lane: in a
        reconnect storm a call holds few users, and redis-py's client cost about 10% of a
        handshake (bench/RESULTS.md section 26)."""
        key = self.settings.key
        keys = [key(kind, user) for user in users for kind in ("acked", "pos", "groups")]
        r = await self._script(self._opening, keys, ())
        out: list[Opening | Exception] = [
            Opening(int(r[i]), int(r[i + 1]), bool(r[i + 2])) for i in range(0, len(r), 3)
        ]
        return out

    async def _write_acks(self, acks: dict[str, int]) -> None:
        """One script call for every ack gathered (see :meth:`~.keyspace.KeyspaceStore.ack`)."""
        keys = [key for acked in acks for key in self.settings.ack_keys(acked)]
        await self._script(self._ack, keys, (*acks.values(), self.settings.max_age_ms))

    async def _script(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run ``script`` on the lane (loading it when Redis lost it), or through the client."""
        lane = self._lane
        if lane is None:
            return await script(keys=keys, args=args)
        try:
            return await lane.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await lane.call("SCRIPT", "LOAD", script.script)
            return await lane.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _pipeline(self, commands: Sequence[tuple[str | int, ...]]) -> list[Any]:
        """On the lane when the store has one (the presence watcher's beacon, 4 times a
        second: on redis-py's pipeline it cost an idle gateway about 1.5 ms of CPU a
        second, a quarter of its CPU without connections)."""
        lane = self._lane
        if lane is None:
            return await super()._pipeline(commands)
        return await lane.pipeline(commands)

    # -- groups ---------------------------------------------------------------------------

    async def join(self, group: int, user: UserId) -> bool:
        self._check_open()
        settings = self.settings
        keys = [settings.group_key(group), settings.key("groups", user)]
        args: list[str | int] = [
            str(user),
            str(group),
            settings.max_groups_per_user,
            settings.max_group_members,
            settings.prefix,
            settings.large_group,
            settings.max_age_ms,
        ]
        answer = int(await self._join(keys, args))
        if answer == _JOIN_USER_FULL:
            raise GroupLimitError(group, settings.max_groups_per_user, user_full=True)
        if answer == _JOIN_GROUP_FULL:
            raise GroupLimitError(group, settings.max_group_members, user_full=False)
        return answer != _JOIN_ALREADY

    async def leave(self, group: int, user: UserId) -> bool:
        self._check_open()
        settings = self.settings
        keys = [settings.group_key(group), settings.key("groups", user)]
        args: list[str | int] = [
            str(user),
            str(group),
            settings.prefix,
            *settings.reform_args(),
        ]
        return bool(await self._leave(keys, args))

    async def add_members(self, group: int, users: Sequence[UserId]) -> list[Joined]:
        """One script call for every user (one Redis)."""
        self._check_open()
        if not users:
            return []
        settings = self.settings
        args: list[str | int] = [
            settings.prefix,
            str(group),
            settings.max_groups_per_user,
            settings.max_group_members,
            settings.large_group,
            settings.max_age_ms,
            *map(str, users),
        ]
        return [Joined(int(code)) for code in await self._add_members([], args)]

    async def remove_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        """One script call for every user (one Redis)."""
        self._check_open()
        if not users:
            return []
        settings = self.settings
        keys = [settings.group_key(group), *(settings.key("groups", u) for u in users)]
        args: list[str | int] = [
            settings.prefix,
            str(group),
            *settings.reform_args(),
            *map(str, users),
        ]
        return [bool(x) for x in await self._remove_members(keys, args)]

    # -- large groups ---------------------------------------------------------------------

    async def streams(self, user: UserId, limit: int) -> list[GroupStream | Unread]:
        self._check_open()
        settings = self.settings
        groups = sorted(int(g) for g in await self._client.smembers(settings.key("groups", user)))
        if not groups:
            return []
        keys = [settings.group_key(g) for g in groups]
        reply = await self._streams(keys, [settings.prefix, str(user), limit, *map(str, groups)])
        return [*group_streams(reply)]

    async def ack_group(self, user: UserId, group: int, upto: int) -> None:
        self._check_open()
        if upto <= 0:
            return
        settings = self.settings
        args: list[str | int] = [
            settings.prefix,
            str(group),
            str(user),
            str(upto),
            settings.max_age_ms,
        ]
        await self._group_ack([settings.group_key(group)], args)

    async def memberships(
        self, pairs: Sequence[tuple[int, UserId]], *, since: int = 0
    ) -> list[Membership]:
        self._check_open()
        if not pairs:
            return []
        settings = self.settings
        keys = [settings.group_key(g) for g in dict.fromkeys(g for g, _ in pairs)]
        args, reads = membership_args(pairs, since)
        reply = await self._memberships(keys, [settings.prefix, *args])
        return membership_rows(reply, reads, pairs, since)

    async def watch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        """One script call per ``keys_per_call`` groups, one after the other."""
        self._check_open()
        gkey = self.settings.gkey
        args = (gateway, self.settings.presence_ms)
        for part in self.settings.chunks(groups):
            await self._script(self._refresh, [gkey("gateways", g) for g in part], args)

    # -- presence -------------------------------------------------------------------------
    # Each call below is one script call per ``keys_per_call`` users, one after the other:
    # a script holds Redis (every other client waits) for as long as its keys take. They
    # go on the lane when there is one: redis-py's client costs the gateway about 100 µs
    # more per call, and a refresh of all local users is a call per ``keys_per_call``.

    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        key = self.settings.key
        args = (gateway, self.settings.presence_ms)
        for part in self.settings.chunks(users):
            await self._script(self._refresh, [key("presence", user) for user in part], args)

    async def lookup(self, users: Collection[UserId]) -> dict[UserId, tuple[GatewayId, ...]]:
        self._check_open()
        key = self.settings.key
        found: dict[UserId, tuple[GatewayId, ...]] = {}
        for part in self.settings.chunks(users):
            rows = await self._script(self._lookup, [key("presence", user) for user in part], ())
            for user, gateways in zip(part, rows, strict=True):
                if gateways:
                    found[user] = tuple(GatewayId(text(gw)) for gw in gateways)
        return found

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        self._check_open()
        await self._client.ping()

    async def close(self) -> None:
        await super().close()
        if self._lane is not None:
            await self._lane.close()


def _answers(
    todo: Sequence[Submission], results: list[list[Any]], live: list[list[str]]
) -> list[Accepted | Refused]:
    """Each submission's answer from ``lua/submit.lua``'s reply: its ``results`` (one per
    submission, in order) and the ``live`` rows ``[user, gateway, ...]``."""
    # Keyed by the user's text as the script wrote it: it writes the same text in the
    # results and in the live rows (its note() of each recipient), so no int() per row.
    presence: dict[str, tuple[GatewayId, ...]] = {
        row[0]: (row[1],) if len(row) == 2 else tuple(row[1:])  # type: ignore[misc,arg-type]
        for row in live
    }  # a user on one gateway: the common row
    get = presence.get
    done: list[Accepted | Refused] = []
    for sub, res in zip(todo, results, strict=True):
        if res[0] != _STORED or len(res) != 5:
            done.append(_result(sub, res, presence))
            continue
        # The common row, inline (a call, a comprehension and a generator per message
        # cost more than the work): [0, to, pos, from, pos], a private message stored
        # for its recipient and for its sender's other devices.
        user_text = res[1]
        to: UserId = int(user_text)  # type: ignore[assignment]
        at: dict[UserId, tuple[GatewayId, ...]] = {}
        gateways = get(user_text)
        if gateways is not None:
            at[to] = gateways
        user_text = res[3]
        sender: UserId = int(user_text)  # type: ignore[assignment]
        gateways = get(user_text)
        if gateways is not None:
            at[sender] = gateways
        recipients = (new_recipient(to, res[2]), new_recipient(sender, res[4]))
        done.append(new_accepted(sub.client_id, sub.message, False, recipients, at))
    return done


def _result(
    sub: Submission, res: list[Any], presence: dict[str, tuple[GatewayId, ...]]
) -> Accepted | Refused:
    """A submission's answer from its row in ``lua/submit.lua``'s reply; ``presence`` is
    keyed by the users' text as the script wrote them."""
    kind = res[0]
    if kind == _STORED:  # [0, user, pos, user, pos, ...]
        texts = res[1::2]
        # Plain ints for the UserIds (a NewType's call is a Python call per user).
        users: list[UserId] = [int(u) for u in texts]  # type: ignore[misc]
        return new_accepted(
            sub.client_id,
            sub.message,
            False,
            tuple(map(new_recipient, users, res[2::2])),
            {int(u): presence[u] for u in texts if u in presence},  # type: ignore[misc]
        )
    m = sub.message
    if kind == _NOT_MEMBER:
        return Refused(sub.client_id, Refusal.NOT_MEMBER)
    if kind in (_POSTED, _POSTED_BEFORE):
        at = 1 if kind == _POSTED else 4
        n = int(res[at + 2])
        pairs = res[at + 3 : at + 3 + 2 * n]
        post = GroupPost(
            int(res[at]), int(res[at + 1]), tuple(map(GatewayId, res[at + 3 + 2 * n :]))
        )
        copies = tuple(
            Recipient(UserId(int(u)), str(p)) for u, p in zip(pairs[0::2], pairs[1::2], strict=True)
        )
        live = {UserId(int(u)): presence[u] for u in pairs[0::2] if u in presence}
        first = m if kind == _POSTED else entry.decode(res[3])
        return Accepted(sub.client_id, first, kind == _POSTED_BEFORE, copies, live, post)
    if kind == _DUPLICATE:
        # The first message, as stored (the resend's text may differ), or only its id
        # and time when its inbox entry is gone (then nothing is pushed again).
        stored = res[3]
        if isinstance(stored, str):
            m = entry.decode(stored)
        else:
            m = dataclasses.replace(m, id=MessageId(res[1]), time=int(res[2]))
        pairs = res[4:]
    else:
        pairs = res[1:]
    texts = pairs[0::2]
    users = [UserId(int(u)) for u in texts]
    recipients = tuple(map(new_recipient, users, pairs[1::2]))
    live = {UserId(int(u)): presence[u] for u in texts if u in presence}
    return new_accepted(sub.client_id, m, kind == _DUPLICATE, recipients, live)
