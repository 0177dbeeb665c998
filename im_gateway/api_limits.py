"""Bounds on the server API's connections that aiohttp has no option for.

aiohttp bounds a header *line* (``max_line_size``, ``max_field_size``), the number of
header lines (``max_headers``) and the keep-alive idle time (``keepalive_timeout``), and
the API's handler bounds the body's time itself. Three bounds are missing, and this
module adds them around aiohttp's own protocol, without touching its internals:

- **connections**: at most ``--api-max-connections`` open at once, and none that would
  eat into the descriptors kept for the WebSocket port's reserve
  (:class:`~im_gateway.descriptors.Sockets`); one more gets a fixed 503 and is closed,
  unread;
- **header bytes**: a request's header block (request line to the blank line) may be at
  most ``--api-max-header-bytes``, counted as the bytes arrive, so a client that sends
  megabytes of unfinished headers is cut at the limit (431) instead of buffered;
- **header time**: the header block must be complete within ``--api-header-timeout`` of
  the connection's start, and of its first byte on a kept-alive connection (408).

A connection the server ends after an answer (these fixed ones, and aiohttp's own: 401,
a 408 for a stalled body, any answer given before the body was read) ends with a
lingering close (:mod:`im_gateway.lingering`), so a client still sending reads the answer
instead of a reset; it keeps its ``--api-max-connections`` slot until its socket is
closed, unless a new connection needs the slot (then the oldest lingering one is cut
short: capacity comes back at once, the answers have had their time on the wire), and
lingers at most :data:`~im_gateway.lingering.LINGER` seconds and ``Bounds.linger_bytes``
of input.

:class:`HeaderScan` is the pure part (fed bytes, says whether the block is complete or too
large); :class:`GuardedSite` is an aiohttp site whose protocol factory wraps aiohttp's
with :class:`_Guard`, and hands aiohttp a :class:`_Transport` whose ``close`` is the
guard's. The API's middleware tells the guard when a request starts and ends
(:meth:`ConnectionLimits.started`, :meth:`ConnectionLimits.finished`), so a body is never
counted as headers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from .descriptors import Sockets, refuse
from .lingering import LINGER, linger
from .throttle import Throttled

logger = logging.getLogger(__name__)

HEADER_END = b"\r\n\r\n"


def _fixed_response(status: str, code: str, reason: str) -> bytes:
    body = f'{{"error":{{"code":"{code}","message":"{reason}"}}}}\n'.encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


HEADERS_TOO_LARGE = _fixed_response(
    "431 Request Header Fields Too Large",
    "too_large",
    "the request headers are over --api-max-header-bytes",
)
HEADERS_TOO_SLOW = _fixed_response(
    "408 Request Timeout", "timeout", "the request headers did not arrive in time"
)
TOO_MANY = _fixed_response(
    "503 Service Unavailable", "unavailable", "too many connections; try later"
)


class Scan(enum.Enum):
    """What :meth:`HeaderScan.feed` saw."""

    HEADERS = "headers"
    """Still in a header block, within the limit."""
    COMPLETE = "complete"
    """The block's blank line arrived (what follows is body, or the next request)."""
    TOO_LARGE = "too_large"
    """The block is over the limit and not complete."""
    IGNORED = "ignored"
    """Not reading headers now (a request is being handled)."""


