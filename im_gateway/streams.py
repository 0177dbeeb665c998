"""One connection's streams: its inbox and each large group's stream it reads, a
:class:`~im_gateway.cursor.Cursor` each, and their pages read from the store.

:class:`Streams` is the half of a :class:`~im_gateway.replayer.Replayer` that reads: a
page after a cursor (``replay_page`` entries, the store calls bounded by the
gateway-wide ``slots``), the user's large groups and their positions, and a page of many
streams at once (the connect replay's). A group's stream is read with the reader's
membership read after the page (:meth:`~im_gateway.store.Store.memberships`), and only
the posts stored while the reader was a member are sent (``join < position <= leave``,
the rule of :mod:`im_gateway.screening`): a leave before any of the page's posts shows,
a post from before the leave still goes out, and nothing from while the user was out of
the group does. The cursor passes the others silently (they are no hole). The replayer
decides what to read when.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Collection, Iterable
from typing import Protocol

from transmit_hub.types import UserId

from . import frames
from .cursor import Cursor
from .metrics import GatewayMetrics, NullMetrics
from .store import GroupStream, InboxPage, Membership, Store, Unread

LEAVE_PAGES = 4
"""Pages of a group's stream read, at most, up to a leave's position before the
connection stops following it."""


class Outlet(Protocol):
    """Where a replayer's frames go (a session's writer)."""

    @property
    def closing(self) -> bool: ...

    def push(self, text: str) -> bool: ...

    async def room(self) -> None:
        """Wait until the frames already pushed have drained (flow control for pages)."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Stop writing and close the connection (in the background)."""
        ...


class Follower(Protocol):
    """Who follows large groups for a connection (its session: one object, not two bound
    methods per connection)."""

    async def follow_groups(self, groups: Collection[int]) -> None:
        """Live posts of these large groups should reach this connection from now on."""
        ...

    def unfollow_groups(self, groups: Collection[int]) -> None:
        """No more live posts of these groups (the user left them)."""
        ...


