"""The one module that touches websockets' internals (``tests/im_gateway/test_ws.py``
pins every name used here against the installed release).

:class:`Connection` is a ``ServerConnection`` that remembers its user and counts its
socket, and reads and writes text frames without a task switch each:

- ``process_event`` offers a complete text frame to ``receive_now`` while
  ``recv_messages.frames`` is empty (nothing is waiting in ``recv()``);
- ``data_received`` offers the whole text frames that start a read to ``receive_now``
  itself (:mod:`im_gateway.ws_reads`; the rest of the read goes through websockets);
- ``send_now`` frames a text message (:func:`text_frame`: a server frame with no
  extension is its header and the payload, so websockets' ``Frame`` object and its
  ``serialize`` are skipped; with an extension or a debug logger, ``protocol.send_text``)
  and writes everything queued in one loop iteration from ``protocol.data_to_send()``
  in one ``transport.write``;
- ``connection_made`` / ``connection_lost`` count the socket in
  :class:`~im_gateway.descriptors.Sockets` and give back the user's connection slot (over
  TLS the socket is counted at its accept, before its TLS handshake:
  :meth:`Connection.counted_at_accept`, :mod:`im_gateway.tls_accept`);
- ``ping_now`` writes a ping without a task or a future, and ``heard_at`` says when the
  client last sent a ping or a pong (the gateway's one keepalive sweep reads it);
- ``send_data`` holds an accepted upgrade's 101 for the first frame's write;
  ``wait_frame`` is where an idle session waits (one future), not in ``recv()``;
- an idle connection holds as little as it can: the gateway's own state is in one slotted
  object (more instance attributes would make every connection's ``__dict__`` a full
  table of its own, about 1.3 KB), and :meth:`Connection.handshake_done` drops the
  request's headers, the handshake response and the per-connection log adapter, and
  swaps two empty ``deque`` (about 760 bytes each) for lists.

:func:`listen` binds the port with the server's options (with TLS, the protocol the loop
gets is what ``create_connection`` returns: a :class:`~im_gateway.tls_accept.TlsAccept`
around the connection), :func:`tls_context` loads its certificate.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Event
from websockets.streams import StreamReader

from transmit_hub.errors import ConfigError
from transmit_hub.files import read_small_file
from transmit_hub.tls import PEM_MAX_BYTES
from transmit_hub.types import UserId

from . import descriptors, ws_reads
from .admission import ConnectionCaps, RejectionLog
from .config import GatewayConfig
from .errors import StartupError
from .flushes import Flushes
from .group_policy import GroupRights
from .tls_accept import Handshakes, TlsAccept

_TEXT_HEADS = tuple(bytes((0x81, n)) for n in range(126))
"""The header of an unmasked, final text frame of 0..125 bytes (RFC 6455, 5.2)."""
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
"""Longer frames' headers (compiled once: ``struct.pack`` looks its format up per call,
about 0.1 µs more per frame)."""


def text_frame(data: bytes) -> bytes:
    """A final, unmasked text frame carrying ``data``, as a server sends it with no
    extension: what websockets' ``Frame(TEXT, data).serialize(mask=False)`` gives."""
    n = len(data)
    if n < 126:
        return _TEXT_HEADS[n] + data
    if n < 65536:
        return _HEAD_16(0x81, 126, n) + data
    return _HEAD_64(0x81, 127, n) + data


_framed: list[tuple[str, bytes]] = [("", text_frame(b""))]
"""The text :meth:`Connection.send_now` framed last, and its frame (one pair, replaced
whole): a message sent to several sockets in a row (a user's devices, a large group's
followers) is encoded and framed once, not once per socket."""


