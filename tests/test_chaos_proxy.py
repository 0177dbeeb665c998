"""bench/chaos_proxy.py: its parsing and state rules, then a real link through it frozen
(nothing through, nothing closed), cut (both sides reset, new connections reset) and
healed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the soak imports it as ``chaos_proxy``

from chaos_proxy import (  # noqa: E402 - after the path it comes from
    Command,
    Link,
    Proxy,
    State,
    apply,
    control,
    parse_command,
    parse_link,
)

from tests.helpers import free_port, wait_until  # noqa: E402


def test_parse_link() -> None:
    """A link's name may hold ``>``; the addresses are checked."""
    assert parse_link("gw-1>hub-a=127.0.0.1:7001>127.0.0.1:50051") == Link(
        "gw-1>hub-a", ("127.0.0.1", 7001), ("127.0.0.1", 50051)
    )
    for bad in ("gw-1", "=1.2.3.4:1>1.2.3.4:2", "a=1.2.3.4:1", "a=1.2.3.4:0>1.2.3.4:2", "a=x>y:1"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_link(bad)


def test_parse_command() -> None:
    """Known actions on known links; ``show`` alone means every link."""
    links = {"gw-1>hub-a"}
    assert parse_command(b'{"do": "cut", "link": "gw-1>hub-a"}', links) == Command(
        "cut", "gw-1>hub-a"
    )
    assert parse_command(b'{"do": "show"}', links) == Command("show", None)
    for line, error in (
        (b"nope", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"do": "drop", "link": "gw-1>hub-a"}', "unknown do"),
        (b'{"do": "heal", "link": "gw-9>hub-a"}', "unknown link"),
        (b'{"do": "freeze"}', "unknown link"),
    ):
        with pytest.raises(ValueError, match=error):
            parse_command(line, links)


def test_apply() -> None:
    """Only a cut of a link not cut already resets its connections."""
    assert apply(State.OPEN, "freeze") == (State.FROZEN, False)
    assert apply(State.FROZEN, "cut") == (State.CUT, True)
    assert apply(State.CUT, "cut") == (State.CUT, False)
    assert apply(State.CUT, "heal") == (State.OPEN, False)
    assert apply(State.FROZEN, "show") == (State.FROZEN, False)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def proxied_echo() -> AsyncIterator[tuple[Proxy, int]]:
    """An echo server behind a one-link proxy; yields the proxy and the link's port."""
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = free_port()
    target = echo.sockets[0].getsockname()[1]
    proxy = Proxy([Link("a>b", ("127.0.0.1", port), ("127.0.0.1", target))])
    await proxy.start(("127.0.0.1", 0))
    try:
        yield proxy, port
    finally:
        await proxy.close()
        echo.close()
        await echo.wait_closed()


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping")
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(4), 5)


async def test_freeze_holds_cut_resets_heal_forwards() -> None:
    """Frozen: nothing through either way, no close; healed: what was held goes on; cut:
    the open connection and a new one are reset; healed again: new connections work."""
    async with proxied_echo() as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _roundtrip(reader, writer) == b"ping"
        answer = await control(proxy.control_port, "freeze", "a>b")
        assert answer["state"] == "frozen"
        assert answer["connections"] == 1
        writer.write(b"held")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.5)
        assert not reader.at_eof()
        late_reader, late_writer = await asyncio.open_connection("127.0.0.1", port)
        await control(proxy.control_port, "heal", "a>b")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
        assert await _roundtrip(late_reader, late_writer) == b"ping"

        answer = await control(proxy.control_port, "cut", "a>b")
        assert answer["state"] == "cut"
        assert answer["reset by cut"] == 2
        for r in (reader, late_reader):
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(10), 5)
        new_reader, new_writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(new_reader.read(10), 5)
        for w in (writer, late_writer, new_writer):
            w.close()
        await control(proxy.control_port, "heal", "a>b")
        await wait_until(lambda: proxy.links["a>b"].show()["connections"] == 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _roundtrip(reader, writer) == b"ping"
        shown = await control(proxy.control_port, "show")
        assert shown["links"] == [
            {"link": "a>b", "state": "open", "connections": 1, "accepted": 4, "reset by cut": 2}
            | {"refused": 1}
        ]
        writer.close()
        await writer.wait_closed()


async def test_target_gone_is_a_reset_and_fin_passes() -> None:
    """A FIN from the client reaches the target (the echo closes, so does the client's
    side); a target that refuses resets the client's connection."""
    async with proxied_echo() as (proxy, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    dead = free_port()
    proxy = Proxy([Link("a>gone", ("127.0.0.1", free_port()), ("127.0.0.1", dead))])
    await proxy.start(("127.0.0.1", 0))
    try:
        port = proxy.links["a>gone"].link.listen[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 5)
        writer.close()
        assert proxy.links["a>gone"].show()["target refused"] == 1
    finally:
        await proxy.close()
