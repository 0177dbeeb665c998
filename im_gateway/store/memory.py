"""The :class:`~im_gateway.store.Store` in plain Python, for unit tests of the gateway.

It keeps the Redis store's semantics, clock included: inbox positions are consecutive
per user (1, 2, 3, ...), every entry but group membership expires, and the clock is
injectable so tests can move time instead of waiting. Trimming is exact here
(Redis trims approximately, whole stream nodes at a time). One process only, of course.
"""

from __future__ import annotations

import bisect
import dataclasses
import secrets
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transmit_hub.lifecycle import AsyncClosing
from transmit_hub.types import MESSAGE_GROUP, GatewayId, Message, MessageId, Recipient, UserId

from ..errors import GroupLimitError, StoreError
from ..positions import stream_position
from .contract import (
    DEFAULT_KEYS_PER_CALL,
    DEFAULT_LARGE_GROUP,
    DEFAULT_MAX_GROUP_MEMBERS,
    DEFAULT_MAX_GROUPS_PER_USER,
    Accepted,
    Beacon,
    GroupPost,
    GroupStream,
    InboxEntry,
    InboxPage,
    Joined,
    Membership,
    Opening,
    Refusal,
    Refused,
    Submission,
    Unread,
    unencodable,
)


@dataclass(slots=True)
class _Inbox:
    entries: list[InboxEntry] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """When each entry was appended (seconds), for trimming by age."""
    last: int = 0
    expires: float = 0.0


