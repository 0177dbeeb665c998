"""Where one connection stands in its user's inbox: the pure core of gap-free delivery.

Inbox positions are consecutive (1, 2, 3, ...), so a connection that has delivered
everything up to ``last`` knows that ``last + 1`` comes next. A :class:`Cursor` is fed
what happens to one connection and answers what to send and whether to read the inbox;
it does no I/O (the session does), so it is tested without an event loop, by a
hypothesis state machine among others (tests/im_gateway/test_cursor.py).

Inputs:

- :meth:`Cursor.live`: a pushed message at a position (from this gateway's own batch, or
  from a hub). The next one is sent at once; a repeat is dropped; one beyond a hole is
  held (bounded) and the cursor *wants a fill*: read the inbox after ``last``.
- :meth:`Cursor.own`: a position the client already has (a message this connection sent
  itself: it gets the type 10 answer, not the message). It moves ``last`` like a
  delivery, without a frame.
- :meth:`Cursor.start`: the connect replay begins after the acknowledged position;
  until then everything is held.
- :meth:`Cursor.sync`: read to the inbox's end even without a known hole (after the hub
  link was down, when pushes may have been missed with nothing after them).
- :meth:`Cursor.begin_fill` / :meth:`Cursor.filled`: a page read from the inbox after
  ``last`` (:meth:`Cursor.unfilled`: the read failed, read again later). Its entries fill the hole in order; positions the inbox no longer holds were
  trimmed (said, not hidden: :attr:`Fill.trimmed`); a held position the inbox never had
  (a hub may send anything) is dropped once a read that started after it arrived shows
  the inbox ends before it.
- :meth:`Cursor.replayed`: a page of a replay the client asked for (type 14 after X):
  every entry is sent, whatever was sent before, and ``last`` moves past what is new.

When the store loses its data (a Redis restarted without persistence numbers inboxes
from 1 again; the gateway notices by the store's epoch, see
:meth:`~im_gateway.store.Store.beacon`), :meth:`Cursor.rebase` starts over from 0, so
new messages are not dropped as repeats.

Invariant, for any order of inputs: the positions sent by ``live``, ``own`` and
``filled`` rise strictly and skip only positions the inbox had trimmed, so a client may
always acknowledge the highest seq it has seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
"""What is sent for a position (the session uses the encoded frame)."""


@dataclass(slots=True)
class Fill(Generic[T]):
    """The outcome of a page applied to the cursor."""

    send: list[T] = field(default_factory=list)
    """Frames to write, in order."""
    trimmed: bool = False
    """Positions the client had not seen were gone from the inbox (length or age trim)."""


class Cursor(Generic[T]):
    """One connection's position in its user's inbox (see the module docstring)."""

    __slots__ = ("_epoch", "_held", "_hold_max", "_known", "_own", "_sync", "last", "ready")

    def __init__(self, *, hold_max: int = 1024) -> None:
        self.last = 0
        """Every position up to here is delivered on this connection, or was the client's
        own, or was trimmed before it could be."""
        self.ready = False
        """False until :meth:`start`: the connect replay has not begun, everything is held."""
        self._hold_max = hold_max
        self._held: dict[int, tuple[T, int]] | None = None
        """Position -> (frame, fill epoch at arrival), for positions beyond a hole (made
        by the first such position: most connections never hold one)."""
        self._own: dict[int, int] | None = None
        """Position -> fill epoch at arrival, for the client's own positions beyond a hole
        (made by the first)."""
        self._known = 0
        """The highest position a live push or an own message claimed."""
        self._sync = False
        self._epoch = 0
        """Fills begun so far."""

    # --- inputs -------------------------------------------------------------------------

    def start(self, acked: int) -> list[T]:
        """The connect replay begins: the client has everything up to ``acked``."""
        self.ready = True
        self._sync = True
        self.last = max(self.last, acked)
        return self._drain()

    def live(self, pos: int, item: T) -> list[T]:
        """A pushed message at ``pos``: what to send now (the hole, if any, wants a fill)."""
        if pos <= self.last and self.ready:
            return []
        if pos == self.last + 1 and self.ready:
            self.last = pos
            if not self._held and not self._own:
                return [item]  # the normal path: the next one, nothing pending
            self._forget_upto(pos)
            return [item, *self._drain()]
        held = self._held
        if held is None:
            held = self._held = {}
        if pos not in held and len(held) < self._hold_max:
            held[pos] = (item, self._epoch)
        self._known = max(self._known, pos)
        return []

    def next_live(self, pos: int) -> bool:
        """The common case of :meth:`live`, without a list: True when ``pos`` is the next
        position and nothing is pending (nothing held, no read wanted before or after):
        ``last`` moves on and the caller sends the item. False changes nothing: call
        :meth:`live` (tests/im_gateway/test_cursor.py checks the two agree)."""
        if (
            pos == self.last + 1
            and self.ready
            and not self._held
            and not self._own
            and not self._sync
            and self._known <= pos
        ):
            self.last = pos
            return True
        return False

    def own(self, pos: int) -> list[T]:
        """The client has ``pos`` already (it sent that message): what to send now."""
        if pos <= self.last and self.ready:
            return []
        if pos == self.last + 1 and self.ready:
            self.last = pos
            self._forget_upto(pos)
            return self._drain()
        own = self._own
        if own is None:
            own = self._own = {}
        if len(own) < self._hold_max:
            own[pos] = self._epoch
        # Beyond the bound the fill sends the client its own message: a repeat it drops
        # by message id, never a hole.
        self._known = max(self._known, pos)
        return []

    def sync(self) -> None:
        """Read to the inbox's end at the next chance, even with no known hole."""
        self._sync = True

    def ends_at(self, inbox_end: int) -> bool:
        """After :meth:`start`: the inbox's newest position is ``inbox_end`` (read with the
        acknowledged position, and no :meth:`sync` asked for since). When that is not
        beyond :attr:`last` and nothing is held, there is nothing to read: no fill is
        wanted, and True. (Anything stored later comes as a push.)"""
        if not self.ready or inbox_end > self.last or self._held or self._own:
            return False
        if self._known > self.last:
            return False
        self._sync = False
        return True

    def rebase(self) -> None:
        """The store lost its data (a Redis restarted without persistence) and numbers
        inboxes from 1 again: start over from 0 and read, so new messages are not taken
        for repeats."""
        self.last = 0
        self._held = self._own = None
        self._known = 0
        self._sync = True

    @property
    def wants_fill(self) -> bool:
        """True when the inbox should be read after :attr:`last`."""
        return self.ready and (self._sync or self._known > self.last)

    def begin_fill(self) -> int:
        """A read of the inbox is about to start; returns the position to read after."""
        self._epoch += 1
        self._sync = False
        return self.last

    def unfilled(self) -> None:
        """The read :meth:`begin_fill` announced failed (or was left for later): nothing
        of it is applied, :attr:`last` stays, and the inbox is read again at the next
        chance (the read it replaced may have been a :meth:`sync`, which no hole would
        bring back)."""
        self._sync = True

    def filled(
        self, entries: Sequence[tuple[int, T]], inbox_last: int, *, complete: bool
    ) -> Fill[T]:
        """Apply a page read after the position :meth:`begin_fill` returned.

        ``entries`` are (position, frame) in rising order; ``inbox_last`` is the inbox's
        newest position, read *before* the entries (so every position up to it that the
        page lacks was trimmed); ``complete``: the page reached the end of the inbox.
        """
        out = Fill[T]()
        for pos, item in entries:
            if pos > self.last + 1:
                out.send += self._drain()  # held frames the inbox no longer has
            if pos <= self.last:
                continue
            if pos > self.last + 1:
                out.trimmed = True
            self.last = pos
            if self._held:
                self._held.pop(pos, None)
            if not self._own or self._own.pop(pos, None) is None:
                out.send.append(item)
            self._forget_upto(pos)
        if complete:
            if self.last < inbox_last:
                out.trimmed = True  # the rest is gone from the inbox
                self.last = inbox_last
                self._forget_upto(inbox_last)
            self._drop_phantoms(max(inbox_last, self.last))
        else:
            self._sync = True  # more to read
        out.send += self._drain()
        self._known = max((*(self._held or ()), *(self._own or ()), self.last))
        return out

    def replayed(
        self, after: int, entries: Sequence[tuple[int, T]], inbox_last: int, *, complete: bool
    ) -> Fill[T]:
        """Apply a page of a replay the client asked for, read after ``after``.

        Every entry is sent (the client asked for them again); what is new moves
        :attr:`last` on and settles what was held for it.
        """
        out = Fill[T]()
        expected = after + 1
        for pos, item in entries:
            if pos > expected:
                out.trimmed = True
            expected = max(expected, pos + 1)
            out.send.append(item)
            if pos > self.last:
                self.last = pos
                self._forget_upto(pos)
        if complete:
            if expected <= inbox_last:
                out.trimmed = True
            self._drop_phantoms(max(inbox_last, self.last))
        out.send += self._drain()
        self._known = max((*(self._held or ()), *(self._own or ()), self.last))
        return out

    # --- internals ----------------------------------------------------------------------

    def _drain(self) -> list[T]:
        """Send what is held from ``last + 1`` on, as far as it runs without a hole."""
        out: list[T] = []
        if not self.ready:
            return out
        self._forget_upto(self.last)
        while True:
            nxt = self.last + 1
            held = self._held.pop(nxt, None) if self._held else None
            if held is not None:
                out.append(held[0])
            elif not self._own or self._own.pop(nxt, None) is None:
                return out
            self.last = nxt

    def _forget_upto(self, pos: int) -> None:
        """Drop what is held at or below ``pos`` (already sent, or trimmed)."""
        if self._held:
            for p in [p for p in self._held if p <= pos]:
                del self._held[p]
        if self._own:
            for p in [p for p in self._own if p <= pos]:
                del self._own[p]

    def _drop_phantoms(self, inbox_end: int) -> None:
        """Drop held positions beyond the inbox's end that arrived before this read began:
        the inbox holds a message before it is pushed, so those were never stored."""
        epoch = self._epoch
        if self._held:
            for p in [p for p, (_, e) in self._held.items() if p > inbox_end and e < epoch]:
                del self._held[p]
        if self._own:
            for p in [p for p, e in self._own.items() if p > inbox_end and e < epoch]:
                del self._own[p]
