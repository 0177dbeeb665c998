"""The gateway's store slots: how many replay, ack and group calls are in flight at once
(``--store-concurrency``), and how long a call waits for one (``--store-wait``).

The slots bound what a connect storm puts on Redis; but when Redis goes silent, each slot
is held for a whole ``--redis-timeout`` and the calls queued behind them would wait for
the queue ahead to time out one slot-full at a time: minutes for a join in a large queue,
with the client answered nothing meanwhile. A call that gets no slot within the wait
fails as the store call would have (:class:`~im_gateway.errors.StoreBusy`, a
``TimeoutError``): the join is answered ``internal`` (sent again), the replay retried.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from .errors import ConfigError, StoreBusy

__all__ = ["Slots"]


class Slots(asyncio.Semaphore):
    """``asyncio.Semaphore(value)`` whose ``acquire`` (``async with``) waits at most
    ``wait`` seconds, then raises :class:`StoreBusy`; a free slot is taken at once."""

    def __init__(self, value: int, wait: float) -> None:
        if value < 1 or not wait > 0:
            raise ConfigError("store slots need a value of at least 1 and a wait over 0")
        super().__init__(value)
        self.wait = wait
        self.held = 0
        """Slots held now."""
        self.busy = 0
        """Calls that gave up waiting (each failed with :class:`StoreBusy`)."""

    async def acquire(self) -> Literal[True]:
        if not self.locked():
            await super().acquire()  # no wait, no timer
            self.held += 1
            return True
        try:
            async with asyncio.timeout(self.wait):
                await super().acquire()
            self.held += 1
            return True
        except TimeoutError:
            self.busy += 1
            raise StoreBusy(
                f"no store slot came free within {self.wait:g} s (--store-wait): every "
                "one is held by a call waiting on Redis"
            ) from None

    def release(self) -> None:
        self.held -= 1
        super().release()