class _State:
    """What the gateway keeps on a connection (one slotted object: see the module
    docstring)."""

    __slots__ = (
        "caps",
        "counted",
        "flush_scheduled",
        "group_rights",
        "handshaking",
        "heard_at",
        "held",
        "lists_groups",
        "lost",
        "receive_now",
        "user",
        "waiter",
    )

    def __init__(self) -> None:
        self.user: UserId | None = None
        self.group_rights: GroupRights | None = None
        self.lists_groups = False  # the client asked for the marker's groups (?groups=1)
        self.caps: ConnectionCaps | None = None
        self.lost = False
        self.counted = False
        self.handshaking = False
        self.receive_now: Callable[[str], bool] | None = None
        self.flush_scheduled = False
        self.heard_at = 0.0
        self.held = False  # the 101 waits in the protocol's writes for the first frame
        self.waiter: asyncio.Future[None] | None = None  # wait_frame()'s


class _ListQueue(list):  # type: ignore[type-arg]
    """The few ``deque`` methods websockets calls on a queue of frames, on a list: an
    empty list is 56 bytes, an empty deque 760 (it is nearly always empty here)."""

    __slots__ = ()

    def popleft(self) -> object:
        return self.pop(0)

    def extendleft(self, items: Iterable[object]) -> None:
        self[:0] = list(items)[::-1]


PING_FRAME = b"\x89\x00"
"""A ping frame as a server writes it: FIN, opcode 9, no mask, no payload (the same bytes
websockets' ``send_ping(b"")`` frames, without framing them again for every ping)."""

_AT_FRAME_START = StreamReader.at_eof.__code__
"""Where websockets' parser waits while no frame is under way (for its first byte)."""

HOLD_101 = 0.5
"""Seconds at most that an accepted upgrade's 101 waits to go out in one write with the
first frame (the connect replay's end marker, a few Redis round trips later)."""

_UPGRADED = Request("/ws", Headers())
"""What an upgraded connection keeps as its request (websockets treats later events as
frames while one is set); the real one, headers and all, is dropped."""


