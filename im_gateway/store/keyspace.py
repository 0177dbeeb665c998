"""What the two Redis stores share: their settings, their keys, and the calls that read
and write them the same way on one Redis (:mod:`~im_gateway.store.redis`) and on a Redis
Cluster (:mod:`~im_gateway.store.cluster`).

Keys, all under ``prefix`` (default ``"im:"``). Every key of one user shares the hash
tag ``{u:<user>}`` and every key of one group ``{g:<group>}``, so each lies in one
cluster slot:

``{prefix}{u:<user>}:inbox``
    stream, one entry per message (the layout: :mod:`~im_gateway.store.entry`). The
    entry id's position is consecutive, so a range by position is a plain ``XRANGE`` and
    trimming by age reads the time from the ids. Trimmed on append by length
    (``MAXLEN ~``) and, about one batch in 16, by age (exactly, up to 32 entries per
    inbox per pass); the key expires ``inbox_max_age`` after the last append.
``{prefix}{u:<user>}:pos``
    the position of the newest message ever appended (``INCR``); TTL ``inbox_max_age``,
    refreshed lazily (about one batch in 16, and by acks). When it is missing but the
    inbox is not, the next append resumes after the inbox's last entry, so positions
    never repeat while an inbox exists.
``{prefix}{u:<user>}:acked``
    the acknowledged position; only moves forward, never past ``pos``; TTL
    ``inbox_max_age``.
``{prefix}{u:<user>}:presence``
    sorted set: member = gateway id, score = expiry (ms since the epoch, Redis clock).
    Look-ups keep members scored after "now"; the key expires with its latest member.
``{prefix}{u:<user>}:dedupe:<client id>``
    the first message with that client id and its recipients (so a resend can be pushed
    again), each store in its own record; TTL ``dedupe_window``.
``{prefix}{u:<user>}:groups``
    set of the group ids ``user`` is in, at most ``max_groups_per_user``. No TTL:
    bounded instead.
``{prefix}{g:<group>}:members``
    set of user ids, at most ``max_group_members``. No TTL: bounded instead.
``{prefix}{g:<group>}:large``
    exists while the group is stored once (it has more than ``large_group`` members);
    its value is the stream position where that began. No TTL: one small key per group,
    deleted when the group falls to the bound.
``{prefix}{g:<group>}:regroup``
    set when the group becomes large, to the same position, and deleted once a gateway
    has made every member's connections follow its stream
    (:meth:`~im_gateway.store.Store.regrouped`), or with ``:large``: while it exists, a
    change of members makes them all follow, not only the changed (the change that made
    the group large may have been answered with an error, and sent again). No TTL.
``{prefix}{g:<group>}:stream``, ``:last``
    a large group's messages, laid out as an inbox (entry ids ``<position>-<ms>``,
    consecutive positions), trimmed by length and by age like one (the key expires
    ``inbox_max_age`` after the last write), and its newest position.
``{prefix}{g:<group>}:pos``
    hash: member -> the position in the stream up to which the member has everything
    (acknowledged, or where they joined: a member never reads from before the join).
    Expires with the stream; a member without a field reads the whole stream.
``{prefix}{g:<group>}:joined``, ``:left``, ``:leavers``
    membership in the stream's positions (:meth:`~im_gateway.store.Store.memberships`):
    sorted set member -> the newest position when they joined (or when the group became
    large); hash leaver -> ``"<join>:<leave>"``, their latest ended membership; sorted set
    leaver -> leave position, so that only the latest ``max_group_members`` leavers are
    kept (the oldest go first). Scored by position, so a live post's check reads only the
    joins and leaves after its oldest post. Expire with the stream.
``{prefix}{g:<group>}:gateways``
    sorted set: gateway id -> expiry, the gateways holding sockets of members (refreshed
    with presence); a post to a large group is pushed to these.
``{prefix}{g:<group>}:msg:<message id>``
    Redis Cluster only: the stream position of a message with a client id, for the
    dedupe window (as ``{u:<user>}:msg:<id>`` for inboxes).
``{prefix}gateway:<gateway id>``
    a live gateway's beacon (:meth:`KeyspaceStore.beacon`), TTL ``presence_ttl``: when it is
    missing, the gateway re-asserts its presence (Redis lost it).
``{prefix}epoch``
    the data generation, made once (no TTL: one small key); a gateway that sees it change
    knows Redis lost its data, so inbox positions start from 1 again.
"""

