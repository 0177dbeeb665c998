"""The inbox reads of one connection: the connect replay, the replays a client asks
for, and hole fills, around the pure :class:`~im_gateway.cursor.Cursor`.

A :class:`Replayer` is the I/O half of a session's position logic: the cursor decides
what to send and whether to read; the replayer reads the store (one task per connection,
pages of ``replay_page`` entries, calls bounded by the gateway's ``slots``; the reads are
its :class:`~im_gateway.streams.Streams` half) and hands every frame to its
:class:`~im_gateway.streams.Outlet` (the session's writer). The fan-out's pushes come to
it directly; it follows large groups through the follower it is given.

- A hole is read after ``fill_delay`` seconds (pushes merely out of order cost nothing);
  after a failed read, not before a second.
- The connect replay ends with ``{"type":14,...}`` (``truncated`` when positions the
  user had not acknowledged were trimmed). One that failed before it began is answered
  ``internal`` and tried again a second later (unless the client asks first); one that
  failed part-way can neither start over nor end here: the connection is closed (1011).
- A replay the client asks for resends everything after its position, one at a time per
  connection, within ``replay_budget`` entries a minute; beyond it, ``rate_limited`` and an
  end marker at the position reached.

Large groups. Each large group the user is in has a stream and a cursor of its own here
(positions ``g<group>:<n>``), its holes filled and its replays served apart. A connect
reads the user's positions (:meth:`~im_gateway.store.Store.opening`, one round trip; for
a user in groups, :meth:`~im_gateway.store.Store.streams`, two), follows the large groups,
reads a page of each stream with something to read (the groups' in one round trip), and
sends them merged in time order, then the marker (the inbox's seq; with ``lists_groups``,
each followed group's start): about four round trips, one for a user in no group.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass

from transmit_hub.types import UserId

from . import frames
from .acks import AckRounds
from .close_codes import CLOSE_INTERNAL
from .metrics import GatewayMetrics
from .ratelimit import TokenBucket
from .store import Membership, Store
from .streams import Follower, Outlet, Streams, members_only
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

_replay_failed = Throttled(logger, "inbox reads failed %d times (replays and hole fills)")


@dataclass(frozen=True, slots=True)
class _ReplayRequest:
    """A replay with an end marker: on connect (``after`` None) or asked for (type 14, of
    the inbox or ``group``); or (``regroup``) a read of the user's large groups again."""

    after: int | None
    connect: bool = False
    group: int | None = None
    regroup: bool = False


