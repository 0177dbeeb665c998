"""One socket's writing and closing: the :class:`Writer` of a session.

A frame is written to the socket at once while the socket keeps up (no task, no await).
Once the transport is backed up, frames go into a bounded send queue drained by the
writer's own task (started when there is a backlog, gone when it is drained, so an idle
connection costs no task). Full policy: a client that does not read is disconnected
(close 1013) instead of growing memory or stalling the gateway; everything it missed is
in its inbox and replayed when it reconnects.

The writer is all a :class:`~im_gateway.replayer.Replayer` writes to (its ``Outlet``),
and the one place a session's socket is closed (:meth:`Writer.close`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from transmit_hub.types import UserId

from .close_codes import CLOSE_INTERNAL, CLOSE_SEND_QUEUE_FULL
from .metrics import GatewayMetrics

logger = logging.getLogger(__name__)


class WebSocketLike(Protocol):
    """The part of ``websockets.asyncio.server.ServerConnection`` a session uses."""

    async def recv(self) -> str | bytes: ...

    async def wait_frame(self) -> None:
        """Return once ``recv()`` would not wait (a frame is there, or the socket closed)."""
        ...

    async def send(self, message: str) -> None: ...

    def send_now(self, message: str) -> bool:
        """Write ``message`` without waiting; False when it must wait (then use ``send``)."""
        ...

    def ping_now(self) -> bool:
        """Write a WebSocket ping without waiting; False when the socket is not open."""
        ...

    @property
    def heard_at(self) -> float:
        """Loop time of the last ping or pong from the client (0: none yet)."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Writer:
    """Frames to one WebSocket, in order, within a bounded send queue."""

    __slots__ = (
        "_close_timeout",
        "_loop",
        "_metrics",
        "_queue",
        "_send_queue",
        "_tasks",
        "_user",
        "_writer",
        "_ws",
        "closing",
    )

    def __init__(
        self,
        ws: WebSocketLike,
        user: UserId,
        *,
        send_queue: int,
        close_timeout: float,
        metrics: GatewayMetrics,
    ) -> None:
        self._ws = ws
        self._user = user
        self._send_queue = send_queue
        self._close_timeout = close_timeout
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[str] | None = None  # allocated on a backlog only
        self._writer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self.closing = False
        """True once the socket is closing: nothing more is queued."""

    @property
    def queued(self) -> int:
        """Frames waiting in the send queue."""
        return len(self._queue) if self._queue else 0

    @property
    def idle(self) -> bool:
        """Nothing waits in the send queue (no writer task)."""
        return self._writer is None

    def push(self, text: str) -> bool:
        """Queue a frame for the client; False when the socket is closing or overflowed."""
        if self.closing:
            return False
        self._metrics.frame_out(text)
        queue = self._queue
        if not queue and self._writer is None and self._ws.send_now(text):
            return True  # the common case: written at once, no task
        if queue is None:
            queue = self._queue = collections.deque()
        if len(queue) >= self._send_queue:
            logger.info("user %s does not read: send queue full, disconnecting", self._user)
            self.close(CLOSE_SEND_QUEUE_FULL, "send queue full; reconnect to resume")
            return False
        queue.append(text)
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())
        return True

    async def _write(self) -> None:
        try:
            while not self.closing and self._queue:
                await self._ws.send(self._queue.popleft())
        except ConnectionClosed:
            self.closing = True
        except Exception:
            logger.exception("writing to user %s failed; closing", self._user)
            self.close(CLOSE_INTERNAL, "internal error")
        finally:
            self._writer = None
            if self.closing or not self._queue:
                self._queue = None  # free the backlog's memory

    async def room(self) -> None:
        """Wait until the send queue is empty (replay pages are flow-controlled)."""
        while self._writer is not None and not self.closing:
            await asyncio.shield(self._writer)

    def stop(self) -> None:
        """Queue nothing more (what is queued is dropped)."""
        self.closing = True
        self._queue = None

    def close(self, code: int, reason: str) -> None:
        """Stop writing and close the socket with ``code`` in the background."""
        self.stop()
        self._spawn(self.close_socket(code, reason))

    async def close_socket(self, code: int, reason: str, within: float | None = None) -> None:
        """Close the WebSocket; abort the TCP connection if the client does not take part.

        (A peer that does not read never lets the close frame drain, and
        ``websockets`` would wait for it without a deadline.)
        """
        try:
            async with asyncio.timeout(within or self._close_timeout):
                await self._ws.close(code, reason)
        except TimeoutError:
            transport = getattr(self._ws, "transport", None)
            if transport is not None:
                transport.abort()

    def tasks(self) -> list[asyncio.Task[None] | None]:
        """The writer task and the closes in the background (for the session's close)."""
        return [self._writer, *(self._tasks or ())]

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = self._loop.create_task(run())
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
