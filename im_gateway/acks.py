"""A session's acknowledgements (type 13), written to the store in the background.

Coalesced: at most one ack write in flight per session, the highest position wins (the
store never moves a position back, nor past the inbox's end); large groups' streams the
same way, each its own position.

Gathered across sessions (:class:`AckRounds`, ``--ack-linger``): a session's first ack
waits for the gateway's next round, at most ``linger`` seconds away, and every session
with acks due starts its write in that round's loop turn, so the store carries them in one
call (:class:`~im_gateway.store.gather.Gathered`). Clients ack about every 100 ms each
(the client libraries), so at moderate load most loop turns held one ack, and each cost
a Redis round trip. A session that closes writes its acks at once
(:meth:`Acks.settle`): the client's last ack is in the store before the client can
connect again, so a restarted client is not replayed what it showed. And a new
connection's replay first writes what its user's other connections here have due
(:meth:`AckRounds.written`), so a second device starts after what the first one acked.
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


class AckRounds:
    """The gateway's rounds of ack writes: every session that asked in the last
    ``linger`` seconds starts its write in one loop turn (``linger`` 0: at once)."""

    __slots__ = ("_due", "_handle", "_users", "linger")

    def __init__(self, linger: float = 0.0) -> None:
        self.linger = linger
        self._due: dict[Acks, None] = {}
        """The sessions whose writes start at the next round, in the order they asked."""
        self._users: dict[UserId, int] = {}
        """How many of them each user has."""
        self._handle: asyncio.TimerHandle | None = None

    def join(self, acks: Acks) -> None:
        """Start ``acks``'s write at the next round (now, without a linger)."""
        if self.linger <= 0:
            acks.start()
            return
        if acks not in self._due:
            self._due[acks] = None
            self._users[acks.user] = self._users.get(acks.user, 0) + 1
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.linger, self._round)

    def leave(self, acks: Acks) -> bool:
        """Take ``acks`` out of the next round; True when it was in it."""
        if acks not in self._due:
            return False
        del self._due[acks]
        left = self._users[acks.user] - 1
        if left:
            self._users[acks.user] = left
        else:
            del self._users[acks.user]
        return True

    async def written(self, user: UserId) -> None:
        """Write ``user``'s acks due at the next round now, and wait for them (within
        2 s): a new connection of that user (another device, a reconnect while the old
        socket lingers) starts its replay after what the others acknowledged."""
        if user not in self._users:
            return
        due = [a for a in self._due if a.user == user]
        tasks = [t for t in (a.write_now() for a in due) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    def _round(self) -> None:
        self._handle = None
        due, self._due = self._due, {}
        self._users.clear()
        for acks in due:
            acks.start()

    def close(self) -> None:
        """Start the writes due now and stop the rounds' timer; idempotent."""
        if self._handle is not None:
            self._handle.cancel()
        self._round()


class Acks:
    """One connection's acknowledgements on their way to the store."""

    __slots__ = (
        "_ack_target",
        "_group_acks",
        "_held_max",
        "_loop",
        "_metrics",
        "_out",
        "_rounds",
        "_settling",
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
        rounds: AckRounds | None = None,
    ) -> None:
        """``out``: where a failed write is answered (the session's writer; an object,
        not a bound method per connection). ``rounds``: the gateway's (None: each write
        starts at once)."""
        self._user = user
        self._rounds = rounds if rounds is not None else _AT_ONCE
        self._settling = False
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
            self._rounds.join(self)

    def ack_group(self, group: int, upto: int) -> None:
        """As :meth:`ack`, per large group's stream (the store keeps a non-member's
        nothing, and never moves a position past the stream's end)."""
        acks = self._group_acks
        if acks is None:
            acks = self._group_acks = {}
        if group in acks or len(acks) < self._held_max:
            acks[group] = max(acks.get(group, 0), upto)
        if self.task is None:
            self._rounds.join(self)

    @property
    def user(self) -> UserId:
        return self._user

    def start(self) -> None:
        """Write what is due now (its round has come), unless a write is under way (what
        is due then goes in the round after it)."""
        if self.task is None and self._due():
            self.task = self._loop.create_task(self._write_acks())

    async def _write_acks(self) -> None:
        """Write what is due; what comes meanwhile goes in the next round (at once when
        the rounds have no linger, or the connection is closing)."""
        try:
            while self._due():
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
                    # client.js reads these words: an internal for no request during a
                    # replay is this, not the replay's read failing ("replay failed").
                    self._out.push(
                        frames.encode_error(frames.INTERNAL, "ack not stored; send it again")
                    )
                if self._rounds.linger > 0 and not self._settling:
                    break
        finally:
            self.task = None
        if self._due():
            self._rounds.join(self)

    def _due(self) -> bool:
        return self._ack_target is not None or bool(self._group_acks)

    async def settle(self) -> None:
        """Write what is due at once (not at the next round), and let it finish (within
        2 s): it records what the client confirmed before it went."""
        self._settling = True
        task = self.write_now()
        if task is not None:
            await asyncio.wait([task], timeout=2.0)

    def write_now(self) -> asyncio.Task[None] | None:
        """Take this session out of the next round and start its write now; the write
        under way, if any."""
        if self._rounds.leave(self):
            self.start()
        return self.task


_AT_ONCE = AckRounds(0.0)
"""The rounds of sessions made without the gateway's: every write starts at once."""
