"""``im_gateway/ws.py`` against the installed websockets: every internal name it relies
on still exists with the shape it expects, and one real connection runs through each
override (a text frame taken without ``recv()``, a declined one through ``recv()``,
frames written in one ``transport.write``, the socket counted and its slot given back).

A websockets release that renames or removes one of these fails here, not in production.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import tomllib
import typing
from pathlib import Path

import websockets
from packaging.requirements import Requirement
from packaging.version import Version
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection as BaseConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Event, Protocol

from im_gateway import ws
from im_gateway.admission import ConnectionCaps, RejectionLog
from im_gateway.config import GatewayConfig
from im_gateway.descriptors import Sockets
from tests.end_to_end.harness import SECRET
from tests.helpers import wait_until
from transmit_hub.types import UserId

ROOT = Path(__file__).resolve().parents[2]
INTERNALS = ("process_event", "recv_messages", "send_text", "data_to_send")
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
    assert {"opcode", "data", "fin"} <= set(Frame.__dataclass_fields__)
    assert Opcode.TEXT.name == "TEXT"
    assert Frame in typing.get_args(Event)
    # Attributes set in __init__ (not class attributes): read in the source.
    init = inspect.getsource(BaseConnection.__init__)
    for name in ("self.protocol", "self.recv_messages", "self.paused", "self.response"):
        assert f"{name} =" in init or f"{name}:" in init, name
    # send_now appends a framed text message where send_text() would (send_frame).
    protocol_init = inspect.getsource(Protocol.__init__)
    for name in ("writes", "extensions", "debug", "expect_continuation_frame"):
        assert f"self.{name} =" in protocol_init or f"self.{name}:" in protocol_init, name
    assert "self.writes.append(" in inspect.getsource(Protocol.send_frame)


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
        connection.handshake_done()
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

    config = GatewayConfig(listen="127.0.0.1:0", jwt_secret=SECRET)
    server = await ws.listen(
        handler,
        config,
        process_request=lambda connection, request: _none(),
        connection=ws.connection_class(sockets, RejectionLog()),
        tls=None,
    )
    async with server:
        await server.start_serving()
        port = server.sockets[0].getsockname()[1]
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
    assert taken == ["fast", "slow"]  # offered both; took "fast" without recv()
    assert seen["recv"] == "slow"
    assert received == ["out 0", "out 1", "out 2"]
    assert seen["writes"] == 1  # three frames, one system call
    assert (sockets.ws, caps.count) == (0, 0)  # connection_lost counted it out, slot back


async def _none() -> None:
    return None