from __future__ import annotations

import json
import secrets
from abc import abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from transmit_hub.lifecycle import AsyncClosing
from transmit_hub.types import GatewayId, UserId

from ..errors import StoreError
from ..positions import MAX_POSITION
from . import entry
from .contract import (
    DEFAULT_KEYS_PER_CALL,
    DEFAULT_LARGE_GROUP,
    DEFAULT_MAX_GROUP_MEMBERS,
    DEFAULT_MAX_GROUPS_PER_USER,
    Beacon,
    GroupStream,
    InboxEntry,
    InboxPage,
    Membership,
    Opening,
)
from .gather import Gathered

T = TypeVar("T")

Client = aioredis.Redis | RedisCluster
"""Either Redis client: the calls below exist on both (each touches one slot, or is
split by the cluster client's pipeline)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The options of a Redis store, checked (the stores' keyword arguments).

    - ``prefix``: every key starts with it.
    - ``inbox_max_len``: entries kept per inbox (approximately: Redis trims whole
      stream nodes, so up to about 100 more may stay).
    - ``inbox_max_age``: seconds an inbox entry is kept (also approximate), and the TTL of
      the inbox and acknowledged-position keys.
    - ``dedupe_window``: seconds a client id is remembered per user.
    - ``presence_ttl``: seconds a presence entry lives unless refreshed.
    - ``socket_timeout``: seconds a Redis call may take (a client the store makes).
    - ``max_groups_per_user``, ``max_group_members``: bounds ``join`` keeps.
    - ``large_group``: a group with more members is stored once, in its own stream.
    - ``wait_replicas``, ``wait_timeout``: a stored batch is acknowledged only once
      ``WAIT`` saw it on that many replicas within that many seconds (0: no ``WAIT``).
    - ``keys_per_call``: most keys in one presence call (``refresh``, ``watch``,
      ``forget``, ``lookup``); more go in several calls, one after the other, so one
      gateway's refresh of all its users never holds Redis (single-threaded: every
      other client waits) for longer than this many keys take.
    """

    prefix: str = "im:"
    inbox_max_len: int = 10_000
    inbox_max_age: float = 7 * 86400
    dedupe_window: float = 600
    presence_ttl: float = 30
    socket_timeout: float = 5.0
    max_groups_per_user: int = DEFAULT_MAX_GROUPS_PER_USER
    max_group_members: int = DEFAULT_MAX_GROUP_MEMBERS
    large_group: int = DEFAULT_LARGE_GROUP
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    keys_per_call: int = DEFAULT_KEYS_PER_CALL
    max_age_ms: int = field(init=False)
    """``inbox_max_age`` in ms, as the scripts take it; likewise the next three."""
    window_ms: int = field(init=False)
    presence_ms: int = field(init=False)
    wait_ms: int = field(init=False)

    def __post_init__(self) -> None:
        if self.wait_replicas < 0 or self.wait_timeout <= 0:
            raise StoreError("wait_replicas must be 0 or more and wait_timeout positive")
        if (
            self.inbox_max_len < 1
            or self.inbox_max_age <= 0
            or self.dedupe_window <= 0
            or self.presence_ttl <= 0
        ):
            raise StoreError("store limits and TTLs must be positive")
        if "{" in self.prefix or "}" in self.prefix:
            raise StoreError(f"the key prefix {self.prefix!r} must not contain braces")
        if self.max_groups_per_user < 1 or self.max_group_members < 1 or self.large_group < 1:
            raise StoreError("group limits must be positive")
        if self.keys_per_call < 1:
            raise StoreError(f"keys_per_call must be at least 1, not {self.keys_per_call}")
        for name, seconds in (
            ("max_age_ms", self.inbox_max_age),
            ("window_ms", self.dedupe_window),
            ("presence_ms", self.presence_ttl),
            ("wait_ms", self.wait_timeout),
        ):
            object.__setattr__(self, name, _ms(seconds))

    def key(self, kind: str, user: object) -> str:
        """The key of one of ``user``'s records (``inbox``, ``pos``, ``acked``, ...)."""
        return f"{self.prefix}{{u:{user}}}:{kind}"

    def group_key(self, group: int) -> str:
        """The member set of ``group``."""
        return f"{self.prefix}{{g:{group}}}:members"

    def gkey(self, kind: str, group: int) -> str:
        """The key of one of a large group's records (``large``, ``stream``, ...)."""
        return f"{self.prefix}{{g:{group}}}:{kind}"

    def reform_args(self) -> tuple[int, int, int]:
        """What the leave scripts take to re-form a group that shrank (after the prefix,
        the group and the user or users): ``large_group``, ``max_age_ms`` and
        ``max_group_members``."""
        return self.large_group, self.max_age_ms, self.max_group_members

    def chunks(self, items: Collection[T]) -> Iterator[Sequence[T]]:
        """``items`` in order, at most ``keys_per_call`` at a time (one call each)."""
        return chunked(items, self.keys_per_call)

    def ack_keys(self, acked_key: str) -> tuple[str, str, str]:
        """The keys the ack script takes for one user: acked, pos and inbox."""
        base = acked_key[: -len("acked")]
        return acked_key, base + "pos", base + "inbox"


