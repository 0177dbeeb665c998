"""TLS on the WebSocket port, counted from the TCP accept.

The loop's ``create_server(ssl=...)`` (asyncio's and uvloop's) hands a connection to its
protocol only once the TLS handshake is done: until then a client that opens TCP and
sends nothing, or half a ClientHello, holds a descriptor that no limit of the gateway
sees. So the port serves plain TCP, and each connection's TLS handshake runs here:

- :meth:`TlsAccept.connection_made` counts the TCP connection in
  :class:`~im_gateway.descriptors.Sockets` at once, as a plain one is counted
  (``--max-handshakes``, ``--fd-reserve``), or closes it at once when it is refused (no
  TLS yet: there is nothing it could read); it stops reading before any byte is read;
- ``loop.start_tls`` (bounded by ``--handshake-timeout``) takes the socket before
  ``connection_made`` returns, then hands the TLS transport, and what the client sent
  right behind its handshake, to the WebSocket connection (told that it is counted
  already);
- whatever ends a handshake first (the bound, a TLS error, the client gone, the gateway
  closing: :meth:`Handshakes.close`) aborts the connection and gives its count back,
  once. Failed handshakes are counted (one log line now and then, and the
  ``handshakes_refused`` metric's ``tls_timeout`` and ``tls_failed``), never a line each.

The one module that leans on how the loops' ``start_tls`` works
(``tests/im_gateway/test_tls_accept.py`` pins it on asyncio's loop and on uvloop):

- its first step, before its one wait, pauses the socket and puts TLS in front of it
  (uvloop starts reading a socket right after ``connection_made`` returns, so that step
  runs inside it; a task would run it an iteration later, after the ClientHello may
  have been read);
- data, EOF and the connection's end can reach its protocol before it returns
  (asyncio's reads what came right behind the handshake at once; uvloop tells it of a
  timed-out handshake's end), and the TLS transport's ``set_protocol`` sends what comes
  later to the WebSocket connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol, cast

from .admission import Refusal, RejectionLog
from .descriptors import Sockets
from .throttle import Throttled

logger = logging.getLogger(__name__)

EARLY_MAX_BYTES: Final = 64 * 1024
"""What a client may send behind its TLS handshake before the WebSocket connection takes
the transport (an upgrade request is a few hundred bytes); past it, it is closed."""

TIMED_OUT: Final = "tls_timeout"
FAILED: Final = "tls_failed"
"""The reasons a TLS handshake that did not finish is counted under (a bounded set)."""


class Counted(Protocol):
    """The WebSocket connection a finished TLS handshake is handed to."""

    def counted_at_accept(self) -> None:
        """It holds a count taken at the accept (its ``connection_made`` takes none)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


def failure_reason(elapsed: float, timeout: float) -> str:
    """What a TLS handshake that ended after ``elapsed`` seconds, unfinished, counts as."""
    return TIMED_OUT if elapsed >= timeout else FAILED


