"""bench/chaos.py's JavaScript devices (``--js-devices``): one Node process
(``bench/chaos_js.mjs``) runs a ``Client`` of ``im_gateway/static/client.js`` per device,
and :class:`JsClient` stands in for :class:`im_gateway.client.Client` in the soak with the
calls it makes (``send``, ``join``, ``leave``, ``messages``, ``close``, ``url``).

The two talk in JSON lines (the commands and events are listed in ``chaos_js.mjs``).
:func:`parse_event` reads one event, checked (pure); :class:`JsHost` owns the process:
it writes commands, reads events (each line at most :data:`MAX_LINE` bytes) and hands
them to the device or the call they are for. When the process exits or writes what is not
an event, :attr:`JsHost.died` says why, and every call waiting on it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from im_gateway.client import Message, Refused, Sent
from im_gateway.client_protocol import parse_message

logger = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parent / "chaos_js.mjs"
MAX_LINE = 1 << 20
"""Bytes in one event line, at most (a message's content is at most 64 KiB, six times
that once escaped)."""

Device = tuple[int, int]


class ChildGone(RuntimeError):
    """The Node process exited, or wrote what is not an event."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A call's answer: ``sent`` (a send's type 10), ``refused``, or neither (done)."""

    req: int
    sent: Sent | None = None
    refused: Refused | None = None


@dataclass(frozen=True, slots=True)
class Shown:
    dev: str
    message: Message


@dataclass(frozen=True, slots=True)
class Url:
    dev: str
    url: str | None


@dataclass(frozen=True, slots=True)
class Live:
    """The device's first connect replay ended."""

    dev: str


Event = Answer | Shown | Url | Live


def parse_event(line: bytes) -> Event:
    """One line of the Node process's stdout as an event; :class:`ValueError` when it is
    not one."""
    try:
        event = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise ValueError("not an object")
    kind, dev = event.get("ev"), event.get("dev")
    if kind == "answer":
        return answer(event)
    if not isinstance(dev, str):
        raise ValueError(f"{kind} event without a device")
    if kind == "message":
        frame = event.get("message")
        message = parse_message(frame) if isinstance(frame, dict) else None
        if message is None or type(message.type) is not int:
            raise ValueError(f"bad message {frame!r}")
        return Shown(dev, message)
    if kind == "url":
        url = event.get("url")
        if url is not None and not isinstance(url, str):
            raise ValueError(f"bad url {url!r}")
        return Url(dev, url)
    if kind == "live":
        return Live(dev)
    raise ValueError(f"unknown event {kind!r}")


def answer(event: dict[str, Any]) -> Answer:
    req = event.get("req")
    if type(req) is not int:
        raise ValueError(f"answer without a request number: {event!r}")
    code = event.get("code")
    if code is not None:
        return Answer(req, refused=Refused(str(code), str(event.get("message", ""))))
    if "msgId" not in event:
        return Answer(req)
    fields = [event.get(k) for k in ("clientId", "msgId", "time")]
    if not all(isinstance(f, str) and f for f in fields):
        raise ValueError(f"bad type 10 answer: {event!r}")
    client_id, msg_id, time = (str(f) for f in fields)
    return Answer(req, sent=Sent(client_id, msg_id, time))


def js_devices(devices: dict[int, list[Device]], count: int) -> set[Device]:
    """The ``count`` devices that run the JavaScript client: half of them (rounded up) the
    second devices of the first two-device users, the rest one-device users from the
    last; more of one kind when the other runs out."""
    pairs = [ds[1] for ds in devices.values() if len(ds) > 1]
    singles = [ds[0] for ds in reversed(devices.values()) if len(ds) == 1]
    if count > len(pairs) + len(singles):
        raise ValueError(f"--js-devices {count}: only {len(pairs) + len(singles)} devices fit")
    take_pairs = min(math.ceil(count / 2), len(pairs))
    take_singles = min(count - take_pairs, len(singles))
    take_pairs = count - take_singles
    return set(pairs[:take_pairs] + singles[:take_singles])