def chunked(items: Collection[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in order, in slices of at most ``size`` (none when empty)."""
    order = items if isinstance(items, Sequence) else list(items)
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode replies)."""
    return value.decode() if isinstance(value, bytes) else value


class KeyspaceStore(AsyncClosing):
    """The part of a :class:`~im_gateway.store.Store` that is the same on one Redis and on
    a Redis Cluster: reads, presence removals, the beacon, gathering acks, closing.

    :class:`~im_gateway.store.redis.RedisStore` and
    :class:`~im_gateway.store.cluster.ClusterStore` each build on it and add what differs:
    how a batch is stored, how scripts reach their keys (one call, or one per slot), and
    the two hooks below. Neither knows the other.
    """

    def __init__(self, client: Client, settings: Settings, *, owns_client: bool) -> None:
        self.settings = settings
        self._redis = client
        self._owns_client = owns_client
        self._acks: Gathered[tuple[str, int], None] = Gathered(self._write_ack_batch)
        """Acks (acked key, position) asked for in one loop turn share one write: a client
        that acks each message would otherwise cost a round trip per message."""
        self._openings: Gathered[UserId, Opening] = Gathered(self._read_openings)
        self._closed = False

    @abstractmethod
    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None: ...

    @abstractmethod
    async def _write_acks(self, acks: dict[str, int]) -> None:
        """Write gathered acks: acked key -> the highest position asked for it."""

    async def _write_ack_batch(self, asked: list[tuple[str, int]]) -> list[None]:
        acks: dict[str, int] = {}
        for key, upto in asked:
            if upto > acks.get(key, 0):
                acks[key] = upto
        await self._write_acks(acks)
        return [None] * len(asked)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    async def read_inbox(self, user: UserId, after: int, limit: int) -> InboxPage:
        self._check_open()
        key = self.settings.key
        # The newest position first: every position up to it that the range then lacks
        # was trimmed (an append between the two only adds entries beyond it).
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key("pos", user))
            if limit > 0 and after < MAX_POSITION:
                pipe.xrange(key("inbox", user), str(after + 1), "+", count=limit)
            replies: list[Any] = await pipe.execute()
        last = int(replies[0] or 0)
        rows = replies[1] if len(replies) > 1 else ()
        return InboxPage(
            [
                InboxEntry(entry.position(eid), entry.from_fields(fields))
                for eid, fields in rows or ()
            ],
            last,
        )

    async def inbox_ends(self, users: Sequence[UserId]) -> list[int | None]:
        """One Redis: every user's end, or the error raised (the cluster store answers
        each user alone)."""
        return [int(reply or 0) for reply in await self._each_user("GET", "pos", users)]

    async def in_groups(self, users: Sequence[UserId]) -> list[bool | None]:
        """One Redis: ``EXISTS groups`` of every user, or the error raised (the cluster
        store answers each user alone)."""
        return [bool(reply) for reply in await self._each_user("EXISTS", "groups", users)]

    async def _each_user(self, command: str, name: str, users: Sequence[UserId]) -> list[Any]:
        """``command`` on each user's key ``name``, pipelined: the replies in order."""
        self._check_open()
        if not users:
            return []
        key = self.settings.key
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.execute_command(command, key(name, user))
            replies: list[Any] = await pipe.execute()
        return replies

    async def read_group(self, group: int, after: int, limit: int) -> InboxPage:
        self._check_open()
        gkey = self.settings.gkey
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(gkey("last", group))
            if limit > 0 and after < MAX_POSITION:
                pipe.xrange(gkey("stream", group), str(after + 1), "+", count=limit)
            replies: list[Any] = await pipe.execute()
        rows = replies[1] if len(replies) > 1 else ()
        return InboxPage(
            [
                InboxEntry(entry.position(eid), entry.from_fields(fields), group)
                for eid, fields in rows or ()
            ],
            int(replies[0] or 0),
        )

    async def read_groups(
        self, reads: Mapping[int, int], limit: int
    ) -> dict[int, InboxPage | Exception]:
        """One Redis: every group's page, or the error raised (the cluster store answers
        each group alone)."""
        self._check_open()
        if not reads:
            return {}
        gkey = self.settings.gkey
        order = list(reads.items())
        async with self._redis.pipeline(transaction=False) as pipe:
            for group, after in order:
                pipe.get(gkey("last", group))
                pipe.xrange(gkey("stream", group), range_start(after), "+", count=max(limit, 1))
            replies: list[Any] = await pipe.execute()
        return {
            group: group_page(group, replies[2 * i], replies[2 * i + 1] if limit > 0 else ())
            for i, (group, _) in enumerate(order)
        }

    async def is_large(self, group: int) -> bool:
        self._check_open()
        return bool(await self._redis.exists(self.settings.gkey("large", group)))

    async def to_regroup(self, group: int) -> bool:
        self._check_open()
        return bool(await self._redis.exists(self.settings.gkey("regroup", group)))

    async def regrouped(self, group: int) -> None:
        self._check_open()
        await self._redis.delete(self.settings.gkey("regroup", group))

    async def unwatch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        self._check_open()
        await self._remove_from([self.settings.gkey("gateways", g) for g in groups], gateway)

    async def _remove_from(self, keys: Sequence[str], member: str) -> None:
        """``ZREM key member`` for each of ``keys``: one pipeline per ``keys_per_call``
        keys, one after the other."""
        for part in self.settings.chunks(keys):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in part:
                    pipe.zrem(key, member)
                await pipe.execute()

    async def ack(self, user: UserId, upto: int) -> None:
        self._check_open()
        if upto > 0:
            await self._acks.get((self.settings.key("acked", user), upto))

    async def acked(self, user: UserId) -> int:
        self._check_open()
        value = await self._redis.get(self.settings.key("acked", user))
        return 0 if value is None else int(value)

    async def opening(self, user: UserId) -> Opening:
        self._check_open()
        return await self._openings.get(user)  # with the others asked for in this turn

    @abstractmethod
    async def _read_openings(self, users: list[UserId]) -> list[Opening | Exception]:
        """Many users' openings (:meth:`opening`) in one round trip; a user's may be the
        error that failed its reads alone (a Redis Cluster node)."""

    async def members(self, group: int) -> list[UserId]:
        self._check_open()
        found = await self._redis.smembers(self.settings.group_key(group))
        return sorted(UserId(int(u)) for u in found)

    async def is_member(self, group: int, user: UserId) -> bool:
        self._check_open()
        return bool(await self._redis.sismember(self.settings.group_key(group), str(user)))

    async def are_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        self._check_open()
        if not users:
            return []
        found = await self._redis.smismember(
            self.settings.group_key(group), [str(u) for u in users]
        )
        return [bool(f) for f in found]

    async def attach(self, user: UserId, gateway: GatewayId) -> None:
        await self.refresh(gateway, (user,))

    async def detach(self, user: UserId, gateway: GatewayId) -> None:
        self._check_open()
        await self._redis.zrem(self.settings.key("presence", user), gateway)

    async def forget(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        await self._remove_from([self.settings.key("presence", u) for u in users], gateway)

    async def beacon(self, gateway: GatewayId, ttl: float) -> Beacon:
        self._check_open()
        fresh = secrets.token_hex(8)
        prefix = self.settings.prefix
        commands: list[tuple[str | int, ...]] = [
            # The gateway's mark (its old value: None when it was missing), the epoch
            # claimed if there is none yet, then read.
            ("SET", f"{prefix}gateway:{gateway}", "1", "PX", _ms(ttl), "GET"),
            ("SET", f"{prefix}epoch", fresh, "NX"),
            ("GET", f"{prefix}epoch"),
        ]
        replies = await self._pipeline(commands)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        mark, _, epoch = replies
        return Beacon(mark is None, fresh if epoch is None else text(epoch))

    async def _pipeline(self, commands: Sequence[tuple[str | int, ...]]) -> list[Any]:
        """Run raw ``commands`` in one round trip (per node, on a cluster); their replies
        in order, an error as the exception in its place. A subclass with a connection of
        its own runs them there."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def close(self) -> None:
        """Let the ack writes under way land, then close the client if the store made it;
        idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._acks.drain()
        if self._owns_client:
            await self._redis.aclose()


def range_start(after: int) -> str:
    """The first stream entry id an ``XRANGE`` after position ``after`` asks for."""
    return str(min(after, MAX_POSITION - 1) + 1)


def group_page(group: int, last: Any, rows: Any) -> InboxPage:
    """A page of ``group``'s stream from the replies of ``GET :last`` and ``XRANGE`` (as
    redis-py parses them)."""
    return InboxPage(
        [
            InboxEntry(entry.position(eid), entry.from_fields(fields), group)
            for eid, fields in rows or ()
        ],
        int(last or 0),
    )


def group_streams(reply: bytes | str) -> list[GroupStream]:
    """The streams ``lua/streams.lua`` answered."""
    out = []
    for group, pos, last, rows in json.loads(reply):
        g = int(group)
        entries = [
            InboxEntry(entry.position(eid), entry.decode(fields[1]), g)
            for eid, fields in (rows or ())  # cjson writes an empty list as {}
        ]
        out.append(GroupStream(g, int(pos), InboxPage(entries, int(last))))
    return out


MEMBERSHIPS_CHUNK = 1000
"""Users per group in one bulk read of ``lua/memberships.lua``."""


def membership_args(
    pairs: Sequence[tuple[int, UserId]], since: int = 0
) -> tuple[list[str], list[list[int]]]:
    """The arguments of ``lua/memberships.lua`` for ``pairs`` (after the prefix): per
    group, the group, ``since``, the count and the users, at most ``MEMBERSHIPS_CHUNK`` a
    read; and per read, the indexes of its pairs."""
    by_group: dict[int, list[int]] = {}
    for i, (group, _) in enumerate(pairs):
        by_group.setdefault(group, []).append(i)
    args: list[str] = []
    reads: list[list[int]] = []
    for group, indexes in by_group.items():
        for start in range(0, len(indexes), MEMBERSHIPS_CHUNK):
            chunk = indexes[start : start + MEMBERSHIPS_CHUNK]
            args += (str(group), str(since), str(len(chunk)), *(str(pairs[i][1]) for i in chunk))
            reads.append(chunk)
    return args, reads


def _span(value: bytes | str) -> tuple[int, int]:
    start, _, end = text(value).partition(":")
    return int(start), int(end)


def membership_rows(
    reply: Sequence[Any],
    reads: list[list[int]],
    pairs: Sequence[tuple[int, UserId]],
    since: int = 0,
) -> list[Membership]:
    """The memberships of ``pairs`` that ``lua/memberships.lua`` answered, in the order
    asked (``reads``: the pairs of each read, from :func:`membership_args`). With
    ``since``, a join at or before it reads as ``since`` (exact for the posts after it)."""
    out = [Membership()] * len(pairs)
    for indexes, (member, joined, past) in zip(reads, reply, strict=True):
        if since:
            recent = {
                int(u): int(float(j)) for u, j in zip(joined[0::2], joined[1::2], strict=True)
            }
            ended = {int(u): _span(s) for u, s in zip(past[0::2], past[1::2], strict=True) if s}
            for k, i in enumerate(indexes):
                user = int(pairs[i][1])
                now = recent.get(user, since) if int(member[k]) else None
                out[i] = Membership(now, ended.get(user))
            continue
        for k, i in enumerate(indexes):
            now = int(float(joined[k] or 0)) if int(member[k]) else None
            out[i] = Membership(now, _span(past[k]) if past[k] is not None else None)
    return out