class Streams:
    """One connection's cursors and the store reads behind them."""

    __slots__ = (
        "_cursor",
        "_follower",
        "_groups",
        "_groups_timer",
        "_hold_max",
        "_merge",
        "_metrics",
        "_out",
        "_page",
        "_pending_own",
        "_retry_at",
        "_slots",
        "_store",
        "_unstarted",
        "_user",
    )

    def __init__(
        self,
        out: Outlet,
        user: UserId,
        *,
        store: Store,
        slots: asyncio.Semaphore,
        follower: Follower,
        replay_page: int,
        held_max: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._out = out
        self._user = user
        self._store = store
        self._slots = slots
        self._follower = follower
        self._page = replay_page
        self._hold_max = held_max
        self._cursor: Cursor[str] = Cursor(hold_max=held_max)
        self._groups: dict[int, Cursor[str]] = {}
        """A cursor per large group's stream the user reads."""
        self._pending_own: dict[int, list[int]] | None = None
        """Positions this connection posted in groups it does not follow yet (bounded)."""
        self._retry_at = 0.0
        """No fill before this (loop time): a read failed."""
        self._groups_timer: asyncio.TimerHandle | None = None
        """A read of the user's large groups, a second after one left some unread."""
        self._unstarted: set[int] = set()
        """Groups the connect replay could not read (their node silent): started at the
        user's position once read, as the replay would have, not at the join."""
        self._merge: dict[int | None, collections.deque[str]] | None = None
        """During the connect replay: each stream's frames read (its cursor moved past
        them) and not sent yet; a live push of that stream goes behind them."""

    def _emit(self, key: int | None, items: Iterable[str]) -> None:
        """Frames of stream ``key`` (None: the inbox) to send now: behind those of it the
        connect replay has read and not sent yet, else at once (sent before those, a
        client would take them for repeats: a hole for good)."""
        buffered = self._merge.get(key) if self._merge is not None else None
        if buffered:
            buffered.extend(items)
            return
        for item in items:
            self._out.push(item)

    @property
    def position(self) -> int:
        """Everything up to this inbox position is delivered on this connection."""
        return self._cursor.last

    def follows(self, group: int) -> bool:
        """True when this connection reads ``group``'s stream (the user is a member)."""
        return group in self._groups

    @property
    def follows_groups(self) -> bool:
        """True while this connection reads a large group's stream."""
        return bool(self._groups)

    def regroup(self, left: int | None = None) -> None:
        """The user left ``left`` (a read found it no longer a member): the replayer
        stops following it and reads the user's groups again."""
        raise NotImplementedError

    def _wants_fill(self) -> bool:
        return self._cursor.wants_fill or any(c.wants_fill for c in self._groups.values())

    def _stream_cursor(self, key: int | None) -> Cursor[str]:
        return self._cursor if key is None else self._groups[key]

    async def _read_pages(
        self, keys: list[int | None], buffers: dict[int | None, collections.deque[str]]
    ) -> tuple[bool, list[int]]:
        """A page of each stream in ``keys`` after its cursor, into its buffer; the groups
        in one call. True when positions turned out trimmed; and the groups whose page
        the store could not read (a silent Redis Cluster node holds them): their cursors
        stay where they were and want a read (later: see :meth:`_not_before`), while the
        other streams' pages are used. A failure of the whole raises, every cursor as it
        was."""
        limit = self._page
        cursors = {k: self._stream_cursor(k) for k in keys}
        reads = {k: cursors[k].begin_fill() for k in keys if k is not None}
        inbox_after = cursors[None].begin_fill() if None in keys else None
        later: list[int] = []
        try:
            async with self._slots:
                pages: dict[int | None, InboxPage] = {}
                if inbox_after is not None:
                    pages[None] = await self._store.read_inbox(self._user, inbox_after, limit)
                spans: dict[int, Membership] = {}
                if reads:
                    for group, page in (await self._store.read_groups(reads, limit)).items():
                        if isinstance(page, Exception):
                            later.append(group)
                        else:
                            pages[group] = page
                    # Read after the pages, so a leave before any of their posts shows
                    # here; only of the groups read (their nodes just answered).
                    order = [g for g in reads if g in pages]
                    if order:
                        found = await self._store.memberships([(g, self._user) for g in order])
                        spans = dict(zip(order, found, strict=True))
        except BaseException:
            for cursor in cursors.values():
                cursor.unfilled()
            raise
        for group in later:
            cursors[group].unfilled()
        if later:
            self._not_before(1.0)
        await self._out.room()
        trimmed = False
        for key, page in pages.items():
            if key is not None and key not in self._groups:
                continue  # the user left that group meanwhile
            cursor = self._stream_cursor(key)
            entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
            result = cursor.filled(entries, page.last, complete=len(page.entries) < limit)
            span = spans.get(key) if key is not None else None
            buffers[key].extend(
                result.send if span is None else members_only(entries, result.send, span)
            )
            trimmed = trimmed or result.trimmed
        for group, span in spans.items():
            if not span.member and group in self._groups:
                self.regroup(group)  # left meanwhile: nothing more of it on this connection
        return trimmed, later

    def _not_before(self, delay: float) -> None:
        """Read no stream again for ``delay`` seconds (one failed: its node is silent)."""
        at = asyncio.get_running_loop().time() + delay
        self._retry_at = max(self._retry_at, at)

    def _follow_later(self) -> None:
        """Read the user's large groups again a second from now (some were unread)."""
        if self._groups_timer is None and not self._out.closing:
            loop = asyncio.get_running_loop()
            self._groups_timer = loop.call_later(1.0, self._groups_again)

    def _groups_again(self) -> None:
        self._groups_timer = None
        if self._out.closing:
            return
        if not self._cursor.ready:  # the connect replay (or its retry) is still to come
            self._follow_later()
            return
        self.regroup()

    async def _read(self, after: int) -> tuple[InboxPage, bool]:
        limit = self._page
        async with self._slots:
            page = await self._store.read_inbox(self._user, after, limit)
        await self._out.room()
        return page, len(page.entries) < limit

    async def _fill(self) -> bool:
        """Read one page after the cursor; True when positions turned out trimmed. A
        failed read leaves the cursor wanting it (a catch-up has no hole to ask again)."""
        cursor = self._cursor
        try:
            page, complete = await self._read(cursor.begin_fill())
        except BaseException:
            cursor.unfilled()
            raise
        entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
        result = cursor.filled(entries, page.last, complete=complete)
        for frame in result.send:
            self._out.push(frame)
        return result.trimmed

    async def _fill_group(self, group: int) -> bool:
        """Read one page of ``group``'s stream after its cursor; True when trimmed."""
        cursor = self._groups[group]
        limit = self._page
        try:
            page, span = await self._group_page(group, cursor.begin_fill(), limit)
        except BaseException:
            cursor.unfilled()
            raise
        if self._groups.get(group) is not cursor:
            return False  # the user left that group meanwhile
        entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
        complete = len(page.entries) < limit
        result = cursor.filled(entries, page.last, complete=complete)
        for frame in members_only(entries, result.send, span):
            self._out.push(frame)
        if not span.member:
            # Left, and the notice may not have come yet: what was posted up to the leave
            # is sent (read on while the page stops short of it); then no more.
            left = span.past[1] if span.past is not None else 0
            if complete or cursor.last >= left:
                self.regroup(group)
            return False
        return result.trimmed

    async def _read_to_leave(self, group: int) -> None:
        """The user left ``group``: what was posted up to the leave and not sent on this
        connection yet (its push still on its way, say) goes out now, at most
        ``LEAVE_PAGES`` pages; then the caller stops following the group."""
        cursor = self._groups[group]
        limit = self._page
        for _ in range(LEAVE_PAGES):
            page, span = await self._group_page(group, cursor.begin_fill(), limit)
            if self._groups.get(group) is not cursor or span.member:
                return  # (a member again: the next read of the groups keeps it)
            entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
            complete = len(page.entries) < limit
            result = cursor.filled(entries, page.last, complete=complete)
            for frame in members_only(entries, result.send, span):
                self._out.push(frame)
            if complete or cursor.last >= (span.past[1] if span.past is not None else 0):
                return

    async def _group_page(self, group: int, after: int, limit: int) -> tuple[InboxPage, Membership]:
        """A page of ``group``'s stream after ``after``, and the reader's membership read
        after it (so it covers the page); waits for room to send it."""
        async with self._slots:
            page = await self._store.read_group(group, after, limit)
            [span] = await self._store.memberships([(group, self._user)])
        await self._out.room()
        return page, span

    async def _regroup(self) -> None:
        """Follow the user's large groups this connection does not follow yet."""
        fresh = await self._follow()
        joined = [g for g in fresh if g not in self._unstarted]
        if joined:
            # Followed from now on (the user joined, maybe while this gateway was cut
            # off): from the join, as another device may have acknowledged posts already
            # (a failed read fails the regroup, which is tried again a second later).
            # Not a group the connect replay could not read: the user was in it then, and
            # a client new then has shown none of it; from the user's position, as the
            # replay would have (from the join, it was shown every post again).
            async with self._slots:
                spans = await self._store.memberships([(g, self._user) for g in joined])
            for group, span in zip(joined, spans, strict=True):
                if span.joined is not None and span.joined < fresh[group]:
                    fresh[group] = span.joined
        self._unstarted.difference_update(fresh)
        for group, pos in fresh.items():
            cursor = self._groups[group]
            for frame in cursor.start(pos):
                self._out.push(frame)
            cursor.sync()  # posts stored before this gateway followed the group

    async def _follow(self, *, connecting: bool = False) -> dict[int, int]:
        """Read the user's large groups and their positions; make a cursor for each new
        one, drop those of groups the user left, and follow them. Returns the positions of
        those whose cursor has not started (new ones). ``connecting``: for the connect
        replay (the groups it leaves unread are started later as it would have)."""
        async with self._slots:
            listed = await self._store.streams(self._user, 0)
        found = {s.group: s.position for s in listed if isinstance(s, GroupStream)}
        # Groups whose node did not answer (a silent Redis Cluster node): kept as they
        # are (followed, or not yet), and the groups are read again a second later.
        unread = {s.group for s in listed if isinstance(s, Unread)}
        if connecting:
            self._unstarted = {
                g for g in unread if g not in self._groups or not self._groups[g].ready
            }
        if unread:
            self._follow_later()
        gone = [g for g in self._groups if g not in found and g not in unread]
        if gone:
            for g in gone:
                if self._groups[g].ready:
                    await self._read_to_leave(g)
                self._groups.pop(g, None)
            self._follower.unfollow_groups(gone)
        # New groups, and those whose start an earlier attempt did not reach.
        fresh = {
            g: p for g, p in found.items() if g not in self._groups or not self._groups[g].ready
        }
        pending = self._pending_own or {}
        self._pending_own = {g: p for g, p in pending.items() if g in unread} or None
        for g in fresh:
            cursor = self._groups.get(g)
            if cursor is None:
                cursor = self._groups[g] = Cursor[str](hold_max=self._hold_max)
            for pos in pending.get(g, ()):
                cursor.own(pos)
        if fresh:
            await self._follower.follow_groups(list(fresh))
        return fresh


def members_only(entries: list[tuple[int, str]], send: list[str], span: Membership) -> list[str]:
    """The frames of ``send`` but those of ``entries`` (position, frame) that were posted
    while the reader was not a member (``span``); frames held back earlier (pushed live,
    and screened then) stay."""
    skip = {text for pos, text in entries if not span.covers(pos)}
    return [text for text in send if text not in skip] if skip else send