class Connection(ServerConnection):
    """A server connection that remembers its user, and reads and writes frames without
    a task switch each."""

    sockets: descriptors.Sockets | None = None
    """The gateway's socket counts (set on its own subclass: :func:`connection_class`)."""
    rejections: RejectionLog | None = None
    holding: list[Connection] | None = None
    """The connections whose 101 is held, for the one timer that writes those still
    held after :data:`HOLD_101` (set with ``sockets``)."""
    flushes = Flushes()  # one per process: what one loop iteration queued, in one callback

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gw = _State()
        self.drain_waiters = _ListQueue()  # type: ignore[assignment]  # append/remove/iterate

    # The gateway's state, by name (the slots are in ``gw``).

    @property
    def user(self) -> UserId | None:
        return self.gw.user

    @user.setter
    def user(self, value: UserId | None) -> None:
        self.gw.user = value

    @property
    def group_rights(self) -> GroupRights | None:
        return self.gw.group_rights

    @group_rights.setter
    def group_rights(self, value: GroupRights | None) -> None:
        self.gw.group_rights = value

    @property
    def lists_groups(self) -> bool:
        """The client asked (``?groups=1``) for its connect replay's end marker to list
        the large groups it follows (see :func:`im_gateway.frames.encode_replay_end`)."""
        return self.gw.lists_groups

    @lists_groups.setter
    def lists_groups(self, value: bool) -> None:
        self.gw.lists_groups = value

    @property
    def caps(self) -> ConnectionCaps | None:
        """Where ``user`` holds a slot; given back once, when the TCP connection is gone
        (a reference, not a closure per connection)."""
        return self.gw.caps

    @caps.setter
    def caps(self, value: ConnectionCaps | None) -> None:
        self.gw.caps = value

    @property
    def lost(self) -> bool:
        """The TCP connection is gone (it can be before ``process_request`` runs)."""
        return self.gw.lost

    @property
    def receive_now(self) -> Callable[[str], bool] | None:
        """Set by the gateway to :meth:`Session.receive_now`; None until the session runs."""
        return self.gw.receive_now

    @receive_now.setter
    def receive_now(self, value: Callable[[str], bool] | None) -> None:
        self.gw.receive_now = value

    @property
    def heard_at(self) -> float:
        """Loop time of the last ping or pong from the client (0: none yet)."""
        return self.gw.heard_at

    def process_event(self, event: Event) -> None:
        """Offer each complete text frame to ``receive_now`` while nothing waits for
        ``recv()``; frames it declines (and all others) go to ``recv()`` as usual."""
        handler = self.gw.receive_now
        if not isinstance(event, Frame):
            pass
        elif event.opcode is Opcode.PONG or event.opcode is Opcode.PING:
            self.gw.heard_at = self.loop.time()
        elif (
            handler is not None
            and event.opcode is Opcode.TEXT
            and event.fin
            and not len(self.recv_messages.frames)
        ):
            try:
                text = str(event.data, "utf-8")
            except UnicodeDecodeError:
                pass  # recv() closes the connection with 1007, as websockets does
            else:
                if handler(text):
                    return
        super().process_event(event)
        self._wake()

    async def wait_frame(self) -> None:
        """Return once ``recv()`` has something to return or raise: a frame queued for it,
        or the connection gone. An idle session waits here, on one future, instead of in
        ``recv()`` (three suspended coroutines and their future, about 0.6 KB more)."""
        if self._recv_ready():
            return
        waiter = self.gw.waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.gw.waiter = None

    def _recv_ready(self) -> bool:
        messages = self.recv_messages
        return bool(len(messages.frames)) or messages.closed or self.gw.lost

    def _wake(self) -> None:
        waiter = self.gw.waiter
        if waiter is not None and not waiter.done() and self._recv_ready():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        """A client's pong to our (empty) ping, alone in its read while no frame is under
        way, is taken here: its six bytes are known (FIN + pong, mask bit, no payload, the
        mask), and websockets' parser would only report it; so are text frames that start
        a read (:meth:`_take_texts`). Everything else goes through websockets."""
        first = data[0] if data else 0
        if first == 0x81:
            data = self._take_texts(data)
            if not data:
                return
        elif len(data) == 6 and first == 0x8A and data[1] == 0x80 and self._between_frames():
            self.gw.heard_at = self.loop.time()
            return
        super().data_received(data)

    def _take_texts(self, data: bytes) -> bytes:
        """Offer the whole text frames that start ``data`` (:func:`ws_reads.take_texts`)
        while the parser is between frames, as :meth:`process_event` would: what is left."""
        protocol = self.protocol
        handler = self.gw.receive_now
        if (
            handler is None
            or protocol.extensions
            or protocol.current_size is not None
            or len(self.recv_messages.frames)
            or not self._between_frames()
        ):
            return data
        limit, fragment = protocol.max_message_size, protocol.max_fragment_size
        if fragment is not None:
            limit = fragment if limit is None else min(limit, fragment)
        pos, declined = ws_reads.take_texts(data, limit, handler)
        if declined is not None:  # for recv(), as process_event() hands it on
            super().process_event(Frame(Opcode.TEXT, declined.encode()))
            self._wake()
        return data[pos:] if pos else data

    def _between_frames(self) -> bool:
        """websockets' parser waits for the first byte of a frame (none is under way)."""
        protocol = self.protocol
        if protocol.state is not OPEN or protocol.reader.buffer or protocol.debug:
            return False
        parser: Any = protocol.parser  # a generator: the one it delegates to, and so on
        while (inner := parser.gi_yieldfrom) is not None:
            parser = inner
        return parser.gi_code is _AT_FRAME_START

    def counted_at_accept(self) -> None:
        """Its TCP connection was counted when it was accepted, before its TLS handshake
        (:mod:`im_gateway.tls_accept`): ``connection_made`` counts it no more, and
        ``connection_lost`` gives the count back."""
        self.gw.counted = self.gw.handshaking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection, or answer it a fixed 503 at once (its request is never
        read) when too many handshakes are under way or the descriptors are low."""
        super().connection_made(transport)
        if self.sockets is None or self.gw.counted:
            return
        refused = self.sockets.open_ws()
        if refused is None:
            self.gw.counted = self.gw.handshaking = True
            return
        if self.rejections is not None:
            self.rejections.hit(f"{refused.status} at connect: {refused.reason}")
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        descriptors.refuse(transport, self, self.sockets)

    def send_data(self) -> None:
        """websockets writes what its protocol queued. The 101 of an accepted upgrade is
        held instead: it goes out with the first frame (:meth:`_flush`), with whatever
        websockets writes next, or after :data:`HOLD_101` seconds, whichever is first
        (two writes cost the gateway a system call and the client a wake-up more)."""
        gw = self.gw
        holding = self.holding
        if gw.handshaking and not gw.held and holding is not None and self.protocol.state is OPEN:
            gw.held = True
            if not holding:
                self.loop.call_later(HOLD_101, _write_held, holding)
            holding.append(self)
            return
        gw.held = False
        super().send_data()

    def handshake_done(self) -> None:
        """The connection is a WebSocket now: no longer a handshake under way.

        What only the handshake needed would otherwise stay with every idle connection,
        so it goes: the response and the request's headers and path (about 1.4, 2.5 and
        0.2 KB; a ``request`` must stay set: websockets routes later events as frames only
        while it is), the request's future, the log adapter made for this connection (websockets'
        own logger does), and the queue of frames becomes a list.
        """
        gw = self.gw
        if gw.handshaking and self.sockets is not None:
            gw.handshaking = False
            self.sockets.upgraded()
        self.response = None
        if self.request is not None:
            # The protocol's parser keeps the request it parsed (a local of its
            # generator, for the connection's life): empty its headers in place, and
            # drop its path (with the token in its query: about 200 bytes).
            self.request.headers.clear()
            self.request.path = _UPGRADED.path
        self.request = _UPGRADED
        self.request_rcvd = None  # type: ignore[assignment]  # done: read only before
        adapter = self.logger
        if isinstance(adapter, logging.LoggerAdapter):
            self.logger = self.protocol.logger = adapter.logger
        frames = self.recv_messages.frames
        if isinstance(frames.queue, collections.deque) and not frames.queue:
            frames.queue = _ListQueue()  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        gw = self.gw
        gw.lost = True
        if gw.counted and self.sockets is not None:
            gw.counted = False
            self.sockets.close_ws(handshaking=gw.handshaking)
        caps, gw.caps = gw.caps, None
        if caps is not None and gw.user is not None:
            caps.release(gw.user)
        self._wake()

    def send_now(self, message: str) -> bool:
        """Queue a text frame for writing in this loop iteration, unless the socket is
        backed up or not open (then False: the session's writer task waits for it).

        No task, no await: this socket's frames of one loop iteration go out in one write in
        the next (every socket's in one callback); what else websockets writes flushes them first.
        """
        protocol = self.protocol
        if self.paused or protocol.state is not OPEN:
            return False
        if protocol.extensions or protocol.debug or protocol.expect_continuation_frame:
            protocol.send_text(message.encode())
        else:  # what send_text() appends, without a Frame object per message
            last = _framed[0]
            if last[0] is message:  # the same text to several sockets: framed once
                frame = last[1]
            else:
                frame = text_frame(message.encode())
                _framed[0] = (message, frame)
            protocol.writes.append(frame)
        gw = self.gw
        if not gw.flush_scheduled:
            gw.flush_scheduled = True
            self.flushes.add(self)
        return True

    def ping_now(self) -> bool:
        """Write a ping (empty payload) at once, after any frame queued before it; False
        when the connection is not open. No task, no future: the pong (or the client's
        own ping) shows in :attr:`heard_at`."""
        if self.protocol.state is not OPEN or self.transport.is_closing():
            return False
        if self.gw.flush_scheduled or self.gw.held:
            self._flush()  # the 101 and the frames queued before it go first
        self.transport.write(PING_FRAME)
        return True

    def _flush(self) -> None:
        gw = self.gw
        gw.flush_scheduled = gw.held = False
        data = self.protocol.data_to_send()
        transport = self.transport
        if not data or transport.is_closing():
            return
        payload = data if all(data) else [chunk for chunk in data if chunk]  # b"": end of stream
        if payload:
            transport.write(payload[0] if len(payload) == 1 else b"".join(payload))
        if len(payload) != len(data):  # b"" asks for end of stream, as in send_data()
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()


def _write_held(holding: list[Connection]) -> None:
    """Write the 101 of every connection still holding it (its first frame is late)."""
    connections = holding[:]
    holding.clear()
    for connection in connections:
        if connection.gw.held:
            connection._flush()


def connection_class(sockets: descriptors.Sockets, rejections: RejectionLog) -> type[Connection]:
    """:class:`Connection` counting its sockets in one gateway's ``sockets``."""

    class GatewayConnection(Connection):
        pass

    GatewayConnection.sockets = sockets
    GatewayConnection.rejections = rejections
    GatewayConnection.holding = []
    return GatewayConnection


def peer(connection: ServerConnection) -> str:
    """The client's address, for log lines."""
    address = connection.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else "?"


async def listen(
    handler: Callable[[ServerConnection], Awaitable[None]],
    cfg: GatewayConfig,
    *,
    process_request: Callable[[ServerConnection, Request], Awaitable[Response | None]],
    connection: type[Connection],
    tls: Handshakes | None,
) -> Server:
    """Bind ``cfg.listen`` (not serving yet: ``start_serving()``); OSError when taken.

    With ``tls``, the port serves TCP and each connection runs its TLS handshake in
    :mod:`im_gateway.tls_accept`, counted from its accept: the protocol the loop gets is
    what ``create_connection`` returns (websockets passes it on as it is), a
    :class:`~im_gateway.tls_accept.TlsAccept` wrapping the connection."""
    create: Any = connection if tls is None else _tls_accepting(connection, tls)
    return await serve(
        handler,
        cfg.host,
        cfg.port,
        process_request=process_request,
        create_connection=create,
        open_timeout=cfg.handshake_timeout,  # the upgrade (TLS: in tls_accept)
        compression="deflate" if cfg.compression else None,
        max_size=cfg.max_frame_size,
        # Pings come from one sweeper task for all connections (sweep_idle),
        # not from a keepalive task per connection (about 1.6 KB each).
        ping_interval=None,
        ping_timeout=None,
        close_timeout=cfg.close_timeout,
        server_header=None,
        logger=logging.getLogger("websockets.server"),  # else looked up per connection
        start_serving=False,
        reuse_port=cfg.reuse_port or None,  # several gateway processes on one port
        backlog=cfg.listen_backlog,  # asyncio's 100 drops SYNs in a reconnect storm
    )


def _tls_accepting(connection: type[Connection], tls: Handshakes) -> Callable[..., TlsAccept]:
    """What websockets' ``serve`` calls for each TCP connection (as it would call
    ``connection``): the connection, wrapped until its TLS handshake is done."""

    def create(*args: Any, **kwargs: Any) -> TlsAccept:
        return tls.accept(connection(*args, **kwargs))

    return create


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files; StartupError naming them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        for path in (cert, key):  # OpenSSL would wait on a FIFO, or read a device forever
            read_small_file(path, PEM_MAX_BYTES)
        context.load_cert_chain(cert, key)
    except ConfigError as exc:
        raise StartupError(
            f"cannot load the TLS certificate {cert!r} and key {key!r}: {exc}"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise StartupError(
            f"cannot load the TLS certificate {cert!r} and key {key!r}: {detail}"
        ) from exc
    return context
