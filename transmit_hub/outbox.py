"""One gateway's bounded outbound queue, drained by that gateway's own writer task.

The hub's reader tasks :meth:`Outbox.offer` encoded deliveries (and notices for the
gateway's own maps) without ever waiting, so a slow or stuck gateway can never stall
another gateway's stream. The writer takes everything pending, up to a count and a
byte budget, as one frame per write: batches form by themselves while a write is in
flight, and an idle gateway gets each delivery at once.

Full policy: when ``capacity`` items are waiting, or the item would take the bytes held
(below) past ``max_bytes`` (an item always fits in an empty outbox, so one delivery
larger than the budget still goes), :meth:`offer` refuses the item and returns
``False``: a gateway that reads slowly or not at all holds a bounded amount of the
hub's memory, however big the messages sent to it. The hub then tells the *sender* of
that map, with an Undeliverable notice of reason ``QUEUE_FULL`` naming the message and
users, so nothing is dropped silently; the message itself is safe in each recipient's
inbox (the inbox is the truth, the push is the fast path). Notices go to the sender's
own outbox under the same bound; when that is full too, the hub counts the lost notice
and logs it (see :mod:`transmit_hub.forwarding`).

What an outbox holds (:attr:`Outbox.held_bytes`, counted against ``max_bytes`` and the
shared budget) is the items waiting *and* the frame being written: :meth:`Outbox.take`
moves the items it returns into that frame, still counted, and :meth:`Outbox.written`
gives them back once the write has completed. A gateway that stops reading holds the
writer in a write (HTTP/2 flow control) for up to ``--gateway-write-timeout``, with a
frame of up to 4 MiB: that frame is the hub's memory too. "Empty" (the outbox that always
takes one item) means holding nothing, waiting or being written.

Across gateways (:class:`ByteBudget`, the hub's ``--queue-bytes-total``): the outboxes of
one hub share one budget of the bytes they hold together, so that many gateways reading
slowly at once (a network brown-out) cannot together hold ``--max-gateways`` times
``--queue-bytes``. An item that would take the total past it is refused as a full outbox
refuses it, except that an empty outbox always takes one item, so every gateway keeps
making progress: the total passes the budget by at most one item per gateway whose
outbox was empty. Every change of an outbox's bytes moves the shared total with it (one
add per offer, one subtract per frame written; a take moves nothing); an outbox that is
given up holding bytes (its gateway detached, or replaced: what waits moves to the new
outbox, the frame being written stays) gives them back with :meth:`Outbox.discard`, and
a write that completes after that gives back nothing more.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .errors import ConfigError

__all__ = ["UNLIMITED", "ByteBudget", "Outbox"]

UNLIMITED = 1 << 62
"""A budget limit no hub reaches: the default of an outbox that shares no budget."""


class ByteBudget:
    """The bytes a set of outboxes hold together, and the most they may hold.

    A plain counter, no asyncio: the outboxes sharing it add and subtract their own
    bytes (see the module docstring); ``total`` is always the sum of their
    ``held_bytes`` (waiting, and in the frames being written).
    """

    __slots__ = ("limit", "refused", "total", "writing")

    def __init__(self, limit: int = UNLIMITED) -> None:
        if limit < 1:
            raise ConfigError("the byte budget must be at least 1")
        self.limit = limit
        """Most bytes held by all the outboxes (one item always fits an empty one)."""
        self.total = 0
        """Bytes held by all the outboxes now: waiting, and in the frames being written."""
        self.writing = 0
        """Of ``total``, the bytes in the frames being written (the sum of ``writing_bytes``)."""
        self.refused = 0
        """Deliveries refused because they would have taken ``total`` past ``limit``."""


class Outbox:
    """A bounded FIFO of encoded ``Delivery`` entries and ``Undeliverable`` notices."""

    __slots__ = (
        "_budget",
        "_bytes",
        "_capacity",
        "_closed",
        "_deliveries",
        "_empty",
        "_max_bytes",
        "_notices",
        "_ready",
        "_writing",
    )

    def __init__(
        self,
        capacity: int,
        max_bytes: int = 64 * 1024 * 1024,
        budget: ByteBudget | None = None,
    ) -> None:
        """``budget``: the bytes this outbox shares with others (default: its own, unlimited)."""
        if capacity < 1:
            raise ConfigError("capacity must be at least 1")
        if max_bytes < 1:
            raise ConfigError("max_bytes must be at least 1")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._budget = budget if budget is not None else ByteBudget()
        self._bytes = 0
        """Bytes held: waiting, and in the frames taken and not yet written."""
        self._writing = 0
        """Bytes of the frames taken and not yet :meth:`written`."""
        self._deliveries: deque[bytes] = deque()
        self._notices: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._deliveries) + len(self._notices)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def waiting_bytes(self) -> int:
        """The bytes of the items waiting (not yet taken)."""
        return self._bytes - self._writing

    @property
    def writing_bytes(self) -> int:
        """The bytes of the frame being written: taken, and not yet :meth:`written`."""
        return self._writing

    @property
    def held_bytes(self) -> int:
        """The bytes this outbox holds, waiting and being written: what ``max_bytes`` and
        the shared budget bound."""
        return self._bytes

    @property
    def budget(self) -> ByteBudget:
        """The byte budget this outbox shares."""
        return self._budget

    @property
    def closed(self) -> bool:
        return self._closed

    def offer(self, entry: bytes) -> bool:
        """Queue one encoded delivery entry; ``False`` (nothing queued) when full (this
        outbox, or the shared budget: counted in ``budget.refused``) or closed."""
        deliveries = self._deliveries
        if self._closed or len(deliveries) + len(self._notices) >= self._capacity:
            return False
        n = len(entry)
        size = self._bytes + n
        budget = self._budget
        total = budget.total + n
        if (size > self._max_bytes or total > budget.limit) and self._bytes:
            # Full (an empty outbox always takes one item): this one, or the budget.
            if size <= self._max_bytes:
                budget.refused += 1
            return False
        self._bytes = size
        budget.total = total
        deliveries.append(entry)
        if not self._ready.is_set():
            self._ready.set()
            self._empty.clear()
        return True

    def offer_notice(self, notice: bytes) -> bool:
        """Queue one encoded notice; ``False`` (nothing queued) when full (this outbox or
        the shared budget) or closed."""
        if self._closed or len(self._deliveries) + len(self._notices) >= self._capacity:
            return False
        n = len(notice)
        budget = self._budget
        if self._bytes and (self._bytes + n > self._max_bytes or budget.total + n > budget.limit):
            return False
        self._bytes += n
        budget.total += n
        self._notices.append(notice)
        if not self._ready.is_set():
            self._ready.set()
            self._empty.clear()
        return True

    def take(self, max_items: int, max_bytes: int) -> tuple[list[bytes], list[bytes]]:
        """Remove and return what is pending: ``(deliveries, notices)``, oldest first.

        At most ``max_items`` items; stops before ``max_bytes`` is passed, except that the
        first item is always taken (so one big delivery still goes out). Their bytes stay
        held, as the frame being written, until :meth:`written`.
        """
        deliveries = self._deliveries
        notices = self._notices
        taken_notices: list[bytes] = []
        size = 0
        while notices and len(taken_notices) < max_items:
            n = notices[0]
            if taken_notices and size + len(n) > max_bytes:
                break
            size += len(n)
            taken_notices.append(notices.popleft())
        room = max_items - len(taken_notices)
        if not taken_notices and len(deliveries) <= room:
            # The common case: everything pending fits in one frame by count.
            taken = list(deliveries)
            total = sum(map(len, taken))
            if total <= max_bytes or len(taken) == 1:
                deliveries.clear()
                self._writing += total
                self._budget.writing += total
                self._after_take()
                return taken, taken_notices
        taken = []
        while deliveries and len(taken) < room:
            d = deliveries[0]
            if (taken or taken_notices) and size + len(d) > max_bytes:
                break
            size += len(d)
            taken.append(deliveries.popleft())
        self._writing += size
        self._budget.writing += size
        self._after_take()
        return taken, taken_notices

    def written(self) -> None:
        """The frame taken has been written: give its bytes back (to this outbox's bound
        and the shared budget). Once per frame, whatever its size; nothing after
        :meth:`discard` (which gave them back)."""
        n = self._writing
        if n:
            self._writing = 0
            self._bytes -= n
            budget = self._budget
            budget.total -= n
            budget.writing -= n
            if not self._deliveries and not self._notices:
                self._empty.set()

    def _after_take(self) -> None:
        if not self._deliveries and not self._notices:
            if not self._closed:
                self._ready.clear()
            if not self._writing:
                self._empty.set()

    async def wait(self) -> None:
        """Wait until something is pending or the outbox is closed."""
        await self._ready.wait()

    async def wait_empty(self) -> None:
        """Wait until nothing is pending and the frame taken last is written (or the
        outbox discarded)."""
        await self._empty.wait()

    def poke(self) -> None:
        """Wake the writer with nothing new to take (it has something else to write)."""
        self._ready.set()

    def close(self) -> None:
        """Refuse further offers and wake the writer; what is pending stays takeable."""
        self._closed = True
        self._ready.set()

    def discard(self) -> None:
        """Close, drop what is pending and give back every byte held, the frame being
        written included: the outbox of a gateway that is gone (detached, or replaced after
        :meth:`adopt`). Idempotent; a :meth:`written` after it gives back nothing."""
        self.close()
        self._deliveries.clear()
        self._notices.clear()
        budget = self._budget
        budget.total -= self._bytes
        budget.writing -= self._writing
        self._bytes = self._writing = 0
        self._after_take()

    def adopt(self, other: Outbox) -> None:
        """Move ``other``'s pending items here, ahead of anything newer (up to capacity and
        ``max_bytes``; what does not fit stays in ``other``, to be dropped with it by
        :meth:`discard`). Bytes already waiting: the budget is not checked again, only
        moved when the two outboxes do not share one. The frame ``other``'s writer is
        writing stays held by ``other`` until it is written or discarded."""
        moved = 0
        for mine, theirs in (
            (self._notices, other._notices),
            (self._deliveries, other._deliveries),
        ):
            while theirs and len(self) < self._capacity:
                size = len(theirs[0])
                if self._bytes + size > self._max_bytes and self._bytes:
                    break
                self._bytes += size
                other._bytes -= size
                moved += size
                mine.append(theirs.popleft())
        other._budget.total -= moved
        self._budget.total += moved
        if len(self):
            self._ready.set()
            self._empty.clear()
        other._after_take()
