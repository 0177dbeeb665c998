"""The fault soak's network: one process forwarding TCP links it can freeze or cut, one
link at a time (a gateway's way to one hub, or to its Redis), the others going on.

    python bench/chaos_proxy.py --control 127.0.0.1:7000 \\
        --link 'gw-1>hub-a=127.0.0.1:7001>127.0.0.1:50051' \\
        --link 'gw-1>redis=127.0.0.1:7002>127.0.0.1:6379'

Each ``--link NAME=LISTEN>TARGET`` listens on ``LISTEN`` and forwards every connection to
``TARGET``. The control port takes JSON lines and answers each with one line::

    {"link": "gw-1>hub-a", "do": "freeze"}
    {"ok": true, "link": "gw-1>hub-a", "state": "frozen", "connections": 2, ...}

- ``freeze``: a silent cut (a dead switch port). Nothing more is read from either side
  nor written; every socket stays open (no FIN, no RST), so the peers' buffers fill; a
  new connection is accepted and held the same way (it never gets a byte through; unlike
  behind a real silent cut, its ``connect()`` succeeds: the peer meets silence just after).
  On ``heal`` what was held goes on, even from a peer that gave up and closed meanwhile
  (as TCP delivers what it retransmits once a path is back).
- ``cut``: a cut with resets (a firewall's REJECT). Every connection of the link is reset
  (RST on both sides), and every new one is reset as soon as it is accepted.
- ``heal``: forward again (what a freeze held goes on; a cut's connections are gone).
- ``show`` (``link`` may be omitted: every link): the state and counters.

Buffers are bounded: a direction holds at most one read (:data:`CHUNK`) beyond the
transport's write buffer (its high-water mark), and a link at most ``--max-connections``
connections (more are reset and counted). A half-close is passed on (FIN for FIN), a
reset or a failed connect to the target as a reset. State changes are logged; each
connection only counted (``show``).

It runs apart from ``bench/chaos.py`` (its own process, as a network would be): stopping
the soak's processes never stops it. The parsing and the state rules are pure
(:func:`parse_link`, :func:`parse_command`, :func:`apply`), tested without sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import signal
import socket
import struct
import sys
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
"""The most one read takes from a socket (held, not written, if a freeze comes between)."""

MAX_CONNECTIONS = 256
"""``--max-connections``' default: a link's open connections at most (a peer retrying
against a frozen link opens one each try)."""

MAX_LINE = 4096
"""The longest control line."""


class State(enum.Enum):
    OPEN = "open"
    FROZEN = "frozen"
    CUT = "cut"


ACTIONS: dict[str, State] = {"freeze": State.FROZEN, "cut": State.CUT, "heal": State.OPEN}


@dataclass(frozen=True, slots=True)
class Link:
    name: str
    listen: tuple[str, int]
    target: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Command:
    do: str
    """``freeze``, ``cut``, ``heal`` or ``show``."""
    link: str | None
    """The link's name; ``None`` (``show`` only): every link."""


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r}")
    return host, int(port)


def parse_link(spec: str) -> Link:
    """``NAME=LISTEN>TARGET`` (the name may hold a ``>``: the last one splits the two
    addresses)."""
    name, sep, addresses = spec.partition("=")
    listen, sep2, target = addresses.rpartition(">")
    if not sep or not sep2 or not name:
        raise ValueError(f"not NAME=HOST:PORT>HOST:PORT: {spec!r}")
    return Link(name, _address(listen), _address(target))


def parse_command(line: bytes, links: Collection[str]) -> Command:
    """One control line, checked against the link names (ValueError says what is wrong)."""
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    do, link = obj.get("do"), obj.get("link")
    if do not in (*ACTIONS, "show"):
        raise ValueError(f"unknown do: {do!r} (freeze, cut, heal or show)")
    if link is None and do == "show":
        return Command(do, None)
    if not isinstance(link, str) or link not in links:
        raise ValueError(f"unknown link: {link!r}")
    return Command(do, link)