class HeaderScan:
    """Counts the bytes of one header block as they arrive (pure, no I/O)."""

    __slots__ = ("_tail", "limit", "reading", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reading = True
        """Between requests: the next bytes are a header block."""
        self.seen = 0
        """Bytes of the current header block so far."""
        self._tail = b""

    def feed(self, data: bytes) -> Scan:
        """Count ``data`` (the next bytes received) toward the header block."""
        if not self.reading:
            return Scan.IGNORED
        window = self._tail + data
        end = window.find(HEADER_END)
        if end >= 0:
            self.seen += end + len(HEADER_END) - len(self._tail)
            self.reading = False
            self._tail = b""
            return Scan.TOO_LARGE if self.seen > self.limit else Scan.COMPLETE
        self.seen += len(data)
        self._tail = window[-(len(HEADER_END) - 1) :]
        return Scan.TOO_LARGE if self.seen > self.limit else Scan.HEADERS

    def request_started(self) -> None:
        """The server has a request (it may have parsed it from bytes seen earlier)."""
        self.reading = False
        self._tail = b""

    def request_finished(self) -> None:
        """The answer is given and the connection stays open: a new block comes next."""
        self.reading = True
        self.seen = 0
        self._tail = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounds:
    """The connection bounds of the server API (see the flags of the same names)."""

    header_timeout: float
    max_header_bytes: int
    max_connections: int
    linger_bytes: int = 1024 * 1024 + 16 * 1024
    """What a connection ended after an answer may still send before it is closed at once
    (the API passes one request's worth: ``--api-max-body`` + ``--api-max-header-bytes``,
    so a client still sending a request it was answered early reads the answer)."""


_refused = Throttled(
    logger,
    "server API: %d connections refused at once (too many open: --api-max-connections, "
    "or the descriptors are low)",
    level=logging.INFO,
)
_cut = Throttled(
    logger,
    "server API: %d connections closed for slow or oversized headers "
    "(--api-header-timeout, --api-max-header-bytes)",
    level=logging.INFO,
)


class ConnectionLimits:
    """The guards of one API port: where the middleware finds a request's connection."""

    __slots__ = ("_guards", "bounds", "closing", "lingering", "sockets")

    def __init__(self, bounds: Bounds, sockets: Sockets) -> None:
        self.bounds = bounds
        self.sockets = sockets
        self._guards: dict[asyncio.BaseTransport, _Guard] = {}
        self.lingering: dict[asyncio.Transport, _Guard] = {}
        """Connections ended after an answer, waiting for the client's end, oldest first:
        each still holds its API slot, until a new connection needs it (:meth:`evict`)."""
        self.closing = False
        """The server is shutting down: connections close at once, without lingering."""

    def started(self, transport: asyncio.BaseTransport | None) -> None:
        """A request on ``transport`` reached the application: its headers are in."""
        guard = self._guards.get(transport) if transport is not None else None
        if guard is not None:
            guard.request_started()

    def finished(self, transport: asyncio.BaseTransport | None, *, keep_alive: bool) -> None:
        """The request on ``transport`` is answered; a kept-alive connection waits for
        the next header block (with the idle timeout: aiohttp's keep-alive)."""
        guard = self._guards.get(transport) if transport is not None else None
        if guard is not None and keep_alive:
            guard.request_finished()

    def register(self, transport: asyncio.BaseTransport, guard: _Guard) -> None:
        self._guards[transport] = guard

    def forget(self, transport: asyncio.BaseTransport) -> None:
        self._guards.pop(transport, None)

    def close(self) -> None:
        """Close the connections still lingering (the server has stopped); idempotent."""
        self.closing = True
        for transport in list(self.lingering):
            transport.abort()

    def evict(self) -> bool:
        """Cut the oldest lingering connection short, its API slot given back at once (a
        new connection needs it: the answer has had its time on the wire); False when
        none lingers."""
        if not self.lingering:
            return False
        transport, guard = next(iter(self.lingering.items()))
        guard.evict()
        transport.abort()
        return True


class _Transport(asyncio.Transport):
    """What aiohttp holds for one connection: the connection's transport, except that
    closing it is the guard's close (a lingering one, after an answer)."""

    __slots__ = ("_guard", "_real", "closed")

    def __init__(self, real: asyncio.Transport, guard: _Guard) -> None:
        super().__init__()
        self._real = real
        self._guard = guard
        self.closed = False
        """aiohttp, or the guard, has ended the connection (it may still linger)."""

    def close(self) -> None:
        self._guard.end()

    def is_closing(self) -> bool:
        return self.closed or self._real.is_closing()

    def abort(self) -> None:
        self.closed = True
        self._real.abort()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._real.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self._real.writelines(list_of_data)

    def write_eof(self) -> None:
        self._real.write_eof()

    def can_write_eof(self) -> bool:
        return self._real.can_write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if not self.closed:
            self._real.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self._real.resume_reading()

    def is_reading(self) -> bool:
        return not self.closed and self._real.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)