class JsHost:
    """The Node process and what waits on it."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self._process, self._log = process, log
        self._calls: dict[int, asyncio.Future[Answer]] = {}
        self._devices: dict[str, JsClient] = {}
        self._next = 0
        self._closing = False
        self.died: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, tools: Path, log: Path) -> JsHost:
        node = shutil.which("node")
        if node is None:
            raise SystemExit("--js-devices: node (20 or later) is missing")
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                node,
                str(SCRIPT),
                str(tools),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=MAX_LINE,
            )
        return cls(process, log)

    def open(self, me: Device, instance: int, urls: Sequence[str], token: str) -> JsClient:
        client = JsClient(self, f"{me[0]}.{me[1]}#{instance}", list(urls), token)
        self._devices[client.dev] = client
        self._write({"op": "open", "dev": client.dev, "urls": list(urls), "token": token})
        return client

    def forget(self, dev: str) -> None:
        self._devices.pop(dev, None)

    async def call(self, command: dict[str, Any]) -> Answer:
        if self.died.done():
            raise ChildGone(self.died.result())
        self._next += 1
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._calls[self._next] = future
        self._write({**command, "req": self._next})
        return await future

    def _write(self, command: dict[str, Any]) -> None:
        stdin = self._process.stdin
        if stdin is None or stdin.is_closing():
            self._die("its stdin is closed")
            return
        stdin.write(json.dumps(command).encode() + b"\n")

    async def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while True:
                try:
                    line = await stdout.readline()
                except ValueError:  # over MAX_LINE
                    self._die(f"it wrote a line over {MAX_LINE} bytes")
                    return
                if not line:
                    code = await self._process.wait()
                    self._die(f"it exited with status {code}")
                    return
                try:
                    event = parse_event(line)
                except ValueError as exc:
                    self._die(f"it wrote {line[:200]!r}: {exc}")
                    return
                self._dispatch(event)
        except OSError as exc:
            self._die(f"reading its output failed: {exc}")

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Answer):
            future = self._calls.pop(event.req, None)
            if future is not None and not future.done():
                future.set_result(event)
            return
        client = self._devices.get(event.dev)
        if client is None:
            return  # a closed device's (none come after its close is answered)
        if isinstance(event, Url):
            client.url = event.url
        elif isinstance(event, Live):
            client.replayed = True
        else:
            client.shown.put_nowait(event.message)

    def _die(self, why: str) -> None:
        if self._closing or self.died.done():
            return
        why = f"the JavaScript clients' Node process failed: {why} (its stderr: {self._log})"
        logger.error("%s", why)
        self.died.set_result(why)
        for future in self._calls.values():
            if not future.done():
                future.set_exception(ChildGone(why))
        self._calls.clear()
        for client in self._devices.values():
            client.shown.put_nowait(None)

    async def close(self) -> None:
        """End stdin (the process closes every client and exits), then wait for it."""
        self._closing = True
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class JsClient:
    """One JavaScript device, with the calls of :class:`im_gateway.client.Client` that the
    soak makes."""

    def __init__(self, host: JsHost, dev: str, urls: list[str], token: str) -> None:
        self._host, self.dev, self._urls, self._token = host, dev, urls, token
        self.url: str | None = None
        """The URL of the open connection, None while there is none."""
        self.replayed = False
        """Its first connect replay ended (the client went live)."""
        self.shown: asyncio.Queue[Message | None] = asyncio.Queue()
        self._closed = False

    async def _call(self, command: dict[str, Any]) -> Answer:
        if self._closed:
            raise Refused("closed", "the client was closed")
        answer = await self._host.call({**command, "dev": self.dev})
        if answer.refused is not None:
            raise answer.refused
        return answer

    async def send(self, *, to: int | None = None, group: int | None = None, content: str) -> Sent:
        target = {"to": to} if group is None else {"group": group}
        answer = await self._call({"op": "send", **target, "content": content})
        if answer.sent is None:
            raise ChildGone(f"{self.dev}: a send answered without a message id")
        return answer.sent

    async def join(self, group: int) -> None:
        await self._call({"op": "join", "group": group})

    async def leave(self, group: int) -> None:
        await self._call({"op": "leave", "group": group})

    async def messages(self) -> AsyncIterator[Message]:
        """What the client showed, until it is closed (every message it showed before)."""
        while (message := await self.shown.get()) is not None:
            yield message

    async def close(self) -> None:
        """``client.close()``; returns once every message it showed has been taken in."""
        if self._closed:
            return
        with contextlib.suppress(ChildGone):
            await self._call({"op": "close"})
        self._closed = True
        self.url = None
        self._host.forget(self.dev)
        self.shown.put_nowait(None)
