"""transmit-hub against python-socketio + Redis: the same clients, the same workload, one run.

    python bench/compare_socketio.py             # 100 pairs; paced 2,000 msgs/s, then 32 in flight
    python bench/compare_socketio.py --quick     # 20 pairs, short phases (about a minute)
    python bench/compare_socketio.py --help

Needs the ``bench`` extra (``pip install -e '.[bench]'``: python-socketio 5; aiohttp is
already a dependency of the gateway). What a Python team would build instead of this
project: python-socketio 5 on aiohttp, two servers sharing one Redis through
``socketio.AsyncRedisManager`` (Redis pub/sub), uvloop as the event loop. Each server
checks the same HS256 token on connect, puts the connection in the room ``user:<id>`` and,
for each ``msg`` event, emits it to the recipient's room (published on Redis; both servers
receive it and write it to their own members) and then acknowledges it (socket.io's ack,
sent once the publish returned). One setting differs from the defaults: the servers' Redis
connection pool holds up to ``--sio-redis-connections`` (1,000) instead of redis-py's 100
(see bench/README.md).

The other side is this project as ``bench/e2e.py`` runs it: a redis-server, a hub and two
gateways (metrics on, not scraped). Both sides get the same ``--clients`` (pairs, one user on
each server, every message crossing servers) from the same load generator: e2e.py's lean
client (websockets' sans-I/O protocol on a bare asyncio transport, uvloop) in ``--workers``
processes. For socket.io the client speaks the minimal Engine.IO 4 / Socket.IO 5 protocol
over that same WebSocket (websocket transport only, no long-polling: ``40`` connect with
the token, ``42<ack>["msg",{...}]`` events, ``43<ack>`` acks, ``2``/``3`` pings), a few
string operations per frame, so the client's cost stays as close as it gets to the e2e
client's. The clients' CPU is shown apart and not counted in the servers' CPU.

Phases (the same as e2e.py's): ``paced`` (``--rate`` msgs/s in total, p50/p99 latency send
-> receive) and ``saturated`` (every client keeps ``--window`` messages in flight until its
partner received them). Server CPU per delivered message: the servers' and Redis's CPU time
(from /proc) over the phase, over the messages delivered in it. ``--rounds`` runs of each
side, alternated (ours, socket.io, socket.io, ours, ...); the table shows medians.

Lost = acknowledged but not received once the phase drained (``--drain`` s); reordered = received after a later message of the
same sender (the send stamps in the content go up per sender).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import statistics
import sys
import time
from typing import Any

import e2e
import harness

SIDES = ("transmit-hub", "socket.io")
GUARANTEES = {
    "transmit-hub": "stored in the recipient's inbox before the ack; replay on reconnect; "
    "gap-free order per conversation",
    "socket.io": "at most once (Redis pub/sub keeps nothing: a server that is disconnected "
    "or slow, or a client that is offline, misses the message; no replay); the ack only "
    "says it was published; no order under load (handlers run as concurrent tasks)",
}

# --- the socket.io server (its own process: --serve PORT) ------------------------------------


async def serve(port: int, redis_url: str, secret: str, redis_connections: int) -> None:
    """A python-socketio server on aiohttp, sharing ``redis_url`` through AsyncRedisManager
    (its Redis connection pool capped at ``redis_connections``)."""
    import jwt
    import socketio
    from aiohttp import web

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=socketio.AsyncRedisManager(
            redis_url, redis_options={"max_connections": redis_connections}
        ),
        transports=["websocket"],
        logger=False,
        engineio_logger=False,
    )
    app = web.Application()
    sio.attach(app)
    users: dict[str, int] = {}

    async def connect(sid: str, environ: object, auth: dict[str, Any] | None) -> None:
        try:
            claims = jwt.decode(str((auth or {})["token"]), secret, algorithms=["HS256"])
        except (KeyError, jwt.InvalidTokenError) as exc:
            raise socketio.exceptions.ConnectionRefusedError("bad token") from exc
        users[sid] = int(claims["sub"])
        await sio.enter_room(sid, f"user:{users[sid]}")

    async def disconnect(sid: str, reason: object = None) -> None:
        users.pop(sid, None)

    async def msg(sid: str, data: dict[str, Any]) -> bool:
        out = {"id": data["id"], "from": users[sid], "content": data["content"]}
        await sio.emit("msg", out, room=f"user:{int(data['to'])}")
        return True  # the ack

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)
    sio.on("msg", msg)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


# --- the clients (worker processes: --worker SPEC) -----------------------------------------


class OrderedClient(e2e.Client):
    """e2e.py's client, also counting messages that arrive after a later one of its partner."""

    last_stamp = 0
    reordered = 0

    def check_order(self, stamp: int) -> None:
        if stamp < self.last_stamp:
            self.reordered += 1
        else:
            self.last_stamp = stamp

    def on_text(self, raw: str | bytes) -> None:
        data = raw.encode() if isinstance(raw, str) else raw
        if data.startswith(b'{"type":1,'):  # a message: its sender and send stamp
            try:  # without a second JSON parse, which would slow this side's clients
                at = data.index(b'"from":') + 7
                sender = int(data[at : data.index(b",", at)])
                at = data.index(b'"content":"') + 11
                stamp = int(data[at : data.index(b'"', at)])
            except ValueError:
                frame = json.loads(data)
                sender, stamp = int(frame["from"]), int(frame["content"])
            if sender == self.partner:
                self.check_order(stamp)
        super().on_text(raw)