class Replayer(Streams):
    """One connection's inbox reads (see the module docstring): what to read when."""

    __slots__ = (
        "_ack_rounds",
        "_budget",
        "_budget_max",
        "_fill_delay",
        "_fill_timer",
        "_loop",
        "_reader",
        "_requests",
        "_starts",
        "_syncs",
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
        fill_delay: float,
        replay_budget: int,
        lists_groups: bool = False,
        metrics: GatewayMetrics | None = None,
        ack_rounds: AckRounds | None = None,
    ) -> None:
        """``ack_rounds``: the gateway's; the connect replay first writes the acks its
        user's other connections have due there. ``lists_groups``: see the module's."""
        super().__init__(
            out,
            user,
            store=store,
            slots=slots,
            follower=follower,
            replay_page=replay_page,
            held_max=held_max,
            metrics=metrics,
        )
        self._fill_delay = fill_delay
        self._ack_rounds = ack_rounds
        self._loop = asyncio.get_running_loop()
        self._budget_max = replay_budget
        self._budget: TokenBucket | None = None  # made by the client's first replay
        self._requests: list[_ReplayRequest] = []
        self._reader: asyncio.Task[None] | None = None
        self._fill_timer: asyncio.TimerHandle | None = None
        self._syncs = 0
        """Reads to the inbox's end asked for (catch-ups, rebases) so far."""
        self._starts: dict[int, int] | None = {} if lists_groups else None
        """The connect replay's start in each large group's stream, for its end marker
        (None: not asked for; kept across a failed connect replay's retries)."""

    @property
    def replaying(self) -> bool:
        """True while a replay or a hole fill is running or queued."""
        return self._reader is not None or bool(self._requests)

    def ask(self, after: int | None, group: int | None = None) -> bool:
        """The client asks for what came after ``after`` (type 14) in its inbox or in
        ``group``'s stream; False while one of its replays runs (one at a time)."""
        if self._requests and self._reader is not None:
            return False
        if group is None:
            # (A connect replay waiting to be retried gives way: this one starts the
            # connection's position too.)
            self._requests[:] = [_ReplayRequest(after)]
        else:
            self._requests.append(_ReplayRequest(after, group=group))
        self._start_reader()
        return True

    def regroup(self, left: int | None = None) -> None:
        """The user's large groups may have changed: read them again (in the background);
        ``left``: the user left that group. Its posts stop at the leave (the fan-out and
        the reads show only what was posted while the user was a member); what was posted
        before it and not sent yet is read before the connection stops following it."""
        # During the connect replay (which stops at the leave too) it goes at once.
        ready = self._cursor.ready
        if left is not None and not ready and self._groups.pop(left, None) is not None:
            self._follower.unfollow_groups([left])
        if not self._cursor.ready:
            return  # the connect replay reads them
        if any(r.regroup for r in self._requests[1:]):
            return  # one is queued already (the first may be running: it may be stale)
        self._requests.append(_ReplayRequest(None, regroup=True))
        self._start_reader()

    async def close(self) -> None:
        """Stop reading; idempotent."""
        for timer in (self._fill_timer, self._groups_timer):
            if timer is not None:
                timer.cancel()
        self._fill_timer = self._groups_timer = None
        await cancel_and_wait(self._reader)

    # --- pushes -------------------------------------------------------------------------

    def deliver(self, pos: int, text: str) -> None:
        """A pushed message at inbox position ``pos``: sent in order, repeats dropped."""
        out = self._out
        if out.closing:
            return
        cursor = self._cursor
        if not self._merge and cursor.next_live(pos):  # in order, nothing pending or read
            out.push(text)
            return
        self._emit(None, cursor.live(pos, text))
        if cursor.wants_fill:
            self._want_fill()

    def own(self, pos: int) -> None:
        """This connection sent the message at ``pos`` (it got type 10, not the message)."""
        if self._out.closing:
            return
        cursor = self._cursor
        self._emit(None, cursor.own(pos))
        if cursor.wants_fill:
            self._want_fill()

    def own_group(self, group: int, pos: int) -> None:
        """This connection sent the post at ``pos`` in ``group``'s stream (it got type 10)."""
        self.deliver_group(group, pos, "", own=True)

    def deliver_group(self, group: int, pos: int, text: str, *, own: bool = False) -> None:
        """A post at ``pos`` in large group ``group``'s stream (``own``: this connection
        sent it and got type 10): in order per stream, repeats dropped."""
        cursor = self._groups.get(group)
        if self._out.closing:
            return
        if cursor is None:
            if own:
                pending = self._pending_own
                if pending is None:
                    pending = self._pending_own = {}
                mine = pending.setdefault(group, [])
                if len(mine) < self._hold_max and len(pending) <= self._hold_max:
                    mine.append(pos)
            return
        self._emit(group, cursor.own(pos) if own else cursor.live(pos, text))
        if cursor.wants_fill:
            self._want_fill()

    def _want_fill(self) -> None:
        if self._reader is not None or self._fill_timer is not None:
            return  # a running reader looks again when it is done
        delay = max(self._fill_delay, self._retry_at - self._loop.time())
        self._fill_timer = self._loop.call_later(delay, self._kick)

    def _kick(self) -> None:
        self._fill_timer = None
        if self._reader is None and not self._out.closing and self._wants_fill():
            self._reader = self._loop.create_task(self._read_loop())

    # --- replay -----------------------------------------------------------------------

    def start(self) -> None:
        """Begin the connect replay: after the acknowledged position, with an end marker."""
        self._requests.append(_ReplayRequest(None, connect=True))
        self._start_reader()

    def catch_up(self, end: int | None = None) -> None:
        """Read the inbox and the large groups' streams to their ends (after a hub link came
        back or was lost: pushes may be missed); ``end``: the inbox's newest position, when
        known: the inbox is not read when this connection has it already (the groups'
        streams always are)."""
        cursor = self._cursor
        self._syncs += 1
        has_inbox = end is not None and cursor.ready and cursor.last >= end
        cursors = list(self._groups.values()) if has_inbox else [cursor, *self._groups.values()]
        if not cursors:
            return
        for each in cursors:
            each.sync()
        if self._wants_fill():
            self._want_fill()

    def rebase(self) -> None:
        """The store lost its data and numbers inboxes from 1 again: start over from 0."""
        self._syncs += 1
        for cursor in (self._cursor, *self._groups.values()):
            cursor.rebase()
        if self._wants_fill():
            self._want_fill()

    def _start_reader(self) -> None:
        if self._reader is None and not self._out.closing:
            if self._fill_timer is not None:
                self._fill_timer.cancel()
                self._fill_timer = None
            self._reader = self._loop.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        """The one task that reads the inbox for this connection: replays, then fills."""
        request: _ReplayRequest | None = None
        try:
            while not self._out.closing:
                if self._requests:
                    request = self._requests[0]
                    if request.regroup:
                        await self._regroup()
                    elif request.connect:
                        await self._connect()
                    else:
                        await self._replay(request)
                    self._requests.pop(0)
                    request = None
                elif self._loop.time() < self._retry_at:
                    break  # a read failed a moment ago: the fills wait (see finally)
                elif self._cursor.wants_fill:
                    self._metrics.hole_fill()
                    if await self._fill():
                        self._out.push(frames.encode_replay_end(self._cursor.last, truncated=True))
                else:
                    group = next((g for g, c in self._groups.items() if c.wants_fill), None)
                    if group is None:
                        break
                    self._metrics.hole_fill()
                    if await self._fill_group(group):
                        last = self._groups[group].last
                        self._out.push(frames.encode_replay_end(last, truncated=True, group=group))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _replay_failed.hit(exc=exc)
            self._retry_at = self._loop.time() + 1.0
            if request is not None and request.connect and self._cursor.ready:
                self._requests.clear()
                self._out.close(CLOSE_INTERNAL, "replay failed; connect again")
            elif request is not None and not request.regroup:
                self._requests.clear()
                self._out.push(
                    frames.encode_error(frames.INTERNAL, "replay failed; ask again with type 14")
                )
        finally:
            self._reader = self._merge = None  # (a failed connect replay: read again)
            if not self._out.closing:
                if not self._cursor.ready and not self._requests:
                    # The connect replay failed: try it again (the client may also ask).
                    self._requests.append(_ReplayRequest(None, connect=True))
                    self._fill_timer = self._loop.call_later(1.0, self._retry_connect)
                elif self._wants_fill():
                    self._want_fill()
                if request is not None and request.regroup:
                    # It failed (still queued): again in 1-2 s (an outage fails them all).
                    if request not in self._requests:
                        self._requests.append(request)
                    if self._fill_timer is not None:
                        self._fill_timer.cancel()
                    delay = 1.0 + random.random()
                    self._fill_timer = self._loop.call_later(delay, self._retry_connect)

    def _retry_connect(self) -> None:
        self._fill_timer = None
        if self._reader is None and not self._out.closing and self._requests:
            self._reader = self._loop.create_task(self._read_loop())

    async def _connect(self) -> None:
        """The connect replay: the inbox and every large group's stream after the user's
        positions, merged in time order, then the end marker."""
        self._metrics.replay("connect")
        syncs = self._syncs
        if self._ack_rounds is not None:
            await self._ack_rounds.written(self._user)
        async with self._slots:
            opening = await self._store.opening(self._user)
        # A user in no group has no stream to follow (nor left one: none to drop).
        grouped = opening.in_groups or self._groups or self._pending_own
        starts = await self._follow(connecting=True) if grouped else {}
        buffers: dict[int | None, collections.deque[str]] = {
            None: collections.deque(self._cursor.start(opening.acked))
        }
        if syncs == self._syncs:
            # Nothing after the acknowledged position: no read (an empty inbox's replay
            # is this one round trip).
            self._cursor.ends_at(opening.inbox_end)
        for group, pos in starts.items():
            buffers[group] = collections.deque(self._groups[group].start(pos))
        if self._starts is not None:
            self._starts.update(starts)
        trimmed, sent, self._merge = False, 0, buffers
        while not self._out.closing:
            for gone in [k for k in buffers if k is not None and k not in self._groups]:
                del buffers[gone]  # the user left that group meanwhile
            # Every stream with more to read and nothing buffered reads a page first, so
            # the head picked next is the oldest of them all.
            need = [
                k for k, buf in buffers.items() if not buf and self._stream_cursor(k).wants_fill
            ]
            if need:
                cut, later = await self._read_pages(need, buffers)
                trimmed = trimmed or cut
                for group in later:
                    # Its node did not answer: this replay goes on without it, and its
                    # posts follow once a read (a second or more later) gets them.
                    del buffers[group]
                continue
            heads = [
                (frames.order_of(buf[0]), i, k) for i, (k, buf) in enumerate(buffers.items()) if buf
            ]
            if not heads:
                break
            _, _, key = min(heads)
            self._out.push(buffers[key].popleft())
            sent += 1
            if sent % self._page == 0:
                await self._out.room()
        self._merge = None
        # Each followed group's start: a client that has shown less asks for the rest.
        followed = [(g, p) for g, p in (self._starts or {}).items() if g in self._groups]
        if self._starts:
            self._starts = {}
        end = frames.encode_replay_end(self._cursor.last, truncated=trimmed, starts=followed)
        self._out.push(end)

    async def _replay(self, request: _ReplayRequest) -> None:
        """A replay the client asked for (type 14), of the inbox or of a group's stream."""
        self._metrics.replay("asked")
        group = request.group
        cursor = self._cursor if group is None else self._groups.get(group)
        if cursor is None:  # the user left the group meanwhile
            self._out.push(frames.encode_replay_end(request.after or 0, group=group))
            return
        acked = 0
        if group is None:
            async with self._slots:
                acked = await self._store.acked(self._user)
            if not cursor.ready:
                for frame in cursor.start(acked):  # the connect replay had failed
                    self._out.push(frame)
        after = acked if request.after is None else request.after
        if group is not None:
            # Never from before the user joined: a replay asked from earlier starts there.
            async with self._slots:
                [joined] = await self._store.memberships([(group, self._user)])
            if joined.joined is not None and joined.joined > after:
                after = acked = joined.joined
        position, trimmed = after, False
        page_size = self._page
        budget = self._budget
        if budget is None:
            limit = self._budget_max
            budget = self._budget = TokenBucket(limit / 60.0, limit, self._loop.time())
        while not self._out.closing:
            now = self._loop.time()
            if not budget.allow(now, page_size):
                wait = budget.wait(now, page_size)
                self._out.push(
                    frames.encode_error(
                        frames.RATE_LIMITED,
                        f"replay budget used up; ask again from here in {wait:.0f} s",
                    )
                )
                break
            span: Membership | None = None
            if group is None:
                page, complete = await self._read(position)
            else:
                page, span = await self._group_page(group, position, page_size)
                complete = len(page.entries) < page_size
            entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
            # Trimmed means: gone before the user got it; what was acknowledged was got.
            result = cursor.replayed(max(position, acked), entries, page.last, complete=complete)
            send = result.send if span is None else members_only(entries, result.send, span)
            for frame in send:
                self._out.push(frame)
            if span is not None and not span.member:  # left; the notice may not have come
                self.regroup(group)
                break
            trimmed = trimmed or result.trimmed
            if entries:
                position = entries[-1][0]
            if complete:
                if trimmed and position < page.last:
                    position = page.last
                break
        self._out.push(frames.encode_replay_end(position, truncated=trimmed, group=group))