def apply(state: State, do: str) -> tuple[State, bool]:
    """The link's next state and whether its connections are to be reset now (a cut of a
    link not already cut)."""
    if do == "show":
        return state, False
    new = ACTIONS[do]
    return new, new is State.CUT and state is not State.CUT


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST), not a FIN: linger 0, then close."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LinkProxy:
    """One link: its listener, its connections, its state."""

    def __init__(self, link: Link, max_connections: int) -> None:
        self.link = link
        self.state = State.OPEN
        self.max_connections = max_connections
        self.counts: Counter[str] = Counter()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], list[asyncio.StreamWriter]] = {}

    async def start(self) -> None:
        host, port = self.link.listen
        self._server = await asyncio.start_server(self._accept, host, port, limit=CHUNK)

    def apply(self, do: str) -> None:
        self.state, cut = apply(self.state, do)
        if self.state is State.OPEN:
            self._open.set()
        else:
            self._open.clear()
        if cut and self._connections:
            self.counts["reset by cut"] += len(self._connections)
            for task, writers in list(self._connections.items()):
                for writer in writers:
                    reset(writer)
                task.cancel()

    def show(self) -> dict[str, object]:
        return {
            "link": self.link.name,
            "state": self.state.value,
            "connections": len(self._connections),
            **self.counts,
        }

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task, writers in list(self._connections.items()):
            for writer in writers:
                writer.transport.abort()
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["accepted"] += 1
        if self.state is State.CUT or len(self._connections) >= self.max_connections:
            self.counts["refused" if self.state is State.CUT else "over the bound"] += 1
            reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        writers = self._connections[task] = [writer]
        try:
            await self._open.wait()  # a connection made while frozen is held
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.link.target, limit=CHUNK)
            except OSError:
                self.counts["target refused"] += 1
                reset(writer)
                return
            writers.append(up_writer)
            await self._forward(reader, writer, up_reader, up_writer)
        except asyncio.CancelledError:
            pass  # a cut (it reset the sockets) or the end
        finally:
            del self._connections[task]

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Both directions until both ended (a FIN each way), or one was reset: then
        reset both sides."""
        pumps = {
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        }
        try:
            pending = pumps
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(not t.cancelled() and t.result() == "reset" for t in done):
                    self.counts["reset by a peer"] += 1
                    reset(writer)
                    reset(up_writer)
                    return
            writer.close()
            up_writer.close()
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.wait(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Forward one direction until its end: "eof" (passed on) or "reset"."""
        try:
            while True:
                await self._open.wait()
                data = await reader.read(CHUNK)
                if not data:
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()
                    return "eof"
                await self._open.wait()  # read just before a freeze: held, not written
                writer.write(data)
                await writer.drain()
        except OSError:
            return "reset"


class Proxy:
    """Every link, and the control port."""

    def __init__(self, links: Sequence[Link], max_connections: int = MAX_CONNECTIONS) -> None:
        self.links = {link.name: LinkProxy(link, max_connections) for link in links}
        self._control: asyncio.Server | None = None
        self.control_port = 0

    async def start(self, control: tuple[str, int]) -> None:
        for link in self.links.values():
            await link.start()
        self._control = await asyncio.start_server(self._serve, *control, limit=MAX_LINE)
        self.control_port = self._control.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._control is not None:
            self._control.close()
        for link in self.links.values():
            await link.close()

    def handle(self, line: bytes) -> dict[str, object]:
        """One control line's answer."""
        try:
            command = parse_command(line, self.links)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        if command.link is None:
            return {"ok": True, "links": [link.show() for link in self.links.values()]}
        link = self.links[command.link]
        before = link.state
        link.apply(command.do)
        if link.state is not before:
            log.info("%s: %s (%s)", command.link, link.state.value, command.do)
        return {"ok": True, **link.show()}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ValueError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                writer.write(json.dumps(self.handle(line)).encode() + b"\n")
                await writer.drain()
        writer.close()


async def control(port: int, do: str, link: str | None = None) -> dict[str, object]:
    """Send one command to a proxy's control port on 127.0.0.1; its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(json.dumps({"do": do, "link": link}).encode() + b"\n")
        answer: dict[str, object] = json.loads(await reader.readline())
        return answer
    finally:
        writer.close()


async def serve(links: Sequence[Link], control_at: tuple[str, int], max_connections: int) -> None:
    proxy = Proxy(links, max_connections)
    await proxy.start(control_at)
    log.info("%d links; control on port %d", len(links), proxy.control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--control", type=_address, required=True, help="HOST:PORT of commands")
    parser.add_argument(
        "--link",
        type=parse_link,
        action="append",
        default=[],
        help="NAME=LISTEN>TARGET (HOST:PORT each), repeated",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help="a link's open connections at most (more are reset)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.link, args.control, args.max_connections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
