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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from transmit_hub.lifecycle import AsyncClosing
from transmit_hub.types import MESSAGE_GROUP, GatewayId, Message, MessageId, Recipient, UserId

from ..errors import GroupLimitError, StoreError
from .contract import (
    DEFAULT_MAX_GROUP_MEMBERS,
    DEFAULT_MAX_GROUPS_PER_USER,
    Accepted,
    Beacon,
    InboxEntry,
    InboxPage,
    Refusal,
    Refused,
    Submission,
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
        clock: Callable[[], float] = time.time,
    ) -> None:
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
                stored = self._entry(again[0], now) if again else None
                if stored is None:  # trimmed: nothing to push again
                    first = dataclasses.replace(msg, id=seen[0], time=seen[1])
                    return Accepted(sub.client_id, first, duplicate=True)
                return Accepted(sub.client_id, stored, True, again, self._presence_of(again, now))
        if msg.type == MESSAGE_GROUP:
            members = self._groups.get(msg.to, set())
            if msg.sender not in members:
                if sub.check_member:
                    return Refused(sub.client_id, Refusal.NOT_MEMBER)
                if msg.sender != 0:
                    members = {*members, msg.sender}
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
        inbox.last += 1
        inbox.entries.append(InboxEntry(inbox.last, msg))
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

    async def ack(self, user: UserId, upto: int) -> None:
        self._check_open()
        now = self._clock()
        inbox = self._inbox(user, now)
        upto = min(upto, inbox.last if inbox is not None else 0)
        current = await self.acked(user)
        if upto <= 0 and current <= 0:
            return
        self._acked[user] = (max(current, upto), now + self.inbox_max_age)

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
        return removed

    async def members(self, group: int) -> list[UserId]:
        self._check_open()
        return sorted(self._groups.get(group, ()))

    async def is_member(self, group: int, user: UserId) -> bool:
        self._check_open()
        return user in self._groups.get(group, ())

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
