"""One callback per loop iteration writes every WebSocket that queued frames in it.

A frame from a hub reaches dozens of sockets; a ``call_soon`` per socket cost about 0.9 µs
more each than one callback that flushes them all (:meth:`im_gateway.ws.Connection.send_now`
adds its connection; the next loop iteration writes each one's frames in one system call).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    """A connection with frames to write (:class:`im_gateway.ws.Connection`)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def _flush(self) -> None: ...


class Flushes:
    """The connections that queued frames in this loop iteration, flushed together in
    the next one, in the order they queued."""

    __slots__ = ("_loop", "_pending")

    def __init__(self) -> None:
        self._pending: list[Flushable] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, connection: Flushable) -> None:
        """Write ``connection``'s queued frames in the next loop iteration (once)."""
        pending = self._pending
        if not pending or connection.loop is not self._loop:
            if pending:  # left by a loop that stopped before its callback ran
                pending = self._pending = []
            self._loop = connection.loop
            self._loop.call_soon(self._run)
        pending.append(connection)

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        for connection in pending:
            try:
                connection._flush()
            except Exception as exc:  # one socket's failure must not keep the others' frames
                connection.loop.call_exception_handler(
                    {"message": "flushing a WebSocket failed", "exception": exc}
                )
