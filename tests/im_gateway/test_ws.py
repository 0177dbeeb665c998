"""``im_gateway/ws.py`` against the installed websockets: every internal name it relies
on still exists with the shape it expects, and one real connection runs through each
override (a text frame taken without ``recv()``, a declined one through ``recv()``,
frames written in one ``transport.write``, the socket counted and its slot given back).

A websockets release that renames or removes one of these fails here, not in production.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import contextlib
import inspect
import logging
import os
import sys
import tomllib
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import websockets
import websockets.asyncio.server
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.version import Version
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection as BaseConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Event, Protocol
from websockets.streams import StreamReader

from im_gateway import ws, ws_reads
from im_gateway.admission import ConnectionCaps, RejectionLog
from im_gateway.config import GatewayConfig
from im_gateway.descriptors import Sockets
from tests.end_to_end.harness import SECRET
from tests.helpers import endless_file, one_error_line, wait_until
from transmit_hub.types import UserId

ROOT = Path(__file__).resolve().parents[2]
INTERNALS = (
    "process_event",
    "recv_messages",
    "send_text",
    "data_to_send",
    "drain_waiters",
    "request_rcvd",
)
"""Names that only ``ws.py`` may use in ``im_gateway/``."""


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_the_installed_release_is_the_one_pinned() -> None:
    """The pin in pyproject.toml admits the installed release and nothing older or of a
    later major: no release this file has not checked."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [Requirement(r) for r in project["dependencies"] if r.startswith("websockets")]
    installed = Version(websockets.version.version)
    major, minor = installed.major, installed.minor
    older = f"{major}.{minor - 1}.99" if minor else f"{major - 1}.99"
    assert installed in pin.specifier, (installed, str(pin))
    assert not pin.specifier.contains(older), (older, str(pin))
    assert not pin.specifier.contains(f"{major + 1}.0"), str(pin)


def test_the_internal_names_exist_with_their_shapes() -> None:
    """Each method ``ws.Connection`` overrides or calls, with the parameters it passes."""
    assert issubclass(ws.Connection, ServerConnection)
    assert issubclass(ServerConnection, BaseConnection)
    assert _parameters(BaseConnection.process_event) == ["self", "event"]
    assert _parameters(BaseConnection.connection_made) == ["self", "transport"]
    assert _parameters(BaseConnection.connection_lost) == ["self", "exc"]
    assert _parameters(Protocol.send_text)[:2] == ["self", "data"]
    assert _parameters(Protocol.data_to_send) == ["self"]
    # ping_now writes these bytes itself: what websockets frames for a server's empty ping.
    assert Frame(Opcode.PING, b"").serialize(mask=False, extensions=[]) == ws.PING_FRAME
    assert Opcode.PING.name == "PING"
    assert Opcode.PONG.name == "PONG"
    assert {"opcode", "data", "fin"} <= set(Frame.__dataclass_fields__)
    assert Opcode.TEXT.name == "TEXT"
    assert Frame in typing.get_args(Event)
    assert inspect.isgeneratorfunction(StreamReader.at_eof)
    assert "self.parser = self.parse()" in inspect.getsource(Protocol.__init__)
    assert "self.reader = StreamReader()" in inspect.getsource(Protocol.__init__)
    # Attributes set in __init__ (not class attributes): read in the source.
    init = inspect.getsource(BaseConnection.__init__)
    names = ("self.protocol", "self.recv_messages", "self.paused", "self.response", "self.logger")
    for name in (*names, "self.drain_waiters"):
        assert f"{name} =" in init or f"{name}:" in init, name
    # send_now appends a framed text message where send_text() would (send_frame).
    protocol_init = inspect.getsource(Protocol.__init__)
    for name in ("writes", "extensions", "debug", "expect_continuation_frame"):
        assert f"self.{name} =" in protocol_init or f"self.{name}:" in protocol_init, name
    assert "self.writes.append(" in inspect.getsource(Protocol.send_frame)


def test_serve_hands_the_loop_what_create_connection_returns() -> None:
    """``ws.listen``'s TLS path relies on it: websockets' ``serve`` gives the loop, as each
    TCP connection's protocol, what ``create_connection`` returned (a ``TlsAccept``
    around the connection), and takes ``open_timeout`` (``--handshake-timeout``)."""
    source = inspect.getsource(websockets.asyncio.server.serve)
    assert "connection = create_connection(" in source
    assert "return connection" in source
    assert "loop.create_server(protocol_factory" in source
    assert "open_timeout" in _parameters(websockets.asyncio.server.serve)
    assert _parameters(ws.Connection.counted_at_accept) == ["self"]


