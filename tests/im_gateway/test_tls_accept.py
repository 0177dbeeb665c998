"""``im_gateway/tls_accept.py`` on asyncio's loop and on uvloop (the gateway's), with real
TLS: a connection is counted from its TCP accept, refused at once beyond
``max_handshakes``, cut at the handshake's bound, and handed to the WebSocket connection
with what came right behind its handshake; its count is given back exactly once, however
it ends. These pin how each loop's ``start_tls`` treats its protocol (the module's one
reliance on the loops' internals)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
import uvloop

from devtools.certs import ServerCert, make_server_cert
from im_gateway.descriptors import Sockets
from im_gateway.tls_accept import FAILED, TIMED_OUT, Handshakes, failure_reason
from tests.helpers import tls_behind_handshake, wait_until

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's start
UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


class CountingSockets(Sockets):
    """:class:`Sockets` that also counts the counts given back."""

    __slots__ = ("gave_back",)

    def __init__(self, max_handshakes: int) -> None:
        super().__init__(limit=None, baseline=0, reserve=0, max_handshakes=max_handshakes)
        self.gave_back = 0

    def close_ws(self, *, handshaking: bool) -> None:
        self.gave_back += 1
        super().close_ws(handshaking=handshaking)


class Recorder(asyncio.Protocol):
    """Stands for the WebSocket connection: records what it is told, and gives its
    count back when it is lost (as ``ws.Connection`` does)."""

    def __init__(self, sockets: Sockets) -> None:
        self.sockets = sockets
        self.events: list[tuple[str, object]] = []
        self.counted = False
        self.transport: asyncio.Transport | None = None

    def counted_at_accept(self) -> None:
        self.counted = True
        self.events.append(("counted", None))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport.get_extra_info("ssl_object"), ssl.SSLObject)
        self.transport = transport  # type: ignore[assignment]
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", bytes(data)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", None))
        if self.counted:
            self.counted = False
            self.sockets.close_ws(handshaking=True)


class Served:
    """A TCP server whose connections run their TLS handshake in a :class:`Handshakes`."""

    def __init__(self, certs: ServerCert, *, max_handshakes: int, timeout: float) -> None:
        self.sockets = CountingSockets(max_handshakes)
        self.refusals: list[str] = []
        self.sockets.on_refused = self.refusals.append
        self.failures: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs.cert, certs.key)
        self.handshakes = Handshakes(
            context,
            timeout=timeout,
            shutdown_timeout=1.0,
            sockets=self.sockets,
            on_failed=self.failures.append,
        )
        self.connections: list[Recorder] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    def _accept(self) -> asyncio.Protocol:
        recorder = Recorder(self.sockets)
        self.connections.append(recorder)
        return self.handshakes.accept(recorder)

    async def __aenter__(self) -> Served:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.handshakes.close()
        for recorder in self.connections:
            if recorder.transport is not None:
                recorder.transport.abort()
        await wait_until(lambda: self.sockets.ws == 0, timeout=5, what="every count back")
        accepted = len(self.connections) - len(self.refusals)
        assert self.sockets.gave_back == accepted  # once each, however it ended
        assert self.sockets.handshaking == 0
        assert not self.handshakes.pending


def run(loop: str, scenario: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(scenario)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_server_cert(tmp_path_factory.mktemp("tls-accept"))


async def _read_end(reader: asyncio.StreamReader) -> bytes:
    """What the peer sent until it closed (a reset counts as closed)."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


