"""Catch-up sweeps: every local session reads its inbox to the end when pushes may have
been missed (a hub link lost, or up again).

A lost hub link (the last one, or one of several while others still serve) may have
swallowed pushes: a hub writes into a stream that went silent until it notices, and so
does this gateway's link. So every local session reads its inbox to the end when the
loss is noticed, and once more ``resync_after`` seconds later: by then the hub has
noticed too (its keepalive deadline) and sends that gateway's shares elsewhere, so what
it wrote into the dead stream meanwhile is read as well. A session that gets nothing
more would otherwise wait for the next push to see its hole. Cost: one inbox read per
session per loss, twice: the store says where 1,000 inboxes end in one round trip, and
only the sessions behind theirs read (``bench/catch_up.py`` measures a sweep), and those
whose end the store could not say (a silent Redis Cluster node fails only its own
users'); losses close together share the later sweep, and at most one immediate sweep
runs per ``resync_after`` seconds.

Joins and leaves made on other gateways reach this one as notices through a hub, and a
lost link may have swallowed those too. A hub that wrote one into a stream gone silent
(a one-sided cut: this gateway's link to that hub, while the sender's link to it is fine)
tells no one, and the sender never sends it again. So the later sweep after a loss also
makes every local session read its user's large groups again (by then that hub has
noticed, and routes later notices elsewhere); losses close together share it. And a
gateway that was attached to no hub for a while (its last link lost: the process frozen,
or cut off) has missed the notices sent meanwhile (they found it on no hub and were
dropped): when a link is up again after that, every local session reads its user's large
groups again at once (:meth:`CatchUp.linked`). Either runs once per loss (or burst of
losses) of a hub link. Cost: the store says which of ``SWEEP_BATCH`` users are in any
group in one round trip (per node), and only the sessions with something to read read their groups
(two round trips each): those of users in a group, or whose answer the store could not
give, and those following a large group (a leave's notice may be what was lost: the user
may be in none now). A session of a user in no group that follows none is not asked: its
read would find nothing (:meth:`~im_gateway.store.Store.streams` answers nothing) and
drop nothing. Most users are in no large group (``bench/catch_up.py --mode regroup``).

Why the one bulk read is enough: a join or leave is written to the store before its
notice is sent. A notice lost with a stream was sent before the sweep asks the store (the
later sweep runs ``resync_after`` after the last loss, when the hub has noticed the dead
stream; the link-up's runs once a hub holds this gateway again), so its change is in the
answer: the user reads as in a group (a join), or the connection still follows the group
(a leave; checked when the batch is answered, so as it is then). A change written after
the store was asked sends its notice after, through a live link (or a loss again, whose
own later sweep covers it), and that notice regroups the connection itself, as it did
after the per-session reads this replaces (they too saw only what was written before
them). So a session is skipped only when its user reads False and it follows nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Generic, Protocol, TypeVar

from transmit_hub.types import UserId

from .errors import ConfigError
from .store import Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

SWEEP_BATCH: Final = 1000
"""Users whose inbox ends (or whether they are in a group) one store call asks for, in a
sweep."""

T = TypeVar("T")


class Reader(Protocol):
    """What a sweep needs of a local connection."""

    def catch_up(self, end: int | None = None) -> None:
        """Read the inbox to its end (pushes may have been missed); ``end``: the inbox's
        newest position when known (nothing to read when the connection has it)."""
        ...

    def regroup(self, left: int | None = None) -> None:
        """Read the user's large groups again (a join's or leave's notice may be lost)."""
        ...

    @property
    def follows_groups(self) -> bool:
        """True while the connection follows a large group's stream."""
        ...