class MemoryStore(AsyncClosing):
    """Presence, groups, inboxes and dedupe in dictionaries.

    Options match :class:`~im_gateway.store.redis.RedisStore`'s (``prefix`` is accepted and
    ignored); ``clock`` returns seconds since the epoch (default :func:`time.time`).
    """

    def __init__(
        self,
        *,
        prefix: str = "im:",
        inbox_max_len: int = 10_000,
        inbox_max_age: float = 7 * 86400,
        dedupe_window: float = 600,
        presence_ttl: float = 30,
        max_groups_per_user: int = DEFAULT_MAX_GROUPS_PER_USER,
        max_group_members: int = DEFAULT_MAX_GROUP_MEMBERS,
        large_group: int = DEFAULT_LARGE_GROUP,
        keys_per_call: int = DEFAULT_KEYS_PER_CALL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if large_group < 1:
            raise StoreError("large_group must be positive")
        if keys_per_call < 1:  # checked as the Redis stores do; nothing here to split
            raise StoreError(f"keys_per_call must be at least 1, not {keys_per_call}")
        self.large_group = large_group
        self._streams: dict[int, _Inbox] = {}
        """Large groups' streams (the same shape as an inbox)."""
        self._large: set[int] = set()
        self._regroup: set[int] = set()  # became large; members not all following yet
        self._gpos: dict[int, dict[UserId, int]] = {}
        """Per large group: member -> position (acknowledged, or where they joined)."""
        self._joined: dict[int, dict[UserId, int]] = {}
        """Per large group: member -> the stream's newest position when they joined."""
        self._left: dict[int, dict[UserId, tuple[int, int]]] = {}
        """Per large group: leaver -> (join, leave) of their latest ended membership, in
        the order they left (the oldest beyond ``max_group_members`` go first)."""
        self._watch: dict[int, dict[GatewayId, float]] = {}
        """Per large group: gateway -> expiry (gateways with members online)."""
        if inbox_max_len < 1 or inbox_max_age <= 0 or dedupe_window <= 0 or presence_ttl <= 0:
            raise StoreError("store limits and TTLs must be positive")
        if max_groups_per_user < 1 or max_group_members < 1:
            raise StoreError("group limits must be positive")
        self.max_groups_per_user = max_groups_per_user
        self.max_group_members = max_group_members
        self._user_groups: dict[UserId, set[int]] = {}
        self.prefix = prefix
        self.inbox_max_len = inbox_max_len
        self.inbox_max_age = inbox_max_age
        self.dedupe_window = dedupe_window
        self.presence_ttl = presence_ttl
        self._clock = clock
        self._groups: dict[int, set[UserId]] = {}
        self._presence: dict[UserId, dict[GatewayId, float]] = {}
        self._inboxes: dict[UserId, _Inbox] = {}
        self._acked: dict[UserId, tuple[int, float]] = {}
        # (sender, client id) -> (message id, time, recipients, expiry); insertion order =
        # expiry order
        self._dedupe: dict[
            tuple[UserId, str], tuple[MessageId, int, tuple[Recipient, ...], float]
        ] = {}
        self._beacons: dict[GatewayId, float] = {}
        self.epoch = secrets.token_hex(8)
        """The data generation (a test may change it to act out a data loss)."""
        self._closed = False

    # -- messages -------------------------------------------------------------------------

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        self._check_open()
        now = self._clock()
        self._expire_dedupe(now)
        bad = unencodable(batch)
        return [
            Refused(sub.client_id, Refusal.UNENCODABLE) if i in bad else self._submit_one(sub, now)
            for i, sub in enumerate(batch)
        ]

    def _submit_one(self, sub: Submission, now: float) -> Accepted | Refused:
        msg = sub.message
        dkey = (msg.sender, sub.client_id)
        if sub.client_id:
            seen = self._dedupe.get(dkey)
            if seen is not None and seen[3] > now:
                again = seen[2]
                if again and again[0].seq.startswith("g"):
                    return self._post_again(sub, seen[0], seen[1], again, now)
                stored = self._entry(again[0], now) if again else None
                if stored is None:  # trimmed: nothing to push again
                    first = dataclasses.replace(msg, id=seen[0], time=seen[1])
                    return Accepted(sub.client_id, first, duplicate=True)
                return Accepted(sub.client_id, stored, True, again, self._presence_of(again, now))
        if msg.type == MESSAGE_GROUP:
            members = self._groups.get(msg.to, set())
            copy = None
            if msg.sender not in members:
                if sub.check_member:
                    return Refused(sub.client_id, Refusal.NOT_MEMBER)
                if msg.sender != 0:  # the server API posts as a user: their copy
                    copy = msg.sender
                    members = {*members, msg.sender}
            if msg.to in self._large:
                return self._post(sub, now, copy)
            users = sorted(members)
        elif msg.to == msg.sender or msg.sender == 0:
            users = [UserId(msg.to)]
        else:
            users = [UserId(msg.to), msg.sender]
        recipients = tuple(Recipient(user, self._append(user, msg, now)) for user in users)
        if sub.client_id:
            self._dedupe.pop(dkey, None)
            self._dedupe[dkey] = (msg.id, msg.time, recipients, now + self.dedupe_window)
        return Accepted(sub.client_id, msg, False, recipients, self._presence_of(recipients, now))

    def _post(self, sub: Submission, now: float, copy: UserId | None) -> Accepted:
        """Store a message to a large group once, in its stream (and, for a sender who
        is not a member, ``copy``, in the sender's inbox)."""
        msg = sub.message
        pos = self._append_to(self._streams, msg.to, None, msg, now)
        self._touch_group(msg.to, now)
        post = GroupPost(msg.to, int(pos), self._watchers(msg.to, now))
        mine: tuple[Recipient, ...] = ()
        if copy is not None:
            mine = (Recipient(copy, self._append(copy, msg, now)),)
        if sub.client_id:
            key = (msg.sender, sub.client_id)
            self._dedupe.pop(key, None)
            mark = (Recipient(UserId(0), post.seq), *mine)
            self._dedupe[key] = (msg.id, msg.time, mark, now + self.dedupe_window)
        return Accepted(sub.client_id, msg, False, mine, self._presence_of(mine, now), post)

    def _post_again(
        self,
        sub: Submission,
        mid: MessageId,
        mtime: int,
        again: tuple[Recipient, ...],
        now: float,
    ) -> Accepted:
        group, pos = stream_position(again[0].seq)
        assert group is not None
        mine = again[1:]
        stream = self._live_stream(group, now)
        first = dataclasses.replace(sub.message, id=mid, time=mtime)
        if stream is None or not stream.entries or pos < stream.entries[0].position:
            return Accepted(sub.client_id, first, duplicate=True)
        i = pos - stream.entries[0].position
        if i >= len(stream.entries):
            return Accepted(sub.client_id, first, duplicate=True)
        post = GroupPost(group, pos, self._watchers(group, now))
        stored = stream.entries[i].message
        return Accepted(sub.client_id, stored, True, mine, self._presence_of(mine, now), post)

    def _watchers(self, group: int, now: float) -> tuple[GatewayId, ...]:
        entries = self._watch.get(group)
        if not entries:
            return ()
        live = sorted((expires, gw) for gw, expires in entries.items() if expires > now)
        return tuple(gw for _, gw in live)

    def _live_stream(self, group: int, now: float) -> _Inbox | None:
        stream = self._streams.get(group)
        if stream is not None and stream.expires <= now:
            del self._streams[group]
            self._gpos.pop(group, None)
            self._joined.pop(group, None)
            self._left.pop(group, None)
            return None
        return stream

    def _touch_group(self, group: int, now: float) -> None:
        """The stream and the members' positions live and expire together."""
        stream = self._live_stream(group, now)
        if stream is None:
            stream = self._streams[group] = _Inbox()
        stream.expires = now + self.inbox_max_age

    def _group_last(self, group: int, now: float) -> int:
        stream = self._live_stream(group, now)
        return 0 if stream is None else stream.last

    def _reform(self, group: int, now: float) -> None:
        """Stored once above ``large_group`` members, else in each member's inbox."""
        members = self._groups.get(group, set())
        if len(members) > self.large_group and group not in self._large:
            self._large.add(group)
            self._regroup.add(group)
            last = self._group_last(group, now)
            self._touch_group(group, now)
            positions = self._gpos.setdefault(group, {})
            joined = self._joined.setdefault(group, {})
            for user in members:
                positions.setdefault(user, last)
                joined.setdefault(user, last)
        elif len(members) <= self.large_group and group in self._large:
            self._large.discard(group)
            self._regroup.discard(group)

    def _presence_of(
        self, recipients: Sequence[Recipient], now: float
    ) -> dict[UserId, tuple[GatewayId, ...]]:
        presence = {}
        for r in recipients:
            gateways = self._live(r.user_id, now)
            if gateways:
                presence[r.user_id] = gateways
        return presence

    def _entry(self, recipient: Recipient, now: float) -> Message | None:
        """The message stored at ``recipient``'s position, if its inbox still has it."""
        inbox = self._inbox(recipient.user_id, now)
        pos = int(recipient.seq)
        if inbox is None or not inbox.entries or pos < inbox.entries[0].position:
            return None
        i = pos - inbox.entries[0].position
        return inbox.entries[i].message if i < len(inbox.entries) else None

    def _append(self, user: UserId, msg: Message, now: float) -> str:
        inbox = self._inbox(user, now)
        if inbox is None:
            # A fresh counter resumes after the acknowledged position (which may outlive
            # the inbox), so no position hides behind an ack.
            acked = self._acked.get(user)
            start = acked[0] if acked is not None and acked[1] > now else 0
            inbox = self._inboxes[user] = _Inbox(last=start)
        return self._append_to(self._inboxes, user, inbox, msg, now)

    def _append_to(
        self, boxes: dict[Any, _Inbox], key: int, inbox: _Inbox | None, msg: Message, now: float
    ) -> str:
        if inbox is None:
            inbox = self._live_stream(key, now)
            if inbox is None:
                inbox = boxes[key] = _Inbox()
        inbox.last += 1
        group = key if boxes is self._streams else None
        inbox.entries.append(InboxEntry(inbox.last, msg, group))
        inbox.times.append(now)
        inbox.expires = now + self.inbox_max_age
        drop = max(0, len(inbox.entries) - self.inbox_max_len)
        drop = max(drop, bisect.bisect_left(inbox.times, now - self.inbox_max_age))
        if drop:
            del inbox.entries[:drop]
            del inbox.times[:drop]
        return str(inbox.last)

    def _inbox(self, user: UserId, now: float) -> _Inbox | None:
        inbox = self._inboxes.get(user)
        if inbox is not None and inbox.expires <= now:
            del self._inboxes[user]
            return None
        return inbox

    def _expire_dedupe(self, now: float) -> None:
        expired = []
        for dkey, (_, _, _, expires) in self._dedupe.items():
            if expires > now:
                break
            expired.append(dkey)
        for dkey in expired:
            del self._dedupe[dkey]

    async def read_inbox(self, user: UserId, after: int, limit: int) -> InboxPage:
        self._check_open()
        inbox = self._inbox(user, self._clock())
        if inbox is None:
            return InboxPage([], 0)
        if limit <= 0 or not inbox.entries:
            return InboxPage([], inbox.last)
        # Positions are consecutive from the oldest kept entry.
        i = max(0, min(len(inbox.entries), after + 1 - inbox.entries[0].position))
        return InboxPage(inbox.entries[i : i + limit], inbox.last)

    async def inbox_ends(self, users: Sequence[UserId]) -> list[int | None]:
        self._check_open()
        now = self._clock()
        ends: list[int | None] = []
        for user in users:
            inbox = self._inbox(user, now)
            ends.append(inbox.last if inbox is not None else 0)
        return ends

    async def in_groups(self, users: Sequence[UserId]) -> list[bool | None]:
        self._check_open()
        return [bool(self._user_groups.get(user)) for user in users]

    async def ack(self, user: UserId, upto: int) -> None:
        self._check_open()
        now = self._clock()
        inbox = self._inbox(user, now)
        upto = min(upto, inbox.last if inbox is not None else 0)
        current = await self.acked(user)
        if upto <= 0 and current <= 0:
            return
        self._acked[user] = (max(current, upto), now + self.inbox_max_age)

    async def opening(self, user: UserId) -> Opening:
        self._check_open()
        inbox = self._inbox(user, self._clock())
        end = inbox.last if inbox is not None else 0
        return Opening(await self.acked(user), end, bool(self._user_groups.get(user)))

    async def acked(self, user: UserId) -> int:
        self._check_open()
        entry = self._acked.get(user)
        if entry is None or entry[1] <= self._clock():
            self._acked.pop(user, None)
            return 0
        return entry[0]

    # -- groups ---------------------------------------------------------------------------

    async def join(self, group: int, user: UserId) -> bool:
        self._check_open()
        members = self._groups.get(group, set())
        if user in members:
            return False
        mine = self._user_groups.get(user, set())
        if len(mine) >= self.max_groups_per_user:
            raise GroupLimitError(group, self.max_groups_per_user, user_full=True)
        if len(members) >= self.max_group_members:
            raise GroupLimitError(group, self.max_group_members, user_full=False)
        self._groups.setdefault(group, members).add(user)
        self._user_groups.setdefault(user, mine).add(group)
        now = self._clock()
        if group in self._large or self._live_stream(group, now) is not None:
            # Nothing from before the join: the member starts at the stream's end.
            last = self._group_last(group, now)
            self._touch_group(group, now)
            self._gpos.setdefault(group, {})[user] = last
            self._joined.setdefault(group, {})[user] = last
        self._reform(group, now)
        return True

    async def leave(self, group: int, user: UserId) -> bool:
        self._check_open()
        members = self._groups.get(group)
        removed = members is not None and user in members
        if members is not None:
            members.discard(user)
            if not members:
                del self._groups[group]
        mine = self._user_groups.get(user)
        if mine is not None:
            mine.discard(group)
            if not mine:
                del self._user_groups[user]
        now = self._clock()
        if removed:
            self._left_at(group, user, now)
        self._reform(group, now)
        return removed

    def _left_at(self, group: int, user: UserId, now: float) -> None:
        """``user`` left ``group``: their position goes; their membership's join and
        leave positions are kept when they had one in the stream."""
        positions = self._gpos.get(group)
        if positions is not None:
            positions.pop(user, None)
        joined = self._joined.get(group, {}).pop(user, None)
        if joined is None and group not in self._large:
            return
        self._touch_group(group, now)
        left = self._left.setdefault(group, {})
        left.pop(user, None)  # to the end: the latest leaver
        left[user] = (joined or 0, self._group_last(group, now))
        while len(left) > self.max_group_members:
            del left[next(iter(left))]

    async def add_members(self, group: int, users: Sequence[UserId]) -> list[Joined]:
        out = []
        for user in users:
            try:
                out.append(Joined.ADDED if await self.join(group, user) else Joined.MEMBER)
            except GroupLimitError as exc:
                out.append(Joined.USER_FULL if exc.user_full else Joined.GROUP_FULL)
        return out

    async def remove_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        return [await self.leave(group, user) for user in users]

    async def is_large(self, group: int) -> bool:
        self._check_open()
        return group in self._large

    async def to_regroup(self, group: int) -> bool:
        self._check_open()
        return group in self._regroup

    async def regrouped(self, group: int) -> None:
        self._check_open()
        self._regroup.discard(group)

    # -- large groups' streams ------------------------------------------------------------

    async def streams(self, user: UserId, limit: int) -> list[GroupStream | Unread]:
        self._check_open()
        now = self._clock()
        out: list[GroupStream | Unread] = []
        for group in sorted(self._user_groups.get(user, ())):
            stream = self._live_stream(group, now)
            if group not in self._large and stream is None:
                continue
            pos = self._gpos.get(group, {}).get(user, 0)
            out.append(GroupStream(group, pos, self._page(stream, pos, limit)))
        return out

    def _page(self, stream: _Inbox | None, after: int, limit: int) -> InboxPage:
        if stream is None:
            return InboxPage([], 0)
        if limit <= 0 or not stream.entries:
            return InboxPage([], stream.last)
        i = max(0, min(len(stream.entries), after + 1 - stream.entries[0].position))
        return InboxPage(stream.entries[i : i + limit], stream.last)

    async def read_group(self, group: int, after: int, limit: int) -> InboxPage:
        self._check_open()
        return self._page(self._live_stream(group, self._clock()), after, limit)

    async def read_groups(
        self, reads: Mapping[int, int], limit: int
    ) -> dict[int, InboxPage | Exception]:
        self._check_open()
        now = self._clock()
        return {
            g: self._page(self._live_stream(g, now), after, limit) for g, after in reads.items()
        }

    async def ack_group(self, user: UserId, group: int, upto: int) -> None:
        self._check_open()
        if user not in self._groups.get(group, ()):
            return
        now = self._clock()
        upto = min(upto, self._group_last(group, now))
        positions = self._gpos.setdefault(group, {})
        if upto > positions.get(user, 0):
            positions[user] = upto
        if group in self._streams:
            self._touch_group(group, now)

    async def watch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        self._check_open()
        now = self._clock()
        for group in groups:
            entries = self._watch.setdefault(group, {})
            for gw in [gw for gw, expires in entries.items() if expires <= now]:
                del entries[gw]
            entries[gateway] = now + self.presence_ttl

    async def unwatch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        self._check_open()
        for group in groups:
            entries = self._watch.get(group)
            if entries is not None:
                entries.pop(gateway, None)
                if not entries:
                    del self._watch[group]

    async def members(self, group: int) -> list[UserId]:
        self._check_open()
        return sorted(self._groups.get(group, ()))

    async def is_member(self, group: int, user: UserId) -> bool:
        self._check_open()
        return user in self._groups.get(group, ())

    async def memberships(
        self, pairs: Sequence[tuple[int, UserId]], *, since: int = 0
    ) -> list[Membership]:
        self._check_open()
        now = self._clock()
        out = []
        for group, user in pairs:
            self._live_stream(group, now)  # expired records go with the stream
            joined = None
            if user in self._groups.get(group, ()):
                joined = self._joined.get(group, {}).get(user, 0)
            out.append(Membership(joined, self._left.get(group, {}).get(user)))
        return out

    async def are_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        self._check_open()
        members = self._groups.get(group, ())
        return [u in members for u in users]

    # -- presence -------------------------------------------------------------------------

    async def attach(self, user: UserId, gateway: GatewayId) -> None:
        await self.refresh(gateway, (user,))

    async def detach(self, user: UserId, gateway: GatewayId) -> None:
        await self.forget(gateway, (user,))

    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        now = self._clock()
        for user in users:
            entries = self._presence.setdefault(user, {})
            for gw in [gw for gw, expires in entries.items() if expires <= now]:
                del entries[gw]
            entries[gateway] = now + self.presence_ttl

    async def forget(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        for user in users:
            entries = self._presence.get(user)
            if entries is not None:
                entries.pop(gateway, None)
                if not entries:
                    del self._presence[user]

    async def lookup(self, users: Collection[UserId]) -> dict[UserId, tuple[GatewayId, ...]]:
        self._check_open()
        now = self._clock()
        found = {}
        for user in users:
            gateways = self._live(user, now)
            if gateways:
                found[user] = gateways
        return found

    def _live(self, user: UserId, now: float) -> tuple[GatewayId, ...]:
        entries = self._presence.get(user)
        if not entries:
            return ()
        live = sorted((expires, gw) for gw, expires in entries.items() if expires > now)
        return tuple(gw for _, gw in live)

    async def beacon(self, gateway: GatewayId, ttl: float) -> Beacon:
        self._check_open()
        now = self._clock()
        missing = self._beacons.get(gateway, 0.0) <= now
        self._beacons[gateway] = now + ttl
        return Beacon(missing, self.epoch)

    # -- lifecycle ------------------------------------------------------------------------

    async def ping(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")
