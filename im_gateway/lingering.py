"""Closing a connection after its last answer so that the client reads it: a lingering close.

A server that closes its socket while the client is still sending (a request answered
before it was all read: 408, 431, 401, a refusal at connect) makes its kernel answer the
bytes that were unread, or that arrive after the close, with a reset instead of an
orderly end. The reset loses the answer: the client's next send fails, and asyncio's
streams, like many HTTP clients, then drop the connection with the answer unread (Linux
keeps it readable, but some systems discard it in the client's kernel too). RFC 9112, 9.6 describes it;
nginx's ``lingering_close``, Apache and h11 close in stages instead, and so does
:func:`linger`:

1. the answer is written and the sending side shut (``write_eof``: the FIN follows it);
2. what the client still sends is read and dropped;
3. the socket closes once the client closes its side too, after ``seconds``, or once more
   than ``max_bytes`` have arrived (a client that keeps sending gets its reset then: it
   has had the answer all that while), whichever comes first; ``abort``, so an answer a
   client never reads cannot hold the socket either.

The caller keeps counting the connection until ``on_closed``: a lingering connection holds
its descriptor, so it stays under the caller's connection bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

LINGER: Final = 2.0
"""Seconds a server API connection answered for the last time waits for the client's
end: the answer and the client's close need one round trip, and the API's clients are
the application's backends, near (Apache waits 2 s a read, 30 s in all; a lingering
connection here keeps its slot until a new connection needs it, and a short bound gives
the descriptors back sooner)."""


class Lingering(asyncio.Protocol):
    """A half-closed connection: what arrives is dropped, up to ``max_bytes``."""

    __slots__ = ("_left", "_on_closed", "_timer", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        max_bytes: int,
        on_closed: Callable[[Exception | None], None],
    ) -> None:
        self._transport = transport
        self._left = max_bytes
        self._on_closed = on_closed
        self._timer: asyncio.TimerHandle | None = None

    def start(self, seconds: float) -> None:
        """Close the transport after ``seconds`` (unless it ends before)."""
        self._timer = asyncio.get_running_loop().call_later(seconds, self._transport.abort)

    def data_received(self, data: bytes) -> None:
        self._left -= len(data)
        if self._left < 0:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the client has ended too: the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_closed(exc)


def linger(
    transport: asyncio.Transport,
    *,
    seconds: float,
    max_bytes: int,
    on_closed: Callable[[Exception | None], None],
) -> None:
    """Half-close ``transport`` (its last answer already written), drop what arrives, and
    close it when the client has closed its side, after ``seconds`` or past ``max_bytes``;
    ``on_closed`` hears of the end (once, as ``connection_lost`` would). With ``seconds``
    0, or without a half-close (TLS), it closes at once, after the answer."""
    lingering = Lingering(transport, max_bytes, on_closed)
    transport.set_protocol(lingering)
    if transport.is_closing():
        return  # already closing (the client's end came first): on_closed follows
    if seconds <= 0 or not transport.can_write_eof():
        transport.close()
        return
    transport.write_eof()
    if not transport.is_reading():
        transport.resume_reading()
    lingering.start(seconds)