class _Sweep(Generic[T]):
    """A sweep over every local connection, in the background: the store answers
    ``SWEEP_BATCH`` users at a time (``read``, one round trip per node), then ``act`` is
    handed each batch and its answers (None: the store failed, counted in ``failed``).
    One asked for while one runs runs again after it."""

    __slots__ = ("_act", "_again", "_failed", "_name", "_read", "_sessions", "_task")

    def __init__(
        self,
        name: str,
        sessions: Mapping[UserId, Sequence[Reader]],
        read: Callable[[list[UserId]], Awaitable[Sequence[T]]],
        act: Callable[[list[UserId], Sequence[T] | None], None],
        failed: Throttled,
    ) -> None:
        self._name = name
        self._sessions = sessions
        self._read = read
        self._act = act
        self._failed = failed
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def wait(self) -> None:
        """Until the sweep under way, if any, has handed every batch to ``act``."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            self._again = False
            users = list(self._sessions)
            for start in range(0, len(users), SWEEP_BATCH):
                batch = users[start : start + SWEEP_BATCH]
                answers: Sequence[T] | None
                try:
                    answers = await self._read(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed.hit(exc=exc)
                    answers = None
                self._act(batch, answers)
            if not self._again:
                return


class CatchUp:
    """The fan-out's catch-up sweeps over its local connections (see the module docstring)."""

    def __init__(
        self,
        sessions: Mapping[UserId, Sequence[Reader]],
        *,
        store: Store,
        resync_after: float,
    ) -> None:
        """``sessions``: the fan-out's local connections by user (read at each sweep)."""
        if resync_after <= 0:
            raise ConfigError("resync_after must be positive")
        self._sessions = sessions
        self._resync_after = resync_after
        self._resync: asyncio.TimerHandle | None = None
        self._swept_at = float("-inf")
        self._cut_off = False
        """No hub link was up since the last :meth:`lost` with ``everywhere``."""
        self._regroup_due = False
        """A link was lost since the last later sweep: that sweep regroups every session."""
        self._sweeps = _Sweep(
            "fanout-catch-up",
            sessions,
            store.inbox_ends,
            self._catch_up,
            Throttled(
                logger, "reading inbox ends for a catch-up failed %d times; every session reads"
            ),
        )
        self._regroups = _Sweep(
            "fanout-regroup",
            sessions,
            store.in_groups,
            self._regroup_batch,
            Throttled(
                logger,
                "reading which users are in groups for a regroup failed %d times; every "
                "session reads its groups",
            ),
        )

    @property
    def scheduled(self) -> bool:
        """A later sweep is scheduled (after a loss)."""
        return self._resync is not None

    async def wait(self) -> None:
        """Every local session reads its inbox to the end; returns once every session
        behind has been asked to read."""
        self.now()
        await self._sweeps.wait()

    async def regrouped(self) -> None:
        """Returns once the regroup under way, if any, has asked every session concerned
        to read its user's large groups."""
        await self._regroups.wait()

    def now(self) -> None:
        """Every local session reads its inbox to the end (pushes may have been missed):
        a sweep in the background; one asked for while one runs runs again after it.

        The store says where ``SWEEP_BATCH`` inboxes end in one round trip (per node),
        and only the sessions behind them read: an idle session costs a few microseconds,
        not an inbox read. When the store cannot say, every session of the batch reads;
        when it cannot say for some users (a Redis Cluster node holding their keys
        failed: the store counts those), their sessions read."""
        self._sweeps.start()

    def _catch_up(self, users: list[UserId], ends: Sequence[int | None] | None) -> None:
        sessions = self._sessions
        for i, user in enumerate(users):
            end = None if ends is None else ends[i]
            for session in sessions.get(user, ()):
                session.catch_up(end)

    def linked(self) -> None:
        """A hub link is up: every local session catches up (:meth:`now`). After a time
        with no link at all, every session also reads its user's large groups again: a
        join's or leave's notice to this gateway (a ``CONTROL_REGROUP`` share) found it
        attached to no hub meanwhile and was dropped (the hubs keep no share for a gateway
        they do not hold), and a missed join would leave the connection out of the group's
        posts until it reconnects. After an outage only (see :meth:`_regroup`)."""
        if self._cut_off:
            # Read as they are now: what the lost streams swallowed too (no second read
            # at the later sweep, unless a link is lost again).
            self._cut_off = self._regroup_due = False
            self._regroup()
        self.now()

    def _regroup(self) -> None:
        """Every local session reads its user's large groups again, unless it has nothing
        to read (a sweep in the background, see the module docstring)."""
        self._regroups.start()

    def _regroup_batch(self, users: list[UserId], grouped: Sequence[bool | None] | None) -> None:
        """A session of a user the store says is in no group regroups only when it follows
        one (a leave's notice may be lost); the others regroup (None: the store could not
        say)."""
        sessions = self._sessions
        for i, user in enumerate(users):
            in_none = grouped is not None and grouped[i] is False
            for session in sessions.get(user, ()):
                if not in_none or session.follows_groups:
                    session.regroup()

    def lost(self, *, everywhere: bool = False) -> None:
        """A hub link was lost (``everywhere``: the last one, no hub holds this gateway):
        catch up now, and once more ``resync_after`` s later, when every session also reads
        its user's large groups again (a notice the hub wrote into the lost stream).

        Bounded: at most one immediate sweep per ``resync_after`` seconds (a flapping hub
        does not keep every session reading), since the later sweep, pushed back to
        ``resync_after`` after the last loss, reads whatever the skipped ones would have.
        """
        self._cut_off = self._cut_off or everywhere
        self._regroup_due = True
        now = time.monotonic()
        if now - self._swept_at >= self._resync_after:
            self._swept_at = now
            self.now()
        if self._resync is not None:
            self._resync.cancel()  # one later read covers losses close together
        self._resync = asyncio.get_running_loop().call_later(self._resync_after, self._resynced)

    def _resynced(self) -> None:
        self._resync = None
        if self._regroup_due:
            self._regroup_due = False
            self._regroup()
        self.now()

    async def close(self) -> None:
        """Cancel the scheduled sweep and those running; idempotent."""
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None
        await self._sweeps.close()
        await self._regroups.close()
