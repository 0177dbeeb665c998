"""One gateway's bounded outbound queue, drained by that gateway's own writer task.

The hub's reader tasks :meth:`Outbox.offer` encoded deliveries (and notices for the
gateway's own maps) without ever waiting, so a slow or stuck gateway can never stall
another gateway's stream. The writer takes everything pending, up to a count and a
byte budget, as one frame per write: batches form by themselves while a write is in
flight, and an idle gateway gets each delivery at once.

Full policy: when ``capacity`` items are waiting, :meth:`offer` refuses the item and
returns ``False``. The hub then tells the *sender* of that map, with an Undeliverable
notice of reason ``QUEUE_FULL`` naming the message and users, so nothing is dropped
silently; the message itself is safe in each recipient's inbox (the inbox is the truth,
the push is the fast path). Notices go to the sender's own outbox under the same bound;
when that is full too, the hub counts the lost notice and logs it (see
:mod:`transmit_hub.service`).
"""

from __future__ import annotations

import asyncio
from collections import deque

from .errors import ConfigError

__all__ = ["Outbox"]


class Outbox:
    """A bounded FIFO of encoded ``Delivery`` entries and ``Undeliverable`` notices."""

    __slots__ = ("_capacity", "_closed", "_deliveries", "_empty", "_notices", "_ready")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError("capacity must be at least 1")
        self._capacity = capacity
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
    def closed(self) -> bool:
        return self._closed

    def offer(self, entry: bytes) -> bool:
        """Queue one encoded delivery entry; ``False`` (nothing queued) when full or closed."""
        if self._closed or len(self._deliveries) + len(self._notices) >= self._capacity:
            return False
        self._deliveries.append(entry)
        if not self._ready.is_set():
            self._ready.set()
            self._empty.clear()
        return True

    def offer_notice(self, notice: bytes) -> bool:
        """Queue one encoded notice; ``False`` (nothing queued) when full or closed."""
        if self._closed or len(self._deliveries) + len(self._notices) >= self._capacity:
            return False
        self._notices.append(notice)
        if not self._ready.is_set():
            self._ready.set()
            self._empty.clear()
        return True

    def take(self, max_items: int, max_bytes: int) -> tuple[list[bytes], list[bytes]]:
        """Remove and return what is pending: ``(deliveries, notices)``, oldest first.

        At most ``max_items`` items; stops before ``max_bytes`` is passed, except that the
        first item is always taken (so one big delivery still goes out).
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
                self._after_take()
                return taken, taken_notices
        taken = []
        while deliveries and len(taken) < room:
            d = deliveries[0]
            if (taken or taken_notices) and size + len(d) > max_bytes:
                break
            size += len(d)
            taken.append(deliveries.popleft())
        self._after_take()
        return taken, taken_notices

    def _after_take(self) -> None:
        if not self._deliveries and not self._notices:
            if not self._closed:
                self._ready.clear()
            self._empty.set()

    async def wait(self) -> None:
        """Wait until something is pending or the outbox is closed."""
        await self._ready.wait()

    async def wait_empty(self) -> None:
        """Wait until nothing is pending (the writer took it all)."""
        await self._empty.wait()

    def poke(self) -> None:
        """Wake the writer with nothing new to take (it has something else to write)."""
        self._ready.set()

    def close(self) -> None:
        """Refuse further offers and wake the writer; what is pending stays takeable."""
        self._closed = True
        self._ready.set()

    def adopt(self, other: Outbox) -> None:
        """Move ``other``'s pending items here, ahead of anything newer (up to capacity)."""
        while other._notices and len(self) < self._capacity:
            self._notices.append(other._notices.popleft())
        while other._deliveries and len(self) < self._capacity:
            self._deliveries.append(other._deliveries.popleft())
        if len(self):
            self._ready.set()
            self._empty.clear()
        other._after_take()
