"""Upkeep of idle connections: one :func:`sweep_idle` task per gateway.

Not a timer and a keepalive task per connection, which would cost about 2 KB each: one
task closes connections that sent no frame for ``idle_timeout`` seconds, pings quiet ones
every ``ping_interval`` seconds and closes those whose pong is ``ping_timeout`` seconds
late (:func:`upkeep`; each :class:`~im_gateway.sessions.Session` keeps when it last
pinged). A ping is written at once, with no future per ping: its pong (or any ping of the
client's) shows in the connection's ``heard_at``.

Each upkeep answers when the connection can next have something due (``upkeep_at``), and
the sweep passes over a connection until then: frames that come meanwhile only move what
is due later, so this skips nothing the sweep would have done. An idle connection is
looked at once or twice per ping interval instead of at every sweep (4 per interval):
with 5,000 idle connections the checks were about a third of the gateway's idle CPU.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from typing import Final, Protocol

from transmit_hub.types import UserId

from .close_codes import CLOSE_IDLE, CLOSE_INTERNAL
from .throttle import Throttled
from .writer import WebSocketLike, Writer

logger = logging.getLogger(__name__)
# Counted: a network cut can close thousands of connections in one sweep (each is named
# at DEBUG).
_idle_closed = Throttled(
    logger, "%d connections closed (1000): no frame for --idle-timeout", level=logging.INFO
)
_pong_late = Throttled(
    logger,
    "%d connections closed (1011): no pong within --ping-timeout of a ping",
    level=logging.INFO,
)


NEVER: Final = math.inf
"""An ``upkeep_at`` of a connection with nothing left to do (it is closing)."""


class Kept(Protocol):
    """What the sweep needs of a connection (a session)."""

    upkeep_at: float
    """Loop time before which :meth:`upkeep` has nothing to do (0: look at once)."""

    @property
    def user(self) -> UserId: ...

    def upkeep(self, now: float, interval: float, pong_timeout: float) -> float:
        """Close the socket when no frame came for its idle timeout, ping a quiet client,
        close one whose pong is late (:func:`upkeep`); when to look again."""
        ...


class Pinged(Protocol):
    """What :func:`upkeep` reads and writes of a session."""

    user: UserId
    last_seen: float
    """Loop time of the last frame from the client."""
    pinged_at: float
    """Loop time of the last ping (0: none yet)."""


def upkeep(
    session: Pinged,
    ws: WebSocketLike,
    out: Writer,
    now: float,
    idle_timeout: float,
    interval: float,
    pong_timeout: float,
) -> float:
    """One connection's upkeep at loop time ``now``; answers the loop time before which
    nothing can be due, whatever frames come meanwhile (:data:`NEVER` once it closes).

    - Idle: no frame for ``idle_timeout`` seconds (0: never) closes the socket (1000).
    - Keepalive (``interval`` 0: none): a ping when nothing (no frame, no pong) came for
      ``interval`` seconds; when nothing came ``pong_timeout`` seconds after the ping (0:
      no limit), the socket is closed (1011). The session keeps when it pinged: no object
      per connection.
    """
    if out.closing:
        return NEVER
    idle_due = NEVER
    if idle_timeout > 0:
        idle_due = session.last_seen + idle_timeout
        if now >= idle_due:
            logger.debug("user %s idle for %ss: closing", session.user, idle_timeout)
            _idle_closed.hit()
            out.close(CLOSE_IDLE, "idle timeout")
            return NEVER
    if interval <= 0:
        return idle_due
    seen = max(session.last_seen, ws.heard_at)
    pinged = session.pinged_at
    if pinged > seen:  # no answer yet
        if pong_timeout > 0 and now > pinged + pong_timeout:
            logger.debug("user %s: no pong for %ss, closing", session.user, pong_timeout)
            _pong_late.hit()
            out.close(CLOSE_INTERNAL, "keepalive ping timeout")
            return NEVER
        # An answer (a pong, any frame) comes no earlier than now, and the next ping an
        # interval after it; or the pong's deadline passes first.
        due = now + interval
        if pong_timeout > 0:
            due = min(due, pinged + pong_timeout)
        return min(idle_due, due)
    ping_due = max(seen, pinged) + interval
    if now < ping_due:
        return min(idle_due, ping_due)
    if not ws.ping_now():
        return now  # not open (yet, or any more): look again at the next sweep
    session.pinged_at = now
    # Next: the pong's deadline, or (its pong come) the next ping, an interval from now.
    return min(idle_due, now + (min(interval, pong_timeout) if pong_timeout > 0 else interval))


async def sweep_idle(
    sessions: Callable[[], Iterable[Kept]],
    idle_timeout: float,
    *,
    ping_interval: float = 0.0,
    ping_timeout: float = 0.0,
) -> None:
    """Forever, one task per gateway instead of timers and tasks per connection: close
    sessions idle for ``idle_timeout`` seconds (0: never), ping those quiet for
    ``ping_interval`` seconds and close those whose pong is ``ping_timeout`` late."""
    periods = [p for p in (idle_timeout / 4, ping_interval / 4, ping_timeout / 2) if p > 0]
    if not periods:
        return
    period = max(min(periods), 0.01)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        for session in sessions():
            if session.upkeep_at > now:
                continue
            try:
                session.upkeep_at = session.upkeep(now, ping_interval, ping_timeout)
            except Exception:
                logger.exception("keepalive of user %s failed", session.user)
