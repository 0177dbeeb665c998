"""The inbox reads of one connection: the connect replay, the replays a client asks
for, and hole fills, around the pure :class:`~im_gateway.cursor.Cursor`.

A :class:`Replayer` is the I/O half of a session's position logic: the cursor decides
what to send and whether to read; the replayer reads the store (one task per connection
at most, pages of ``replay_page`` entries, the store calls bounded by the gateway-wide
``slots``), and hands every frame to its :class:`Outlet` (the session's socket writer).

- A hole is read after ``fill_delay`` seconds, so pushes that only arrive out of order
  cost nothing; after a failed read, not before a second.
- The connect replay ends with ``{"type":14,...}`` (``truncated`` when positions the
  user had not acknowledged were trimmed). A failed one is answered ``internal`` and tried
  again a second later, unless the client asks (type 14) first.
- A replay the client asks for resends everything after its position, one at a time per
  connection, within ``replay_budget`` entries a minute; beyond it, ``rate_limited`` and an
  end marker at the position reached.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from transmit_hub.types import UserId

from . import frames
from .cursor import Cursor
from .metrics import GatewayMetrics, NullMetrics
from .ratelimit import TokenBucket
from .store import InboxPage, Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

_replay_failed = Throttled(logger, "inbox reads failed %d times (replays and hole fills)")


class Outlet(Protocol):
    """Where a replayer's frames go (a session)."""

    @property
    def closing(self) -> bool: ...

    def push(self, text: str) -> bool: ...

    async def room(self) -> None:
        """Wait until the frames already pushed have drained (flow control for pages)."""
        ...


@dataclass(frozen=True, slots=True)
class _ReplayRequest:
    """A replay with an end marker: on connect (``after`` None: from the acknowledged
    position) or asked for by the client (type 14)."""

    after: int | None
    connect: bool = False