def test_text_frame_is_what_websockets_serializes() -> None:
    """``ws.text_frame`` gives the bytes websockets' own server framing gives, at each
    length boundary of the header (7-bit, 16-bit, 64-bit lengths)."""
    for n in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        data = ("é" * (n // 2) + "x" * (n % 2)).encode()
        assert ws.text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False), n


def test_only_ws_touches_the_internals() -> None:
    """No other module of im_gateway/ names an internal that ``ws.py`` wraps."""
    for path in sorted((ROOT / "im_gateway").rglob("*.py")):
        if path.name == "ws.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & set(
            INTERNALS
        )
        assert not used, (path.relative_to(ROOT), used)


async def test_one_connection_runs_through_every_override() -> None:
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    caps = ConnectionCaps(per_user=1, total=10)
    user = UserId(7)
    taken: list[str] = []
    took_fast = asyncio.Event()
    seen: dict[str, object] = {}
    done = asyncio.Event()

    def receive_now(text: str) -> bool:
        taken.append(text)
        took_fast.set()
        return text == "fast"  # "slow" is declined: it must reach recv()

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        assert caps.admit(user) is None
        connection.user, connection.caps = user, caps
        seen["counted"] = (sockets.ws, sockets.handshaking)
        seen["response"] = connection.response is not None
        parsed = connection.request
        assert parsed is not None
        assert len(parsed.headers) > 3
        connection.handshake_done()
        # What only the handshake needed is gone: the parsed request's headers (its
        # parser keeps the object), the per-connection log adapter, the two deques.
        seen["leftovers"] = (
            len(parsed.headers),
            len(connection.request.headers) if connection.request else -1,
            isinstance(connection.logger, logging.LoggerAdapter),
            isinstance(connection.drain_waiters, collections.deque),
            isinstance(connection.recv_messages.frames.queue, collections.deque),
            len(connection.__dict__) <= 30,  # CPython shares the keys of up to 30
        )
        parsed_reads: list[bytes] = []
        receive_data = connection.protocol.receive_data

        def counted_read(data: bytes | bytearray) -> None:
            parsed_reads.append(bytes(data))
            receive_data(data)

        connection.protocol.receive_data = counted_read  # type: ignore[method-assign]
        seen["between"] = connection._between_frames()
        seen["ping"] = (connection.heard_at, connection.ping_now())
        await wait_until(lambda: connection.heard_at > 0, timeout=5, what="the pong")
        connection.protocol.receive_data = receive_data  # type: ignore[method-assign]
        seen["pong parsed"] = parsed_reads  # the pong was taken without the parser
        seen["after"] = (sockets.handshaking, connection.response, connection.request is not None)
        connection.receive_now = receive_now
        seen["recv"] = await connection.recv()
        transport = connection.transport
        writes: list[int] = []
        write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            write(data)

        transport.write = counted  # type: ignore[method-assign]
        assert connection.protocol.state is OPEN
        assert all(connection.send_now(f"out {i}") for i in range(3))
        await asyncio.sleep(0)  # the flush runs in the next loop iteration
        seen["writes"] = len(writes)
        transport.write = write  # type: ignore[method-assign]
        await connection.wait_closed()
        done.set()

    async with _serving(handler, ws.connection_class(sockets, RejectionLog())) as port:
        async with connect(f"ws://127.0.0.1:{port}/ws") as client:
            await wait_until(lambda: "after" in seen, timeout=5, what="the handler's first step")
            async with asyncio.timeout(5):
                await client.send("fast")
                await took_fast.wait()
                await client.send("slow")
                received = [await client.recv() for _ in range(3)]
        async with asyncio.timeout(5):
            await done.wait()
    assert seen["counted"] == (1, 1)
    assert seen["response"] is True
    assert seen["after"] == (0, None, True)  # upgraded; the response dropped, request kept
    assert seen["leftovers"] == (0, 0, False, False, False, True)
    assert seen["ping"] == (0.0, True)  # no pong before the ping; heard_at set by it
    assert seen["between"] is True
    assert seen["pong parsed"] == []
    assert taken == ["fast", "slow"]  # offered both; took "fast" without recv()
    assert seen["recv"] == "slow"
    assert received == ["out 0", "out 1", "out 2"]
    assert seen["writes"] == 1  # three frames, one system call
    assert (sockets.ws, caps.count) == (0, 0)  # connection_lost counted it out, slot back


