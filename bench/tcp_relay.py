"""The older design, in Python, as the benchmark's baseline: a plain asyncio TCP relay.

Frames are a 4-byte big-endian length followed by that many bytes of JSON. A client
connects, sends ``{"hello": "<gateway id>"}``, then frames::

    {"to": ["gw-2", ...], "users": {"gw-2": [42, ...], ...}, "message": {...}}

For each gateway id in ``to`` the relay writes one frame to that gateway's connection,
carrying only its share: ``{"users": [42, ...], "message": {...}}``. A target that is not
connected gets the sender a ``{"type": 100, "id": "<message id>", "gateway": "gw-2"}``
notice (the reference's "offline" reply, here with the message id it lacked).

It is the reference's design done right: frames are read with ``readexactly`` (a frame split
across TCP reads, or several frames in one read, are both fine), frames of any size up to
``MAX_FRAME`` work, connections are keyed by the declared gateway id and removed when they
close, and writes respect the transport's flow control (``drain``). It keeps the reference's
single-path structure: the sender's read loop writes straight to the target socket, with no
per-target queue, so one slow target stalls its senders (the fault the hub fixes).

Run it alone: ``python bench/tcp_relay.py --listen 127.0.0.1:0`` prints
``LISTENING <port>`` on stdout once it accepts connections, and stops on SIGINT/SIGTERM.
``python bench/tcp_relay.py --self-test`` checks the framing (split, glued and large frames).
``bench/relay.py`` starts it as a subprocess and drives it with :class:`RelayClient`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import struct
import sys
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

MAX_FRAME = 16 * 1024 * 1024
"""Frames larger than this close the connection (a bound on what one peer can make us buffer)."""

_HEADER = struct.Struct(">I")

Frame = dict[str, Any]


class FrameError(Exception):
    """A peer sent something that is not a valid frame."""


def encode(obj: Mapping[str, Any]) -> bytes:
    """One frame: the 4-byte big-endian length, then the compact JSON."""
    payload = json.dumps(obj, separators=(",", ":")).encode()
    return _HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame from ``reader``, or ``None`` at a clean end of stream."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("stream ended inside a frame header") from exc
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes is over the {MAX_FRAME} byte limit")
    try:
        payload = await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise FrameError("stream ended inside a frame") from exc
    try:
        obj = json.loads(payload)
    except ValueError as exc:
        raise FrameError("frame is not JSON") from exc
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")
    return obj


class TcpRelay:
    """The relay server. ``async with TcpRelay(port=0) as relay: relay.port``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._conns: dict[str, asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self.frames_in = 0
        self.frames_out = 0

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("relay not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        log.info("tcp relay listening on %s:%d", self._host, self.port)

    async def close(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in list(self._conns.values()):
            writer.close()
        self._conns.clear()
        if self._handlers:
            _, late = await asyncio.wait(self._handlers, timeout=2)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        await server.wait_closed()

    async def __aenter__(self) -> TcpRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        gateway_id: str | None = None
        try:
            hello = await read_frame(reader)
            if hello is None or not isinstance(hello.get("hello"), str) or not hello["hello"]:
                return
            gateway_id = hello["hello"]
            previous = self._conns.get(gateway_id)
            if previous is not None:
                previous.close()
            self._conns[gateway_id] = writer
            log.info("gateway %s attached", gateway_id)
            await self._relay(reader, writer)
        except (FrameError, ConnectionError) as exc:
            log.info("gateway %s dropped: %s", gateway_id, exc)
        finally:
            if gateway_id is not None and self._conns.get(gateway_id) is writer:
                del self._conns[gateway_id]
                log.info("gateway %s detached", gateway_id)
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns = self._conns
        while True:
            frame = await read_frame(reader)
            if frame is None:
                return
            self.frames_in += 1
            message = frame.get("message")
            users = frame.get("users")
            targets = frame.get("to")
            if not isinstance(message, dict) or not isinstance(users, dict):
                continue
            if not isinstance(targets, list):
                targets = list(users)
            for target in targets:
                out = conns.get(target) if isinstance(target, str) else None
                if out is None:
                    writer.write(encode({"type": 100, "id": message.get("id"), "gateway": target}))
                    await writer.drain()
                    continue
                out.write(encode({"users": users.get(target, []), "message": message}))
                self.frames_out += 1
                try:
                    await out.drain()
                except ConnectionError:
                    continue  # that target went away; its connection task cleans up


class RelayClient:
    """A gateway's side of the TCP relay: one connection, a hello, then frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, gateway_id: str) -> RelayClient:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(encode({"hello": gateway_id}))
        await writer.drain()
        return cls(reader, writer)

    async def send(self, frame: Mapping[str, Any]) -> None:
        """Write one frame; waits only while the transport's buffer is over its high mark."""
        self.writer.write(encode(frame))
        await self.writer.drain()

    async def recv(self) -> Frame | None:
        return await read_frame(self.reader)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def self_test() -> None:
    """Split frames, glued frames, a 100 KB frame and the offline notice, on a real socket."""
    async with TcpRelay() as relay:
        rx = await RelayClient.connect("127.0.0.1", relay.port, "b")
        tx = await RelayClient.connect("127.0.0.1", relay.port, "a")
        big = "x" * 100_000
        data = encode({"to": ["b"], "users": {"b": [1]}, "message": {"id": "1", "content": big}})
        data += encode({"to": ["b", "zz"], "users": {"b": [2, 3]}, "message": {"id": "2"}})
        for i in range(0, len(data), 7001):  # every write splits a frame; one glues two
            tx.writer.write(data[i : i + 7001])
            await tx.writer.drain()
            await asyncio.sleep(0.001)
        first, second, notice = await rx.recv(), await rx.recv(), await tx.recv()
        assert first == {"users": [1], "message": {"id": "1", "content": big}}, first
        assert second == {"users": [2, 3], "message": {"id": "2"}}, second
        assert notice == {"type": 100, "id": "2", "gateway": "zz"}, notice
    await tx.close()
    await rx.close()
    print("self-test passed: split and glued frames, a 100 KB frame, the offline notice")


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


async def _main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with TcpRelay(host=host, port=port) as relay:
        print(f"LISTENING {relay.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 0),
        help="HOST:PORT to listen on (port 0 picks a free one; default 127.0.0.1:0)",
    )
    parser.add_argument("--self-test", action="store_true", help="check the framing, then exit")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args(argv)
    if args.self_test:
        asyncio.run(self_test())
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(_main(*args.listen))
        else:
            asyncio.run(_main(*args.listen))
    except OSError as exc:
        print(f"tcp_relay: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