class Replayer:
    """One connection's inbox reads (see the module docstring)."""

    __slots__ = (
        "_budget",
        "_cursor",
        "_fill_delay",
        "_fill_timer",
        "_loop",
        "_metrics",
        "_out",
        "_page",
        "_reader",
        "_requests",
        "_retry_at",
        "_slots",
        "_store",
        "_user",
    )

    def __init__(
        self,
        out: Outlet,
        user: UserId,
        *,
        store: Store,
        slots: asyncio.Semaphore,
        replay_page: int,
        held_max: int,
        fill_delay: float,
        replay_budget: int,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._out = out
        self._user = user
        self._store = store
        self._slots = slots
        self._page = replay_page
        self._fill_delay = fill_delay
        self._loop = asyncio.get_running_loop()
        self._budget = TokenBucket(replay_budget / 60.0, replay_budget, self._loop.time())
        self._cursor: Cursor[str] = Cursor(hold_max=held_max)
        self._requests: list[_ReplayRequest] = []
        self._reader: asyncio.Task[None] | None = None
        self._fill_timer: asyncio.TimerHandle | None = None
        self._retry_at = 0.0

    @property
    def replaying(self) -> bool:
        """True while a replay or a hole fill is running or queued."""
        return self._reader is not None or bool(self._requests)

    @property
    def position(self) -> int:
        """Everything up to this inbox position is delivered on this connection."""
        return self._cursor.last

    def ask(self, after: int | None) -> bool:
        """The client asks for what came after ``after`` (type 14); False while one of its
        replays runs (one at a time)."""
        if self._requests and self._reader is not None:
            return False
        # (A connect replay waiting to be retried gives way: this one starts the
        # connection's position too.)
        self._requests[:] = [_ReplayRequest(after)]
        self._start_reader()
        return True

    async def close(self) -> None:
        """Stop reading; idempotent."""
        if self._fill_timer is not None:
            self._fill_timer.cancel()
            self._fill_timer = None
        await cancel_and_wait(self._reader)

    # --- pushes -------------------------------------------------------------------------

    def live(self, pos: int, text: str) -> None:
        """A pushed message at inbox position ``pos``: sent in order, repeats dropped."""
        if self._out.closing:
            return
        cursor = self._cursor
        for frame in cursor.live(pos, text):
            self._out.push(frame)
        if cursor.wants_fill:
            self._want_fill()

    def own(self, pos: int) -> None:
        """This connection sent the message at ``pos`` (it got type 10, not the message)."""
        if self._out.closing:
            return
        cursor = self._cursor
        for frame in cursor.own(pos):
            self._out.push(frame)
        if cursor.wants_fill:
            self._want_fill()

    def _want_fill(self) -> None:
        if self._reader is not None or self._fill_timer is not None:
            return  # a running reader looks again when it is done
        delay = max(self._fill_delay, self._retry_at - self._loop.time())
        self._fill_timer = self._loop.call_later(delay, self._kick)

    def _kick(self) -> None:
        self._fill_timer = None
        if self._reader is None and not self._out.closing and self._cursor.wants_fill:
            self._reader = self._loop.create_task(self._read_loop())

    # --- replay -----------------------------------------------------------------------

    def start(self) -> None:
        """Begin the connect replay: after the acknowledged position, with an end marker."""
        self._requests.append(_ReplayRequest(None, connect=True))
        self._start_reader()

    def catch_up(self) -> None:
        """Read the inbox to its end (after the hub link came back: pushes may be missed)."""
        self._cursor.sync()
        if self._cursor.wants_fill:
            self._want_fill()

    def rebase(self) -> None:
        """The store lost its data and numbers inboxes from 1 again: start over from 0."""
        self._cursor.rebase()
        if self._cursor.wants_fill:
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
                    await self._replay(request)
                    self._requests.pop(0)
                    request = None
                elif self._cursor.wants_fill:
                    self._metrics.hole_fill()
                    if await self._fill():
                        self._out.push(frames.encode_replay_end(self._cursor.last, truncated=True))
                else:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _replay_failed.hit(exc=exc)
            self._retry_at = self._loop.time() + 1.0
            if request is not None:
                self._requests.clear()
                self._out.push(
                    frames.encode_error(frames.INTERNAL, "replay failed; ask again with type 14")
                )
        finally:
            self._reader = None
            if not self._out.closing:
                if not self._cursor.ready and not self._requests:
                    # The connect replay failed: try it again (the client may also ask).
                    self._requests.append(_ReplayRequest(None, connect=True))
                    self._fill_timer = self._loop.call_later(1.0, self._retry_connect)
                elif self._cursor.wants_fill:
                    self._want_fill()

    def _retry_connect(self) -> None:
        self._fill_timer = None
        if self._reader is None and not self._out.closing and self._requests:
            self._reader = self._loop.create_task(self._read_loop())

    async def _read(self, after: int) -> tuple[InboxPage, bool]:
        limit = self._page
        async with self._slots:
            page = await self._store.read_inbox(self._user, after, limit)
        await self._out.room()
        return page, len(page.entries) < limit

    async def _fill(self) -> bool:
        """Read one page after the cursor; True when positions turned out trimmed."""
        cursor = self._cursor
        page, complete = await self._read(cursor.begin_fill())
        entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
        result = cursor.filled(entries, page.last, complete=complete)
        for frame in result.send:
            self._out.push(frame)
        return result.trimmed

    async def _replay(self, request: _ReplayRequest) -> None:
        cursor = self._cursor
        self._metrics.replay("connect" if request.connect else "asked")
        if request.connect:
            async with self._slots:
                acked = await self._store.acked(self._user)
            for frame in cursor.start(acked):
                self._out.push(frame)
            trimmed = False
            while cursor.wants_fill and not self._out.closing:
                trimmed = await self._fill() or trimmed
            self._out.push(frames.encode_replay_end(cursor.last, truncated=trimmed))
            return
        async with self._slots:
            acked = await self._store.acked(self._user)
        if not cursor.ready:
            for frame in cursor.start(acked):  # the connect replay had failed
                self._out.push(frame)
        after = acked if request.after is None else request.after
        position, trimmed = after, False
        page_size = self._page
        while not self._out.closing:
            now = self._loop.time()
            if not self._budget.allow(now, page_size):
                wait = self._budget.wait(now, page_size)
                self._out.push(
                    frames.encode_error(
                        frames.RATE_LIMITED,
                        f"replay budget used up; ask again from here in {wait:.0f} s",
                    )
                )
                break
            page, complete = await self._read(position)
            entries = [(e.position, frames.encode_message(e.message, e.seq)) for e in page.entries]
            # Trimmed means: gone before the user got it; what was acknowledged was got.
            result = cursor.replayed(max(position, acked), entries, page.last, complete=complete)
            for frame in result.send:
                self._out.push(frame)
            trimmed = trimmed or result.trimmed
            if entries:
                position = entries[-1][0]
            if complete:
                if trimmed and position < page.last:
                    position = page.last
                break
        self._out.push(frames.encode_replay_end(position, truncated=trimmed))