async def test_a_text_sent_to_several_sockets_is_framed_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """send_now frames the same text object once for consecutive sockets (a user's devices,
    a large group's followers); every socket still gets exactly its own texts, in order,
    whatever the interleaving (equal texts that are other objects, one text again later)."""
    framings: list[bytes] = []
    text_frame = ws.text_frame

    def counted(data: bytes) -> bytes:
        framings.append(data)
        return text_frame(data)

    monkeypatch.setattr(ws, "text_frame", counted)
    connections: list[ws.Connection] = []
    closing = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        connections.append(connection)
        await closing.wait()

    shared = "".join(["the same ", "text"])  # built at run time: an object of its own
    again = "".join(["the same ", "text"])  # equal, but another object
    plan = [(0, shared), (1, shared), (2, shared), (0, "a"), (1, again), (0, shared), (2, "b")]
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    async with _serving(handler, ws.connection_class(sockets, RejectionLog())) as port:
        clients = [await connect(f"ws://127.0.0.1:{port}/ws") for _ in range(3)]
        try:
            await wait_until(lambda: len(connections) == 3, timeout=5, what="3 connections")
            server_side = {c.remote_address[1]: c for c in connections}
            ours = [server_side[c.local_address[1]] for c in clients]  # client i's connection
            framings.clear()
            for i, text in plan:
                assert ours[i].send_now(text)
            assert framings == [b"the same text", b"a", b"the same text", b"the same text", b"b"]
            for i, client in enumerate(clients):
                want = [text for k, text in plan if k == i]
                async with asyncio.timeout(5):
                    assert [await client.recv() for _ in want] == want
        finally:
            closing.set()
            for client in clients:
                await client.close()


async def _none() -> None:
    return None


@contextlib.asynccontextmanager
async def _serving(
    handler: Callable[[ServerConnection], Awaitable[None]], connection: type[ws.Connection]
) -> AsyncIterator[int]:
    """A gateway's WebSocket server (``ws.listen``) running ``handler`` with ``connection``
    objects, accepting every upgrade: its port, while the block runs."""
    config = GatewayConfig(listen="127.0.0.1:0", jwt_secret=SECRET)
    server = await ws.listen(
        handler,
        config,
        process_request=lambda connection, request: _none(),
        connection=connection,
        tls=None,
    )
    async with server:
        await server.start_serving()
        yield server.sockets[0].getsockname()[1]


async def test_pong_shaped_bytes_inside_a_frame_are_the_frame_s() -> None:
    """The six bytes of a client's pong, sent while a frame is under way (its header read,
    its payload not), are that frame's payload: only a pong between frames skips the
    parser."""
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    got: dict[str, object] = {}
    connected: list[ws.Connection] = []

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        connection.handshake_done()
        connected.append(connection)
        got["text"] = await connection.recv()
        got["heard_at"] = connection.heard_at

    text = b"pong!!"
    mask = bytes([0x8A ^ text[0], 0x80 ^ text[1], 0x20, 0x20])
    wire = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    assert wire[:2] == b"\x8a\x80"  # the payload as sent looks like a pong frame
    async with _serving(handler, ws.connection_class(sockets, RejectionLog())) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await wait_until(lambda: bool(connected), timeout=5, what="the upgrade")
            (connection,) = connected
            assert connection._between_frames()
            writer.write(bytes([0x81, 0x80 | len(text)]) + mask)  # a text frame's header
            await wait_until(lambda: not connection._between_frames(), timeout=5)
            writer.write(wire)  # its payload, six bytes shaped like a pong
            await wait_until(lambda: "text" in got, timeout=5, what="the frame")
        finally:
            writer.close()
    assert got == {"text": "pong!!", "heard_at": 0.0}