class Handshakes:
    """The TLS handshakes under way on one gateway's WebSocket port, and their settings."""

    __slots__ = (
        "_failures",
        "context",
        "on_failed",
        "pending",
        "rejections",
        "shutdown_timeout",
        "sockets",
        "timeout",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        timeout: float,
        shutdown_timeout: float,
        sockets: Sockets,
        rejections: RejectionLog | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.shutdown_timeout = shutdown_timeout
        self.sockets = sockets
        self.rejections = rejections
        self.on_failed = on_failed
        """Told the reason (:data:`TIMED_OUT`, :data:`FAILED`) of each failed handshake."""
        self.pending: set[TlsAccept] = set()
        """The connections whose TLS handshake is under way."""
        self._failures = Throttled(
            logger,
            "%d TLS handshakes on the WebSocket port failed or timed out (--handshake-timeout)",
            interval=10.0,
            level=logging.INFO,
        )

    def accept(self, connection: Counted) -> TlsAccept:
        """The protocol of a new TCP connection, for ``connection`` once TLS is up."""
        return TlsAccept(self, connection)

    def refused(self, refusal: Refusal) -> None:
        """A TCP connection was closed at the accept (the metric is counted by
        :class:`Sockets`)."""
        if self.rejections is not None:
            self.rejections.hit(f"closed at connect, before TLS: {refusal.reason}")

    def failed(self, reason: str, exc: BaseException | None) -> None:
        """A TLS handshake ended unfinished: count it."""
        if self.on_failed is not None:
            self.on_failed(reason)
        self._failures.hit(exc=exc)

    def close(self) -> None:
        """Abort every handshake under way (the gateway closes; the port accepts no more)."""
        for accept in list(self.pending):
            accept.abort()
        self.pending.clear()


class TlsAccept(asyncio.Protocol):
    """One TCP connection from its accept until its TLS handshake is done: the raw
    socket's protocol, then ``start_tls``' own until the WebSocket connection takes over
    (what reaches it later goes on to that connection)."""

    __slots__ = (
        "_connection",
        "_counted",
        "_early",
        "_eof",
        "_handed",
        "_handshakes",
        "_started",
        "_starting",
        "_transport",
    )

    def __init__(self, handshakes: Handshakes, connection: Counted) -> None:
        self._handshakes = handshakes
        self._connection = connection
        self._transport: asyncio.Transport | None = None
        self._starting: Coroutine[Any, Any, asyncio.BaseTransport | None] | None = None
        self._started = 0.0
        self._counted = False  # holds a count in Sockets, given back or handed on once
        self._handed = False
        self._eof = False
        self._early = bytearray()

    @property
    def counted(self) -> bool:
        """This connection holds a count in :class:`Sockets` (the connection does not)."""
        return self._counted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection or close it at once; then start its TLS handshake here,
        before this returns: uvloop starts reading a socket right after its protocol's
        ``connection_made`` (a ``pause_reading`` there is undone), and a ClientHello must
        reach the TLS layer, not this protocol. ``start_tls``' first step (it pauses the
        socket, puts TLS in front of it and schedules the handshake) runs now; it is
        resumed, as a task would resume it, when the handshake's future is done."""
        raw = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        handshakes = self._handshakes
        refused = handshakes.sockets.open_ws()
        if refused is not None:
            handshakes.refused(refused)
            raw.abort()
            return
        self._counted = True
        self._transport = raw
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        handshakes.pending.add(self)
        self._starting = loop.start_tls(
            raw,
            self,
            handshakes.context,
            server_side=True,
            ssl_handshake_timeout=handshakes.timeout,
            ssl_shutdown_timeout=handshakes.shutdown_timeout,
        )
        self._step()

    def _step(self, _: object = None) -> None:
        """Run ``start_tls`` on to its next wait, or to its end."""
        starting = self._starting
        if starting is None:  # aborted
            return
        try:
            waiting = starting.send(None)
        except StopIteration as done:
            self._starting = None
            self._tls_up(done.value)
        except Exception as exc:
            self._starting = None
            self._tls_failed(exc)
        else:
            if isinstance(waiting, asyncio.Future):
                waiting.add_done_callback(self._step)
            else:  # a bare yield: on at the next iteration
                asyncio.get_running_loop().call_soon(self._step)

    def _tls_failed(self, exc: Exception) -> None:
        handshakes = self._handshakes
        handshakes.pending.discard(self)
        if self._transport is not None:
            self._end(self._transport)
        elapsed = asyncio.get_running_loop().time() - self._started
        handshakes.failed(failure_reason(elapsed, handshakes.timeout), exc)

    def _tls_up(self, tls: asyncio.BaseTransport | None) -> None:
        """Hand the TLS transport, and what came right behind the handshake, over."""
        self._handshakes.pending.discard(self)
        raw = self._transport
        assert raw is not None
        if tls is None or not self._counted or self._eof or tls.is_closing():
            self._end(raw)  # gone (or sending too much) right behind its handshake
            return
        connection = self._connection
        connection.counted_at_accept()
        self._counted = False  # the connection gives it back when it is lost
        self._handed = True
        tls.set_protocol(cast(asyncio.BaseProtocol, connection))
        connection.connection_made(tls)
        early, self._early = bytes(self._early), bytearray()
        if early:
            connection.data_received(early)

    def _end(self, raw: asyncio.Transport) -> None:
        """Close the connection at once and give its count back (once)."""
        raw.abort()
        if self._counted:
            self._counted = False
            self._handshakes.sockets.close_ws(handshaking=True)

    def abort(self) -> None:
        """End the handshake now (the gateway closes): not counted as a failure."""
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.close()  # start_tls closes the socket and cancels what it scheduled
        if self._transport is not None:
            self._end(self._transport)

    # What start_tls' transport tells its protocol: kept until the connection takes over.

    def data_received(self, data: bytes) -> None:
        if self._handed:
            self._connection.data_received(data)
            return
        self._early += data
        if len(self._early) > EARLY_MAX_BYTES and self._transport is not None:
            self._end(self._transport)

    def eof_received(self) -> bool | None:
        if self._handed:
            return self._connection.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handed:  # scheduled before set_protocol: it is the connection's
            self._connection.connection_lost(exc)
            return
        if self._counted:
            self._counted = False
            self._handshakes.sockets.close_ws(handshaking=True)
