"""Upkeep of idle connections: one :func:`sweep_idle` task per gateway.

Not a timer and a keepalive task per connection, which would cost about 2 KB each: one
task closes connections that sent no frame for ``idle_timeout`` seconds, pings quiet ones
every ``ping_interval`` seconds and closes those whose pong is ``ping_timeout`` seconds
late (:func:`ping`; each :class:`~im_gateway.sessions.Session` keeps when it last
pinged). A ping is written at once, with no future per ping: its pong (or any ping of the
client's) shows in the connection's ``heard_at``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from transmit_hub.types import UserId

from .close_codes import CLOSE_INTERNAL
from .writer import WebSocketLike, Writer

logger = logging.getLogger(__name__)


class Kept(Protocol):
    """What the sweep needs of a connection (a session)."""

    @property
    def user(self) -> UserId: ...

    def expire_if_idle(self, now: float) -> bool:
        """Close the socket when no frame came for its idle timeout."""
        ...

    def keepalive(self, now: float, interval: float, pong_timeout: float) -> None:
        """Ping a quiet client; close one whose pong is late."""
        ...


class Pinged(Protocol):
    """What :func:`ping` reads and writes of a session."""

    user: UserId
    last_seen: float
    """Loop time of the last frame from the client."""
    pinged_at: float
    """Loop time of the last ping (0: none yet)."""


def ping(
    session: Pinged,
    ws: WebSocketLike,
    out: Writer,
    now: float,
    interval: float,
    pong_timeout: float,
) -> None:
    """One connection's keepalive: ping when nothing came for ``interval`` seconds; close
    the socket (1011) when nothing (no pong, no frame) came ``pong_timeout`` seconds after
    the ping (the session keeps when it pinged: no object per connection)."""
    seen = max(session.last_seen, ws.heard_at)
    pinged = session.pinged_at
    if pinged > seen:  # no answer yet
        if pong_timeout > 0 and now - pinged > pong_timeout:
            logger.info("user %s: no pong for %ss, closing", session.user, pong_timeout)
            out.close(CLOSE_INTERNAL, "keepalive ping timeout")
        return
    if now - max(seen, pinged) >= interval and ws.ping_now():
        session.pinged_at = now


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
            try:
                if not session.expire_if_idle(now):
                    session.keepalive(now, ping_interval, ping_timeout)
            except Exception:
                logger.exception("keepalive of user %s failed", session.user)
