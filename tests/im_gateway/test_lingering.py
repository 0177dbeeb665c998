"""The lingering close on real loopback sockets: the answer, then the FIN, then what the
client still sends is dropped until its end, the time bound or the byte bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest

from im_gateway.lingering import linger
from tests.helpers import wait_until

Start = Callable[[float, int], Awaitable["Server"]]
ANSWER = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Server:
    """A server that answers each connection at once and lingers with ``seconds`` and
    ``max_bytes``; ``ends`` holds each connection's end (its exception, or None)."""

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.ends: list[Exception | None] = []
        self.port = 0

    def protocol(self) -> asyncio.Protocol:
        server = self

        class Answering(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport = cast(asyncio.Transport, transport)
                transport.write(ANSWER)
                linger(
                    transport,
                    seconds=server.seconds,
                    max_bytes=server.max_bytes,
                    on_closed=server.ends.append,
                )

        return Answering()


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(seconds: float, max_bytes: int) -> Server:
        server = Server(seconds, max_bytes)
        listening = await asyncio.get_running_loop().create_server(server.protocol, "127.0.0.1", 0)
        servers.append(listening)
        server.port = listening.sockets[0].getsockname()[1]
        return server

    yield start
    for listening in servers:
        listening.close()
        await listening.wait_closed()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


async def test_a_client_still_sending_reads_the_answer_and_an_end(serve: Start) -> None:
    """A client that sends after the answer (unread by the server) reads the whole answer
    and an orderly end; its own close ends the connection, long before the bound."""
    server = await serve(30, 1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(10):
        writer.write(b"more of a request " * 100)
        await writer.drain()
    assert await read_all(reader) == ANSWER
    writer.close()
    await wait_until(lambda: server.ends == [None], what="the server's close")


async def test_past_the_byte_bound_the_connection_closes_at_once(serve: Start) -> None:
    """A client that sends on past ``max_bytes`` is closed then, not at the time bound."""
    server = await serve(30, 10_000)
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for _ in range(20):
            writer.write(b"x" * 4096)
            await writer.drain()
    except OSError:
        pass
    await wait_until(lambda: len(server.ends) == 1, timeout=5, what="the close at the byte bound")
    writer.close()


async def test_a_client_that_never_ends_is_closed_at_the_time_bound(serve: Start) -> None:
    """A client that neither sends nor closes is closed after ``seconds``, not before."""
    server = await serve(0.3, 1 << 20)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await read_all(reader) == ANSWER  # the FIN came with it
    await wait_until(lambda: len(server.ends) == 1, timeout=5, what="the close at the bound")
    assert time.monotonic() - started >= 0.3
    writer.close()


async def test_no_linger_closes_after_the_answer(serve: Start) -> None:
    """With ``seconds`` 0 the connection closes at once, after the answer."""
    server = await serve(0, 1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await read_all(reader) == ANSWER
    await wait_until(lambda: len(server.ends) == 1, what="the close")
    writer.close()
