"""Upkeep of idle connections: one :func:`sweep_idle` task per gateway.

Not a timer and a keepalive task per connection, which would cost about 2 KB each: one
task closes connections that sent no frame for ``idle_timeout`` seconds, pings quiet ones
every ``ping_interval`` seconds and closes those whose pong is ``ping_timeout`` seconds
late (each :class:`~im_gateway.sessions.Session` keeps its own :class:`Pings`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from websockets.exceptions import ConnectionClosed

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

    async def keepalive(self, now: float, interval: float, pong_timeout: float) -> None:
        """Ping a quiet client; close one whose pong is late."""
        ...


def consume_pong(future: asyncio.Future[float]) -> None:
    """Retrieve a pong future's outcome so a closed connection logs nothing."""
    if not future.cancelled():
        future.exception()


class Pings:
    """One connection's keepalive pings: when the last was sent, and its pong."""

    __slots__ = ("_out", "_pinged_at", "_pong", "_user", "_ws")

    def __init__(self, ws: WebSocketLike, out: Writer, user: UserId) -> None:
        self._ws = ws
        self._out = out
        self._user = user
        self._pong: asyncio.Future[float] | None = None
        self._pinged_at = 0.0

    async def check(
        self, now: float, last_seen: float, interval: float, pong_timeout: float
    ) -> None:
        """Ping when nothing came since ``last_seen`` for ``interval`` seconds; close the
        socket (1011) when the pong is more than ``pong_timeout`` seconds late."""
        pong = self._pong
        if pong is not None:
            if not pong.done():
                if pong_timeout > 0 and now - self._pinged_at > pong_timeout:
                    logger.info("user %s: no pong for %ss, closing", self._user, pong_timeout)
                    self._out.close(CLOSE_INTERNAL, "keepalive ping timeout")
                return
            self._pong = None
        if now - max(last_seen, self._pinged_at) < interval:
            return
        try:
            waiter = await self._ws.ping()
        except ConnectionClosed:
            return
        if isinstance(waiter, asyncio.Future):
            waiter.add_done_callback(consume_pong)
            self._pong = waiter
        self._pinged_at = now


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
                session.expire_if_idle(now)
                await session.keepalive(now, ping_interval, ping_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("keepalive of user %s failed", session.user)