async def _upgrade_writes(first_frame: str | None) -> tuple[list[bytes], list[str], float]:
    """One upgrade on a counting gateway connection whose handler sends ``first_frame``
    (or nothing): the server's socket writes up to that frame (or the 101), what the client
    received, and how long its connect took."""
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    base = ws.connection_class(sockets, RejectionLog())
    writes: list[bytes] = []
    release = asyncio.Event()

    class Counted(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            write = transport.write  # type: ignore[attr-defined]

            def counted(data: bytes | bytearray | memoryview) -> None:
                writes.append(bytes(data))
                write(data)

            transport.write = counted  # type: ignore[attr-defined]
            super().connection_made(transport)

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        connection.handshake_done()
        if first_frame is not None:
            assert connection.send_now(first_frame)
        await release.wait()

    async with _serving(handler, Counted) as port:
        started = asyncio.get_running_loop().time()
        async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as client:
            took = asyncio.get_running_loop().time() - started
            received = [str(await client.recv())] if first_frame is not None else []
            release.set()
    return writes, received, took


async def test_the_101_goes_out_with_the_first_frame_in_one_write() -> None:
    """An accepted upgrade's 101 response and the connection's first frame (the connect
    replay's end marker, in the gateway) leave in one system call, not two."""
    writes, received, _ = await _upgrade_writes("first")
    assert received == ["first"]
    assert writes[0].startswith(b"HTTP/1.1 101 ")
    assert writes[0].endswith(b"\r\n\r\n" + ws.text_frame(b"first"))  # then the close


async def test_a_101_with_no_frame_after_it_still_goes_out_soon() -> None:
    """With no frame to go with it, the 101 is written after ``HOLD_101`` seconds: the
    client's connect completes (the hold is short and bounded)."""
    writes, _, took = await _upgrade_writes(None)
    assert writes[0].startswith(b"HTTP/1.1 101 ")
    assert writes[0].endswith(b"\r\n\r\n")
    assert took < ws.HOLD_101 + 2.0


async def test_wait_frame_returns_for_a_queued_frame_and_for_the_close() -> None:
    """An idle session waits in ``wait_frame`` (not in ``recv()``): it returns once a frame
    is queued for ``recv()`` (one ``receive_now`` declined), at once while one is queued,
    and once the connection is gone, when ``recv()`` raises."""
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    seen: list[object] = []
    done = asyncio.Event()

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        connection.handshake_done()
        connection.receive_now = lambda text: False  # every frame goes to recv()
        assert connection.send_now("ready")
        await connection.wait_frame()
        seen.append(await connection.recv())
        await connection.wait_frame()  # both frames came in one read: the second is queued
        seen.append(await connection.recv())
        await connection.wait_frame()
        try:
            await connection.recv()
        except websockets.ConnectionClosed:
            seen.append("closed")
        done.set()

    async with _serving(handler, ws.connection_class(sockets, RejectionLog())) as port:
        async with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as client:
            assert await client.recv() == "ready"
            client.protocol.send_text(b"one")
            client.protocol.send_text(b"two")
            client.send_data()  # both frames in one write
            await wait_until(lambda: len(seen) == 2, timeout=5, what="two frames")
        async with asyncio.timeout(5):
            await done.wait()
    assert seen == ["one", "two", "closed"]


def _client_frame(data: bytes, *, opcode: Opcode = Opcode.TEXT, fin: bool = True) -> bytes:
    """A frame as a client sends it (masked with a random key)."""
    return Frame(opcode, data, fin).serialize(mask=True)


@settings(deadline=None)  # a 64 KiB frame's every prefix: slow by design, not a hang
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
        st.sampled_from([125, 126, 127, 65535, 65536]).map(lambda n: b"x" * n),
    ),
    st.one_of(st.none(), st.integers(min_value=0, max_value=70_000)),
    st.sampled_from(["text", "binary", "fragment", "rsv1", "unmasked"]),
)
def test_masked_text_takes_what_websockets_parses_to_the_same_text(
    payload: bytes, limit: int | None, kind: str
) -> None:
    """``ws_reads.masked_text`` answers a frame only where websockets' own parser gives a whole
    final text frame within ``limit`` whose payload is UTF-8, with the same text and the
    position after it; every prefix of a frame is None (the parser waits for the rest)."""
    if kind == "unmasked":
        wire = Frame(Opcode.TEXT, payload).serialize(mask=False)
    else:
        opcode = Opcode.BINARY if kind == "binary" else Opcode.TEXT
        wire = _client_frame(payload, opcode=opcode, fin=kind != "fragment")
        if kind == "rsv1":  # as a compressed frame is marked
            wire = bytes((wire[0] | 0x40,)) + wire[1:]
    prefix = b"\x89\x00"  # any bytes before: the position is honoured
    got = ws_reads.masked_text(prefix + wire + b"\x81", len(prefix), limit)
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        text = None
    fits = len(payload) <= 65535 and (limit is None or len(payload) <= limit)
    if kind == "text" and text is not None and fits:
        assert got == (text, len(prefix) + len(wire))
        reader = StreamReader()
        reader.feed_data(wire)
        parser = Frame.parse(reader.read_exact, mask=True, max_size=limit)
        with pytest.raises(StopIteration) as parsed:
            next(parser)
        frame = parsed.value.value
        assert (frame.opcode, frame.fin, frame.data.decode()) == (Opcode.TEXT, True, text)
    else:
        assert got is None
    for cut in range(len(wire)):
        assert ws_reads.masked_text(wire[:cut], 0, limit) is None