class SocketIoClient(OrderedClient):
    """The same client speaking Socket.IO 5 over Engine.IO 4 on the same lean WebSocket."""

    def __init__(self, user: int, url: str, partner: int, token: str) -> None:
        super().__init__(user, url, partner)
        self.token = token

    async def connect(self, compression: str | None, impl: str) -> None:
        if impl != "lean":
            raise ValueError("the socket.io client runs on the lean WebSocket only")
        loop = asyncio.get_running_loop()
        # Set before connecting: the server's first packet may come with its handshake.
        self.lean = lean = e2e.LeanConnection(self.url, compression, self.on_text)
        await loop.create_connection(lambda: lean, "127.0.0.1", self.port)
        await asyncio.wait_for(lean.opened, 30)

    @property
    def port(self) -> int:
        from urllib.parse import urlsplit

        return urlsplit(self.url).port or 80

    def frame(self) -> str:
        self.seq += 1
        stamp = time.monotonic_ns()
        return (
            f'42{self.seq}["msg",{{"id":"{self.user}-{self.seq}","to":{self.partner},'
            f'"content":"{stamp}"}}]'
        )

    def on_text(self, raw: str | bytes) -> None:
        now = time.monotonic_ns()
        text = raw if isinstance(raw, str) else raw.decode()
        phase = self.phase
        assert self.lean is not None
        if text.startswith("42"):
            _, data = json.loads(text[2:])
            if int(data["from"]) != self.partner:
                phase.echoes += 1
                return
            msg_id = data["id"]
            if msg_id in phase.received_ids:
                phase.duplicates += 1
                return
            phase.received_ids.add(msg_id)
            phase.received += 1
            stamp = int(data["content"])
            self.check_order(stamp)
            if phase.window_start <= now <= phase.window_end:
                phase.in_window += 1
                phase.latencies_us.append((now - stamp) // 1000)
            if self.peer is not None:
                self.peer.delivered()
        elif text.startswith("43"):
            phase.acked += 1
            phase.acked_ids.add(f"{self.user}-{text[2 : text.index('[')]}")
        elif text == "2":
            self.lean.send_text("3")  # Engine.IO ping -> pong
        elif text.startswith("40"):
            self.replayed.set()  # connected to the namespace (in its room)
        elif text.startswith("0"):
            self.lean.send_text("40" + json.dumps({"token": self.token}))
        elif text.startswith("44"):
            phase.errors["connect_error"] += 1


async def worker(spec: dict[str, Any]) -> None:
    """A client process: connect its pairs, then run the phases the parent asks for."""
    secret, urls = spec["secret"], spec["urls"]
    clients: list[OrderedClient] = []
    for user_a in spec["users"]:
        pair: list[OrderedClient] = []
        side = (user_a // 2) % 2
        for user, partner, url in (
            (user_a, user_a + 1, urls[side]),
            (user_a + 1, user_a, urls[1 - side]),
        ):
            token = harness.mint_token(user, secret)
            if spec["side"] == "socket.io":
                pair.append(SocketIoClient(user, url, partner, token))
            else:
                pair.append(OrderedClient(user, f"{url}?token={token}", partner))
        pair[0].peer, pair[1].peer = pair[1], pair[0]
        clients += pair
    compression = None if spec["compression"] == "none" else "deflate"
    await e2e._connect_all(list(clients), compression, "lean", 50)
    connected = sum(c.replayed.is_set() for c in clients)
    print(f"READY {connected}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["phase"] == "quit":
            break
        for c in clients:
            c.phase = e2e.Phase()
            c.outstanding = 0
            c.reordered = 0
            c.room.set()
        if cmd["phase"] == "paced":
            await e2e._paced(list(clients), cmd["rate"], cmd["seconds"], cmd["warmup"])
        else:
            await e2e._unpaced(list(clients), cmd["window"], cmd["seconds"], cmd["warmup"])
        await e2e._drain(list(clients), cmd["drain"])
        summary = e2e._summary(list(clients)) | {"reordered": sum(c.reordered for c in clients)}
        print("RESULT " + json.dumps(summary), flush=True)
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# --- the orchestrator ----------------------------------------------------------------------


def start_socketio(started: list[harness.Child], secret: str, redis_connections: int) -> list[str]:
    """A redis-server and two socket.io servers sharing it; the servers' WebSocket URLs."""
    redis_port = harness.free_port()
    redis = harness.redis_server(redis_port).start()
    started.append(redis)
    redis.wait_port(redis_port)
    url = f"redis://127.0.0.1:{redis_port}/0"
    urls = []
    for name in ("sio-1", "sio-2"):
        port = harness.free_port()
        argv = [harness.PYTHON, __file__, "--serve", str(port), "--redis-url", url]
        argv += ["--sio-redis-connections", str(redis_connections)]
        server = harness.Child(name, [*argv, "--secret", secret]).start()
        started.append(server)
        server.wait_port(port)
        urls.append(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket")
    return urls


def start_ours(started: list[harness.Child], secret: str) -> list[str]:
    """A redis-server, a hub and two gateways; the gateways' WebSocket URLs."""
    ports = harness.start_stack(started, gateways=["gw-1", "gw-2"], secret=secret)
    return [f"ws://127.0.0.1:{ports[g]}/ws" for g in ("gw-1", "gw-2")]


async def run_side(args: argparse.Namespace, side: str) -> list[dict[str, Any]]:
    """One side's stack, its clients, both phases; each phase's merged figures."""
    secret = secrets.token_hex(32)
    results: list[dict[str, Any]] = []
    with harness.children() as started:
        if side == "socket.io":
            urls = start_socketio(started, secret, args.sio_redis_connections)
        else:
            urls = start_ours(started, secret)
        users = [1000 + 2 * p for p in range(args.clients // 2)]
        workers: list[e2e.Worker] = []
        try:
            for w in range(args.workers):
                spec = {
                    "secret": secret,
                    "urls": urls,
                    "users": users[w :: args.workers],
                    "compression": args.client_compression,
                    "side": side,
                }
                workers.append(await e2e.start_worker(__file__, spec))
            connected = sum([int(await wk.line("READY ", 120)) for wk in workers])
            print(f"{side}: {connected}/{len(users) * 2} clients connected", flush=True)
            if connected < len(users) * 2:
                raise RuntimeError(f"{side}: only {connected} clients connected")
            servers = [c.pid for c in started]
            cmds: list[dict[str, Any]] = []
            if args.rate > 0:
                cmds.append({"phase": "paced", "rate": args.rate / args.workers})
            if args.window > 0:
                cmds.append({"phase": "unpaced", "window": args.window})
            for cmd in cmds:
                cmd |= {"seconds": args.seconds, "warmup": args.warmup, "drain": args.drain}
                if args.wait_quiet > 0:
                    exclude = servers + [wk.proc.pid for wk in workers]
                    await asyncio.to_thread(harness.wait_quiet, args.wait_quiet, exclude=exclude)
                print(f"{side}: phase {cmd['phase']} ...", flush=True)
                meters = {
                    "servers": harness.CpuMeter(servers).start(),
                    "clients": harness.CpuMeter([wk.proc.pid for wk in workers]).start(),
                }
                total = harness.CpuMeter([]).start()
                t_phase = time.monotonic()
                for wk in workers:
                    wk.command(cmd)
                budget = args.warmup + args.seconds + args.drain + 60
                outs = [json.loads(await wk.line("RESULT ", budget)) for wk in workers]
                cpu = {name: m.stop()[0] for name, m in meters.items()}
                cpu["not ours"] = max(0.0, sum(total.stop()) - sum(cpu.values()))
                res = e2e.merge(cmd, outs, cpu, args)
                res["reordered"] = sum(o["reordered"] for o in outs)
                res["wall_s"] = time.monotonic() - t_phase
                res["server_us_per_msg"] = (
                    cpu["servers"] * res["wall_s"] * 1e6 / max(1, res["received"])
                )
                del res["cpu"]
                res["cpu"] = cpu
                results.append(res)
            for wk in workers:
                wk.command({"phase": "quit"})
            for wk in workers:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wk.proc.wait(), 30)
        finally:
            for wk in workers:
                if wk.proc.returncode is None:
                    wk.proc.kill()
                    await wk.proc.wait()
    return results


FIGURES = (
    ("delivered msgs/s", "delivered_per_s", "{:,.0f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("server CPU per delivered message (µs)", "server_us_per_msg", "{:.0f}"),
    ("servers' CPU (cores)", ("cpu", "servers"), "{:.2f}"),
    ("clients' CPU (cores, not counted above)", ("cpu", "clients"), "{:.2f}"),
    ("the rest of the machine (cores)", ("cpu", "not ours"), "{:.2f}"),
    ("lost (acked, not received by the end of the drain)", "lost", "{:,.0f}"),
    ("sent, neither acked nor refused", "unanswered", "{:,.0f}"),
    ("reordered", "reordered", "{:,.0f}"),
)


def _value(result: dict[str, Any], key: str | tuple[str, str]) -> float:
    if isinstance(key, tuple):
        return float(result[key[0]][key[1]])
    return float(result[key])


def report(runs: dict[str, list[list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    """Side by side: per phase and figure, each side's median over its runs."""
    rows = []
    phases = [r["phase"] for r in runs[SIDES[0]][0]]
    for i, phase in enumerate(phases):
        label = phase if phase.startswith("paced") else f"saturated ({args.window} in flight)"
        for name, key, fmt in FIGURES:
            cells = []
            for side in SIDES:
                values = [v for run in runs[side] if (v := _value(run[i], key)) == v]  # not NaN
                cells.append(fmt.format(statistics.median(values)) if values else "-")
            rows.append([f"{label}: {name}", *cells])
    headers = ["", "transmit-hub", "python-socketio + Redis"]
    n = len(runs[SIDES[0]])
    return "\n".join(
        [
            f"Medians of {n} run(s) per side, alternated. Server CPU: the servers' and Redis's",
            "(transmit-hub: 2 gateways + hub + Redis; socket.io: 2 servers + Redis), from /proc,",
            "over the phase, per message delivered in it; the clients' CPU is not in it.",
            "",
            harness.table(headers, rows),
            "",
            "What each side guarantees:",
            *(f"- {side}: {GUARANTEES[side]}" for side in SIDES),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="transmit-hub against python-socketio 5 + Redis (AsyncRedisManager): "
        "same clients, same workload, side by side."
    )
    parser.add_argument("--clients", type=int, default=200, help="WebSocket clients (pairs x 2)")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--rate", type=float, default=2000, help="paced total msgs/s (0 = skip)")
    parser.add_argument(
        "--window", type=int, default=32, help="saturated: messages in flight per client (0 = skip)"
    )
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up seconds per phase")
    parser.add_argument("--drain", type=float, default=15, help="max seconds for stragglers")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternated")
    parser.add_argument(
        "--client-compression",
        choices=["deflate", "none"],
        default="deflate",
        help="what the clients offer, like browsers (the gateway declines by default; "
        "aiohttp accepts)",
    )
    parser.add_argument(
        "--sio-redis-connections",
        type=int,
        default=1000,
        help="socket.io servers: Redis connections per server (redis-py's default, 100, fails "
        "publishes with 'Too many connections' under load; see bench/README.md)",
    )
    harness.add_run_options(parser, each="phase")
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--secret", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.timeline = False  # e2e.merge() reads it: no hop-by-hop stamps here
    if args.serve:
        serving = serve(args.serve, args.redis_url, args.secret, args.sio_redis_connections)
        harness.run_async(serving, loop="uvloop")
        return 0
    if args.worker:
        harness.run_async(worker(json.loads(args.worker)), loop="uvloop")
        return 0
    if args.quick:
        args.clients, args.seconds, args.warmup, args.drain, args.rounds = 40, 3.0, 1.0, 10.0, 1
        args.wait_quiet = min(args.wait_quiet, 1)
    try:
        import socketio  # noqa: F401
    except ImportError:
        parser.error("python-socketio is missing: pip install -e '.[bench]'")
    started = harness.start_run("python-socketio comparison", args)
    runs: dict[str, list[list[dict[str, Any]]]] = {side: [] for side in SIDES}
    for i in range(args.rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            print(f"== round {i + 1}/{args.rounds}: {side}", flush=True)
            runs[side].append(asyncio.run(run_side(args, side)))
    for side in SIDES:
        for run in runs[side]:
            for r in run:
                r.pop("latencies_us", None)
    return harness.finish_run(report(runs, args), started, args, runs)


if __name__ == "__main__":
    sys.exit(main())
