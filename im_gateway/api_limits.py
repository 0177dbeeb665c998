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

:class:`HeaderScan` is the pure part (fed bytes, says whether the block is complete or too
large); :class:`GuardedSite` is an aiohttp site whose protocol factory wraps aiohttp's
with :class:`_Guard`. The API's middleware tells the guard when a request starts and ends
(:meth:`ConnectionLimits.started`, :meth:`ConnectionLimits.finished`), so a body is never
counted as headers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from .descriptors import Sockets, refuse
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

    __slots__ = ("_guards", "bounds", "sockets")

    def __init__(self, bounds: Bounds, sockets: Sockets) -> None:
        self.bounds = bounds
        self.sockets = sockets
        self._guards: dict[asyncio.BaseTransport, _Guard] = {}

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


class _Guard(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the bounds of :class:`Bounds`."""

    __slots__ = ("_inner", "_limits", "_scan", "_server", "_timer", "_transport")

    def __init__(self, limits: ConnectionLimits, server: web.Server) -> None:
        self._limits = limits
        self._scan = HeaderScan(limits.bounds.max_header_bytes)
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        refused = self._limits.sockets.open_api(self._limits.bounds.max_connections)
        if refused is not None:
            _refused.hit()
            refuse(transport, self, self._limits.sockets, TOO_MANY)
            return
        self._transport = transport
        self._limits.register(transport, self)
        self._start_timer()
        self._inner = self._server()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        inner, self._inner = self._inner, None
        if inner is None:
            return
        self._limits.sockets.close_api()
        if self._transport is not None:
            self._limits.forget(self._transport)
        inner.connection_lost(exc)

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
        """Answer with a fixed error and close (aiohttp's half-read request is dropped)."""
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        _cut.hit()
        transport.write(answer)
        transport.close()


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
    ) -> None:
        super().__init__(runner)
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
