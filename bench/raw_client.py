"""The cheapest client that opens a gateway connection, for handshake benchmarks.

A load generator on the same 2 cores as the gateway takes what it spends from the
gateway: the lean client (websockets' sans-I/O protocol, ``e2e.LeanConnection``) costs
about 550 µs of CPU per connection opened, two thirds of the gateway's own. This one
writes a fixed opening request (RFC 6455: GET with ``Upgrade: websocket``, a constant
``Sec-WebSocket-Key``), checks the status line is ``101`` and waits for the gateway's
replay end marker (``"type":14``) in what follows; it frames nothing and parses no frame.
Only for opening connections and closing them (abruptly): it answers no ping.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast
from urllib.parse import urlsplit

import harness

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
"""RFC 6455's sample ``Sec-WebSocket-Key``: the gateway answers any valid one."""
MARKER = b'"type":14'
MAX_OPENING = 64 * 1024
"""Bytes read before the marker that make it a failed opening (nothing here is that big)."""


class RawHandshake(asyncio.Protocol):
    """One connection: the opening request out, ``opened`` done at the marker."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self._seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.opened.done():
            return
        seen = self._seen = self._seen + data
        if not seen.startswith(b"HTTP/1.1 101"[: len(seen)]):
            status = seen.split(b"\r\n", 1)[0].decode(errors="replace")
            self._fail(f"the gateway answered {status!r}, not 101")
        elif MARKER in seen:
            self.opened.set_result(None)
            self._seen = b""
        elif len(seen) > MAX_OPENING:
            self._fail(f"no replay end marker in the first {MAX_OPENING:,} bytes")

    def _fail(self, reason: str) -> None:
        self.opened.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the opening: {exc}"))
        self.closed.set()

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        await self.closed.wait()


def opening_request(url: str) -> bytes:
    """The opening request for a ``ws://`` or ``wss://`` URL (its token in the query)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


OPEN_TIMEOUT = 120.0
"""Seconds from connecting to the marker before a connection counts as failed."""


async def open_raw(url: str, source: str, tls: ssl.SSLContext | None = None) -> RawHandshake:
    """One connection from the local address ``source``, open once its marker came."""
    request = opening_request(url)
    conn = await harness.open_from(lambda: RawHandshake(request), url, source, tls)
    await asyncio.wait_for(conn.opened, OPEN_TIMEOUT)
    return conn