async def _raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP client past the upgrade (it writes frames byte for byte)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer


async def test_whole_text_frames_of_a_read_are_taken_in_order_and_offered_once() -> None:
    """Text frames taken from a read without websockets' parser reach ``receive_now`` in
    order, each offered once; a declined one and every frame after it reach ``recv()`` in
    order (also a ping between them, answered), and a frame split across reads is whole."""
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    offered: list[str] = []
    received: list[str] = []
    ready = asyncio.Event()

    def receive_now(text: str) -> bool:
        offered.append(text)
        return not text.startswith("decline")

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        connection.handshake_done()
        connection.receive_now = receive_now
        ready.set()
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                received.append(str(await connection.recv()))

    async with _serving(handler, ws.connection_class(sockets, RejectionLog())) as port:
        reader, writer = await _raw_client(port)
        try:
            await asyncio.wait_for(ready.wait(), 5)
            split = _client_frame("é split".encode())
            writer.write(
                b"".join(_client_frame(t.encode()) for t in ("a", "b" * 300, "c")) + split[:5]
            )
            await wait_until(lambda: len(offered) == 3, timeout=5, what="three frames")
            writer.write(split[5:] + _client_frame(b"d"))
            await wait_until(lambda: len(offered) == 5, timeout=5, what="the split frame")
            writer.write(
                _client_frame(b"e")
                + _client_frame(b"decline 1")
                + _client_frame(b"f")
                + _client_frame(b"", opcode=Opcode.PING)
                + _client_frame(b"g")
            )
            await wait_until(lambda: len(received) == 3, timeout=5, what="recv()")
            pong = await asyncio.wait_for(reader.readexactly(2), 5)
        finally:
            writer.close()
    assert offered == ["a", "b" * 300, "c", "é split", "d", "e", "decline 1"]
    assert received == ["decline 1", "f", "g"]
    assert pong == b"\x8a\x00"


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (_client_frame(b"\xff\xfe"), 1007),  # not UTF-8
        (_client_frame(b"x" * 2000), 1009),  # beyond max_size
        (Frame(Opcode.TEXT, b"plain").serialize(mask=False), 1002),  # unmasked
    ],
)
async def test_a_bad_frame_after_taken_ones_closes_as_websockets_does(
    bad: bytes, code: int
) -> None:
    """The frames before a bad one in the same read are taken; the bad one is left to
    websockets' parser, which closes the connection with its code."""
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    offered: list[str] = []
    ready = asyncio.Event()

    def take(text: str) -> bool:
        offered.append(text)
        return True

    async def handler(connection: ServerConnection) -> None:
        assert isinstance(connection, ws.Connection)
        connection.handshake_done()
        connection.protocol.max_message_size = 1000
        connection.receive_now = take
        ready.set()
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:  # a frame that is not UTF-8 is refused by recv(), as websockets does
                await connection.recv()

    async with _serving(handler, ws.connection_class(sockets, RejectionLog())) as port:
        reader, writer = await _raw_client(port)
        try:
            await asyncio.wait_for(ready.wait(), 5)
            writer.write(_client_frame(b"ok") + bad + _client_frame(b"never"))
            head = await asyncio.wait_for(reader.readexactly(4), 5)
        finally:
            writer.close()
    assert offered == ["ok"]
    assert (head[0], int.from_bytes(head[2:4])) == (0x88, code)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_tls_file_that_never_ends_stops_the_start_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO no one writes or an endless device as the WebSocket port's --tls-cert: the
    gateway exits at once with one line naming the file, rather than hanging in OpenSSL."""
    cert = endless_file(tmp_path, kind)
    line = one_error_line(
        [sys.executable, "-m", "im_gateway", "--tls-cert", cert, "--tls-key", cert],
        env={**os.environ, "IM_GATEWAY_JWT_SECRET": SECRET},
    )
    assert f"{cert!r}" in line
    assert "not a regular file" in line