def upgrade_behind_handshake(port: int, then_close: bool, context: ssl.SSLContext) -> None:
    """A TLS client whose Finished and upgrade request go out in one TCP write (the
    request arrives right behind the handshake); then it closes at once, or reads until
    the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        tls_behind_handshake(sock, context, UPGRADE)
        if then_close:
            return
        while sock.recv(65536):
            pass


@pytest.mark.parametrize("loop", LOOPS)
def test_start_tls_takes_the_socket_in_its_first_step(loop: str, certs: ServerCert) -> None:
    """What ``TlsAccept.connection_made`` relies on: ``start_tls``' first step, before it
    waits (on one future: the handshake's), pauses the socket and puts its TLS protocol in
    front of it; the coroutine can be closed there (``TlsAccept.abort``)."""

    async def scenario() -> None:
        seen: dict[str, object] = {}
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs.cert, certs.key)

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                raw = cast(asyncio.Transport, transport)
                starting = asyncio.get_running_loop().start_tls(
                    raw, self, context, server_side=True, ssl_handshake_timeout=5
                )
                waiting = starting.send(None)
                seen["future"] = isinstance(waiting, asyncio.Future) and not waiting.done()
                seen["reading"] = raw.is_reading()
                seen["protocol"] = raw.get_protocol() is not self
                starting.close()  # what TlsAccept.abort() does, then it aborts the socket
                raw.abort()

        server = await asyncio.get_running_loop().create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(_read_end(reader), 5) == b""
        writer.close()
        server.close()
        assert seen == {"future": True, "reading": False, "protocol": True}

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_clients_sending_their_hello_at_once_all_get_through(loop: str, certs: ServerCert) -> None:
    """Twenty TLS clients at once, each sending its ClientHello as soon as TCP is up (the
    loop may read it in the same iteration as the accept): every handshake finishes, none
    waits for the bound."""

    async def scenario() -> None:
        async with Served(certs, max_handshakes=50, timeout=20) as served:
            context = certs.client_context()

            async def one() -> asyncio.StreamWriter:
                _, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=context)
                return writer

            async with asyncio.timeout(10):
                writers = await asyncio.gather(*(one() for _ in range(20)))
            await wait_until(
                lambda: sum(1 for c in served.connections if c.events) == 20, what="20 handed"
            )
            assert served.failures == []
            for writer in writers:
                writer.close()

    run(loop, scenario())


def test_a_handshake_that_ends_unfinished_counts_as_timed_out_only_at_its_bound() -> None:
    """The reason a failed handshake is counted under: the bound reached, or not."""
    assert failure_reason(10.0, 10.0) == TIMED_OUT
    assert failure_reason(12.5, 10.0) == TIMED_OUT
    assert failure_reason(0.2, 10.0) == FAILED


@pytest.mark.parametrize("loop", LOOPS)
def test_stalled_handshakes_are_counted_then_cut_at_the_bound(loop: str, certs: ServerCert) -> None:
    """A client that sends nothing and one that sends half a ClientHello are counted from
    the accept, closed at the handshake's bound (not before), and their counts given back
    once; counted as timed out."""

    async def scenario() -> None:
        async with Served(certs, max_handshakes=5, timeout=0.5) as served:
            started = asyncio.get_running_loop().time()
            silent = await asyncio.open_connection("127.0.0.1", served.port)
            partial = await asyncio.open_connection("127.0.0.1", served.port)
            partial[1].write(PARTIAL_HELLO)
            await wait_until(lambda: served.sockets.handshaking == 2, what="both counted")
            assert served.sockets.ws == 2
            for reader, _ in (silent, partial):
                assert await asyncio.wait_for(_read_end(reader), 5) == b""
            assert asyncio.get_running_loop().time() - started >= 0.5
            await wait_until(lambda: served.sockets.ws == 0, what="both counts back")
            assert served.failures == [TIMED_OUT, TIMED_OUT]
            assert not served.handshakes.pending
            for _, writer in (silent, partial):
                writer.close()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_beyond_max_handshakes_a_connection_is_closed_at_once(loop: str, certs: ServerCert) -> None:
    """With two handshakes under way (the limit), a third TCP connection is closed at
    once and never counted; closing the handshakes aborts the two and gives both back."""

    async def scenario() -> None:
        async with Served(certs, max_handshakes=2, timeout=30) as served:
            held = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(2)]
            await wait_until(lambda: served.sockets.handshaking == 2, what="two counted")
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            assert await asyncio.wait_for(_read_end(reader), 2) == b""
            writer.close()
            assert served.refusals == ["handshakes"]
            assert (served.sockets.ws, served.sockets.handshaking) == (2, 2)
            served.handshakes.close()  # the gateway closes
            for held_reader, _ in held:
                assert await asyncio.wait_for(_read_end(held_reader), 2) == b""
            await wait_until(lambda: served.sockets.ws == 0, what="both counts back")
            assert served.failures == []  # aborted by the gateway: not a failure
            for _, held_writer in held:
                held_writer.close()

    run(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_gone_mid_handshake_is_counted_failed(loop: str, certs: ServerCert) -> None:
    """Half a ClientHello, then the client closes: the count comes back at once (long
    before the bound), counted as failed; so does a client speaking plain HTTP."""

    async def scenario() -> None:
        async with Served(certs, max_handshakes=5, timeout=30) as served:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(PARTIAL_HELLO)
            await wait_until(lambda: served.sockets.ws == 1, what="counted")
            writer.close()
            await wait_until(lambda: served.failures == [FAILED], what="the failure")
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(UPGRADE)  # plain HTTP to the TLS port
            assert await asyncio.wait_for(_read_end(reader), 5) == b""
            writer.close()
            await wait_until(lambda: served.failures == [FAILED] * 2, what="the second")
            await wait_until(lambda: served.sockets.ws == 0, what="both counts back")

    run(loop, scenario())


@pytest.mark.parametrize("then_close", [False, True], ids=["then-reads", "then-closes"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_request_right_behind_the_handshake_reaches_the_connection_once(
    loop: str, then_close: bool, certs: ServerCert
) -> None:
    """The client's Finished and its upgrade request in one TCP segment: the connection is
    told it is counted, then made, then gets the request whole, once, in that order (the
    loop may read it before start_tls returns); a client that closes right behind it
    still has its count given back once."""

    async def scenario() -> None:
        async with Served(certs, max_handshakes=5, timeout=5) as served:
            client = asyncio.create_task(
                asyncio.to_thread(
                    upgrade_behind_handshake, served.port, then_close, certs.client_context()
                )
            )

            if then_close:
                await asyncio.wait_for(client, 10)

            def settled() -> bool:
                events = [e for c in served.connections for e in c.events]
                got = b"".join(d for k, d in events if k == "data" and isinstance(d, bytes))
                given_back = served.sockets.gave_back == 1
                return got == UPGRADE or (then_close and given_back)

            await wait_until(settled, what="the request, or the count back")
            (recorder,) = served.connections
            if recorder.events:  # handed over
                kinds = [kind for kind, _ in recorder.events]
                assert kinds[:3] == ["counted", "made", "data"], recorder.events
                assert recorder.events[2][1] == UPGRADE
            if not then_close:
                assert recorder.events[:3] == [("counted", None), ("made", None), ("data", UPGRADE)]
                assert recorder.transport is not None
                recorder.transport.abort()
            await asyncio.wait_for(client, 10)
            await wait_until(lambda: served.sockets.ws == 0, what="the count back")

    run(loop, scenario())