class _Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the bounds of :class:`Bounds`."""

    __slots__ = ("_inner", "_limits", "_scan", "_server", "_timer", "_transport", "_view")

    def __init__(self, limits: ConnectionLimits, server: web.Server) -> None:
        self._limits = limits
        self._scan = HeaderScan(limits.bounds.max_header_bytes)
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._view: _Transport | None = None
        """What aiohttp holds; None once the socket is closed (or when never counted)."""
        self._timer: asyncio.TimerHandle | None = None
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        limits = self._limits
        refused = limits.sockets.open_api(limits.bounds.max_connections)
        if refused is not None and limits.evict():
            refused = limits.sockets.open_api(limits.bounds.max_connections)
        if refused is not None:
            _refused.hit()
            refuse(transport, self, limits.sockets, TOO_MANY, max_bytes=limits.bounds.linger_bytes)
            return
        self._transport = transport
        view = self._view = _Transport(transport, self)
        limits.register(view, self)
        self._start_timer()
        self._inner = self._server()
        self._inner.connection_made(view)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._closed(exc)

    def _closed(self, exc: Exception | None) -> None:
        """The socket is closed: its count is given back, and aiohttp hears of it (unless
        it already has)."""
        view, self._view = self._view, None
        if view is None:
            return
        view.closed = True
        self._limits.sockets.close_api()
        self._limits.forget(view)
        if self._transport is not None:
            self._limits.lingering.pop(self._transport, None)
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def evict(self) -> None:
        """Lingering, cut short for a new connection: its count is given back now."""
        self._closed(None)

    def data_received(self, data: bytes) -> None:
        inner = self._inner
        if inner is None:
            return
        first = self._scan.reading and self._scan.seen == 0
        scan = self._scan.feed(data)
        if scan is Scan.TOO_LARGE:
            self._cut(HEADERS_TOO_LARGE)
            return
        if scan is Scan.COMPLETE:
            self._stop_timer()
        elif scan is Scan.HEADERS and first and self._timer is None:
            self._start_timer()
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def request_started(self) -> None:
        self._scan.request_started()
        self._stop_timer()

    def request_finished(self) -> None:
        self._scan.request_finished()

    def _start_timer(self) -> None:
        self._stop_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(
            self._limits.bounds.header_timeout, self._cut, HEADERS_TOO_SLOW
        )

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cut(self, answer: bytes) -> None:
        """Answer with a fixed error and end the connection (aiohttp's half-read request
        is dropped)."""
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or self._view is None or self._view.closed:
            return
        _cut.hit()
        transport.write(answer)
        self._end(answered=True)

    def end(self) -> None:
        """aiohttp closes the connection: after an answer, or idle between requests."""
        self._end(answered=not (self._scan.reading and self._scan.seen == 0))

    def _end(self, *, answered: bool) -> None:
        """End the connection: aiohttp hears of it now, and the socket closes with a
        lingering close after an answer (at once when idle, or the server stops)."""
        view, transport = self._view, self._transport
        if view is None or view.closed or transport is None:
            return
        view.closed = True
        self._stop_timer()
        inner, self._inner = self._inner, None
        if inner is not None:  # as a transport would: soon, not from inside close()
            asyncio.get_running_loop().call_soon(inner.connection_lost, None)
        limits = self._limits
        if not answered or limits.closing or transport.is_closing():
            transport.close()  # connection_lost follows
            return
        limits.lingering[transport] = self
        linger(
            transport, seconds=LINGER, max_bytes=limits.bounds.linger_bytes, on_closed=self._closed
        )


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through :class:`_Guard` (on ``host:port``)."""

    __slots__ = ("_host", "_limits", "_port", "_reuse_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        *,
        reuse_port: bool = False,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limits = self._limits
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Guard(limits, server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )
