"""Helpers for end-to-end tests: WebSocket clients, tokens and the hub's stats over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf import json_format
from websockets.asyncio.client import ClientConnection, connect

from devtools.launch import Process, free_port, gateway_argv
from im_gateway import auth
from tests.helpers import with_nofile
from transmit_hub.v1 import transmit_pb2, transmit_pb2_grpc

SECRET = "end-to-end-test-secret-of-at-least-32-bytes"

Frame = dict[str, Any]


def token(user: int, *, ttl: float = 3600, secret: str = SECRET) -> str:
    """A valid token for ``user``."""
    return auth.mint(user, secret, ttl=ttl)


class Client:
    """A real WebSocket client that keeps every frame it receives, in order."""

    def __init__(self, ws: ClientConnection, user: int) -> None:
        self.ws = ws
        self.user = user
        self.frames: list[Frame] = []
        self.arrivals: list[tuple[float, str]] = []
        """(monotonic time, message id) of each message frame (types 1 and 2)."""
        self.listeners: list[Callable[[Frame], None]] = []
        """Called with each frame as it arrives (after it is recorded)."""
        self._arrived = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self._counter = 0

    @classmethod
    async def open(
        cls, port: int, user: int, *, ack: bool = False, query: str = "", **kw: Any
    ) -> Client:
        """``query``: more of the URL's query (``"groups=1"``)."""
        more = f"&{query}" if query else ""
        ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token(user)}{more}", **kw)
        return cls(ws, user)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                frame = json.loads(data)
                if frame.get("type") in (1, 2):
                    self.arrivals.append((time.monotonic(), frame["id"]))
                self.frames.append(frame)
                self._arrived.set()
                for listener in self.listeners:
                    listener(frame)
        except Exception:
            pass
        finally:
            if not self.closed.done():
                self.closed.set_result(None)
            self._arrived.set()

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def next_id(self) -> str:
        self._counter += 1
        return f"u{self.user}-c{self._counter}"

    async def say(
        self, to: int, content: str, *, group: bool = False, cid: str | None = None
    ) -> Frame:
        """Send a message and return its ack (type 10) or refusal (type 99)."""
        cid = cid or self.next_id()
        await self.send(
            {"type": 2 if group else 1, "id": cid, "to": to, "contentType": 0, "content": content}
        )
        return await self.wait_for(lambda f: f.get("id") == cid and f["type"] in (10, 99))

    async def wait_for(
        self,
        match: Callable[[Frame], bool],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - a test deadline, not an I/O timeout
        what: str = "a frame",
    ) -> Frame:
        """The first received frame (old or new) that matches."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if match(frame):
                    return frame
            if self.closed.done():
                raise AssertionError(f"user {self.user}: socket closed while waiting for {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"user {self.user}: timed out waiting for {what}; got {self.frames[-5:]}"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def messages(self) -> list[Frame]:
        """Received message frames (types 1 and 2)."""
        return [f for f in self.frames if f["type"] in (1, 2)]

    def contents(self) -> list[str]:
        return [f["content"] for f in self.messages()]

    async def wait_contents(
        self,
        expected: list[str],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - a test deadline
    ) -> None:
        """Wait until every expected content arrived."""
        missing = set(expected)
        await self.wait_for(
            lambda _: missing.issubset(self.contents()),
            timeout=timeout,
            what=f"{len(expected)} messages",
        )

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def hub_stats(address: str) -> dict[str, Any]:
    """GetStats over gRPC, as the JSON grpcurl would print."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
        reply = await stub.GetStats(transmit_pb2.GetStatsRequest())
        return json_format.MessageToDict(reply)


async def change_group(client: Client, kind: int, group: int) -> None:
    """Join (type 12) or leave (13) ``group``, answered type 10."""
    cid = client.next_id()
    await client.send({"type": kind, "id": cid, "to": group})
    reply = await client.wait_for(lambda f: f.get("id") == cid)
    assert reply["type"] == 10, reply


def deliveries_to(stats: dict[str, Any], gateway_id: str) -> int:
    """``deliveriesSent`` toward ``gateway_id`` (0 when absent)."""
    for gw in stats.get("gateways", []):
        if gw.get("gatewayId") == gateway_id:
            return int(gw.get("deliveriesSent", 0))
    return 0


async def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """A plain HTTP/1.1 GET on 127.0.0.1: status, body and headers (lower-case names)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), body, hdrs


class GatewayProcess(Process):
    """``python -m im_gateway`` as a real child process (for crash and signal tests)."""

    def __init__(
        self,
        *,
        gateway_id: str,
        hub: str,
        redis_url: str,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        port: int | None = None,
        nofile: tuple[int, int] | None = None,
    ) -> None:
        """``nofile``: start the process with these (soft, hard) open-file limits."""
        self.port = port or free_port()
        self.gateway_id = gateway_id
        argv = gateway_argv(
            f"127.0.0.1:{self.port}",
            *("--gateway-id", gateway_id, "--hub", hub, "--redis-url", redis_url),
            *("--log-level", "WARNING", *extra),
        )
        if nofile:  # python -c LAUNCHER SOFT HARD -m im_gateway ...
            argv = [*with_nofile(*nofile), *argv[1:]]
        env = {"IM_GATEWAY_JWT_SECRET": SECRET, **(env or {})}
        super().__init__(gateway_id, argv, env=env, die_with_parent=False)
        self.start()

    async def wait_healthy(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - a deadline
        """Wait until /healthz answers 200 (linked to the hub, Redis answering)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}: {self.output()}")
            try:
                status, _, _ = await http_get(self.port, "/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not healthy after {timeout}s: {self.output()}")
            await asyncio.sleep(0.05)

    def stop(self, timeout: float = 0) -> None:
        """SIGKILL the process if it still runs (a stopped one too), and drop its log."""
        self.kill()
        super().stop()
        self.log_path.unlink(missing_ok=True)
