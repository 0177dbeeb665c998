"""A session's acknowledgements (type 13), written to the store in the background.

Coalesced: at most one ack write in flight per session, the highest position wins (the
store never moves a position back, nor past the inbox's end); large groups' streams the
same way, each its own position.
"""

from __future__ import annotations

import asyncio
import logging

from transmit_hub.types import UserId

from . import frames
from .metrics import GatewayMetrics
from .store import Store
from .streams import Outlet
from .throttle import Throttled

logger = logging.getLogger(__name__)

_ack_failed = Throttled(logger, "ack writes failed %d times")


class Acks:
    """One connection's acknowledgements on their way to the store."""

    __slots__ = (
        "_ack_target",
        "_group_acks",
        "_held_max",
        "_loop",
        "_metrics",
        "_out",
        "_slots",
        "_store",
        "_user",
        "task",
    )

    def __init__(
        self,
        user: UserId,
        *,
        store: Store,
        slots: asyncio.Semaphore,
        held_max: int,
        out: Outlet,
        metrics: GatewayMetrics,
    ) -> None:
        """``out``: where a failed write is answered (the session's writer; an object,
        not a bound method per connection)."""
        self._user = user
        self._store = store
        self._slots = slots
        self._held_max = held_max
        self._out = out
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._ack_target: int | None = None
        self._group_acks: dict[int, int] | None = None
        """Group stream acks waiting to be written: group -> the highest position."""
        self.task: asyncio.Task[None] | None = None
        """The write in flight, if any."""

    def ack(self, upto: int) -> None:
        """The client has everything up to ``upto`` in its inbox (see the module docstring)."""
        if self._ack_target is None or upto > self._ack_target:
            self._ack_target = upto
        if self.task is None:
            self.task = self._loop.create_task(self._write_acks())

    def ack_group(self, group: int, upto: int) -> None:
        """As :meth:`ack`, per large group's stream (the store keeps a non-member's
        nothing, and never moves a position past the stream's end)."""
        acks = self._group_acks
        if acks is None:
            acks = self._group_acks = {}
        if group in acks or len(acks) < self._held_max:
            acks[group] = max(acks.get(group, 0), upto)
        if self.task is None:
            self.task = self._loop.create_task(self._write_acks())

    async def _write_acks(self) -> None:
        try:
            while self._ack_target is not None or self._group_acks:
                seq, self._ack_target = self._ack_target, None
                groups, self._group_acks = self._group_acks, None
                try:
                    async with self._slots:
                        if seq is not None:
                            await self._store.ack(self._user, seq)
                        for group, upto in (groups or {}).items():
                            await self._store.ack_group(self._user, group, upto)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    _ack_failed.hit(exc=exc)
                    self._metrics.refused(frames.INTERNAL)
                    self._out.push(
                        frames.encode_error(frames.INTERNAL, "ack not stored; send it again")
                    )
        finally:
            self.task = None

    async def settle(self) -> None:
        """Let a pending ack finish (within 2 s): it records what the client confirmed."""
        if self.task is not None:
            await asyncio.wait([self.task], timeout=2.0)
