"""The one module that touches websockets' internals (``tests/im_gateway/test_ws.py``
pins every name used here against the installed release).

:class:`Connection` is a ``ServerConnection`` that remembers its user and counts its
socket, and reads and writes text frames without a task switch each:

- ``process_event`` offers a complete text frame to ``receive_now`` while
  ``recv_messages.frames`` is empty (nothing is waiting in ``recv()``);
- ``send_now`` frames a text message (:func:`text_frame`: a server frame with no
  extension is its header and the payload, so websockets' ``Frame`` object and its
  ``serialize`` are skipped; with an extension or a debug logger, ``protocol.send_text``)
  and writes everything queued in one loop iteration from ``protocol.data_to_send()``
  in one ``transport.write``;
- ``connection_made`` / ``connection_lost`` count the socket in
  :class:`~im_gateway.descriptors.Sockets` and give back the user's connection slot.

:func:`listen` binds the port with the server's options, :func:`tls_context` loads its
certificate.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Event

from transmit_hub.types import UserId

from . import descriptors
from .admission import ConnectionCaps, RejectionLog
from .config import GatewayConfig
from .errors import StartupError
from .group_policy import GroupRights

_TEXT_HEADS = tuple(bytes((0x81, n)) for n in range(126))
"""The header of an unmasked, final text frame of 0..125 bytes (RFC 6455, 5.2)."""


def text_frame(data: bytes) -> bytes:
    """A final, unmasked text frame carrying ``data``, as a server sends it with no
    extension: what websockets' ``Frame(TEXT, data).serialize(mask=False)`` gives."""
    n = len(data)
    if n < 126:
        return _TEXT_HEADS[n] + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


class Connection(ServerConnection):
    """A server connection that remembers its user, and reads and writes frames without
    a task switch each."""

    user: UserId | None = None
    group_rights: GroupRights | None = None
    caps: ConnectionCaps | None = None
    """Where ``user`` holds a slot; given back once, when the TCP connection is gone
    (a reference, not a closure per connection)."""
    lost = False
    """The TCP connection is gone (it can be before ``process_request`` runs)."""
    sockets: descriptors.Sockets | None = None
    """The gateway's socket counts (set on its own subclass: :func:`connection_class`)."""
    rejections: RejectionLog | None = None
    counted = False
    """This connection is counted in ``sockets`` (refused ones are not)."""
    handshaking = False
    receive_now: Callable[[str], bool] | None = None
    """Set by the gateway to :meth:`Session.receive_now`; None until the session runs."""
    _flush_scheduled = False

    def process_event(self, event: Event) -> None:
        """Offer each complete text frame to ``receive_now`` while nothing waits for
        ``recv()``; frames it declines (and all others) go to ``recv()`` as usual."""
        handler = self.receive_now
        if (
            handler is not None
            and isinstance(event, Frame)
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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection, or answer it a fixed 503 at once (its request is never
        read) when too many handshakes are under way or the descriptors are low."""
        super().connection_made(transport)
        if self.sockets is None:
            return
        refused = self.sockets.open_ws()
        if refused is None:
            self.counted = self.handshaking = True
            return
        if self.rejections is not None:
            self.rejections.hit(f"{refused.status} at connect: {refused.reason}")
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        descriptors.refuse(transport, self, self.sockets)

    def handshake_done(self) -> None:
        """The connection is a WebSocket now: no longer a handshake under way.

        Its handshake response (headers and all, about 1.4 KB) would otherwise stay with
        every idle connection, so it is dropped. (``request`` must stay: websockets
        routes later events as frames only while it is set.)
        """
        if self.handshaking and self.sockets is not None:
            self.handshaking = False
            self.sockets.upgraded()
        self.response = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost = True
        if self.counted and self.sockets is not None:
            self.counted = False
            self.sockets.close_ws(handshaking=self.handshaking)
        caps, self.caps = self.caps, None
        if caps is not None and self.user is not None:
            caps.release(self.user)

    def send_now(self, message: str) -> bool:
        """Queue a text frame for writing in this loop iteration, unless the socket is
        backed up or not open (then False: the session's writer task waits for it).

        No task, no await: frames are framed at once and every frame queued for this
        socket in one loop iteration goes out in a single ``transport.write`` (one
        system call instead of one per frame). Anything else websockets writes (a
        ping, the close frame) flushes them first, so the order is kept.
        """
        protocol = self.protocol
        if self.paused or protocol.state is not OPEN:
            return False
        if protocol.extensions or protocol.debug or protocol.expect_continuation_frame:
            protocol.send_text(message.encode())
        else:  # what send_text() appends, without a Frame object per message
            protocol.writes.append(text_frame(message.encode()))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.protocol.data_to_send()
        transport = self.transport
        if not data or transport.is_closing():
            return
        payload = [chunk for chunk in data if chunk]
        if payload:
            transport.write(payload[0] if len(payload) == 1 else b"".join(payload))
        if len(payload) != len(data):  # b"" asks for end of stream, as in send_data()
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()


def connection_class(sockets: descriptors.Sockets, rejections: RejectionLog) -> type[Connection]:
    """:class:`Connection` counting its sockets in one gateway's ``sockets``."""

    class GatewayConnection(Connection):
        pass

    GatewayConnection.sockets = sockets
    GatewayConnection.rejections = rejections
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
    tls: ssl.SSLContext | None,
) -> Server:
    """Bind ``cfg.listen`` (not serving yet: ``start_serving()``); OSError when taken."""
    return await serve(
        handler,
        cfg.host,
        cfg.port,
        process_request=process_request,
        create_connection=connection,
        compression="deflate" if cfg.compression else None,
        max_size=cfg.max_frame_size,
        # Pings come from one sweeper task for all connections (sweep_idle),
        # not from a keepalive task per connection (about 1.6 KB each).
        ping_interval=None,
        ping_timeout=None,
        close_timeout=cfg.close_timeout,
        server_header=None,
        ssl=tls,
        start_serving=False,
        reuse_port=cfg.reuse_port or None,  # several gateway processes on one port
    )


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files; StartupError naming them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise StartupError(
            f"cannot load the TLS certificate {cert!r} and key {key!r}: {detail}"
        ) from exc
    return context
