"""Relay benchmark: the transmit hub against a plain asyncio TCP relay, same run, same machine.

    python bench/relay.py             # full run, 3 interleaved rounds (2-4 minutes)
    python bench/relay.py --quick     # smoke run, under 20 s
    python bench/relay.py --help      # counts, rates, durations, --only
    python bench/relay.py --before REF --only hub  # that commit's hub vs this tree's

Each scenario runs ``--repeat`` times, interleaved (tcp, hub, tcp, hub, ...), each after
waiting (up to ``--wait-quiet`` s) for the rest of the machine to be idle; the table shows
the median run, and the ratios are taken per round (same conditions), then their median.

Each relay runs in its own process (the hub as ``python -m transmit_hub``, the baseline as
``python bench/tcp_relay.py``); this process holds the two clients (one sending gateway, one
receiving gateway) on one asyncio loop: two processes, like a hub and its gateways on the
2 cores of this machine. Everything is on 127.0.0.1 and every loop is bounded.

Scenarios, each with one small map (one message for one user on the other gateway) at a time:

- ``tcp saturated``: N frames as fast as the sender's socket takes them; msgs/s received.
- ``hub saturated``: N maps through ``HubLink.send`` as fast as it accepts them (on a False,
  "pending buffer full", the sender waits 1 ms and retries); the link batches by itself.
- ``hub max_batch=1``: the same with batching off: one map per gRPC frame.
- ``tcp paced`` / ``hub paced``: 2,000 msgs/s for a few seconds; latency send -> receive from a
  ``time.monotonic_ns()`` stamp carried in the message content; p50/p99 after a warm-up.

Targets (issue 2): saturated hub >= 1.5x the TCP relay's msgs/s; paced hub p99 <= 2x the TCP
relay's p99. The CPU columns say which process was the bottleneck (100% = one core);
"relay µs/msg" is the relay process's CPU time per message received, its cost whatever the
bottleneck; "other CPU" is what the rest of the machine used meanwhile (noise).

The TCP sender writes ``--burst`` frames per write call (like a buffered writer), which is
generous to the baseline: the relay reads many frames per system call. The relay itself
writes one frame per target per message, as the reference design does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import harness
from tcp_relay import RelayClient, encode


@dataclass
class Result:
    """One scenario's figures."""

    key: str
    """tcp, hub, hub1 (max_batch=1), tcp-paced, hub-paced."""
    name: str
    messages: int
    seconds: float
    received: int
    relay_cpu: float
    """CPU used by the relay process during the measured interval, in cores (1.0 = one core)."""
    client_cpu: float
    """CPU used by this (the clients') process, in cores."""
    other_cpu: float
    """CPU used by every other process on the machine meanwhile, in cores (noise)."""
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


class Receiver:
    """Counts received messages and their send -> receive latencies (ns)."""

    def __init__(self) -> None:
        self.count = 0
        self.refused = 0
        """Messages the relay said it could not pass on (hub: Undeliverable notices)."""
        self.latencies: list[int] = []
        self.first_ns = 0
        self.last_ns = 0
        self.target = 0
        self.done = asyncio.Event()

    def expect(self, n: int) -> None:
        self.count = 0
        self.refused = 0
        self.latencies = []
        self.first_ns = self.last_ns = 0
        self.target = n
        self.done = asyncio.Event()

    def got(self, now_ns: int, stamps: list[int]) -> None:
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns
        self.latencies.extend(now_ns - s for s in stamps)
        self.count += len(stamps)
        if self.count + self.refused >= self.target:
            self.done.set()

    def not_delivered(self, n: int) -> None:
        self.refused += n
        if self.count + self.refused >= self.target:
            self.done.set()


# --- the two systems under test, behind one small interface ------------------------------


class Pair:
    """A sending and a receiving gateway connected through one relay process."""

    name = ""
    relay: harness.Child
    receiver: Receiver

    async def send(self, i: int) -> None:
        """Hand message ``i`` to the relay (may wait while the sender is backpressured)."""
        raise NotImplementedError

    async def send_burst(self, first: int, n: int) -> None:
        """Hand messages ``first .. first + n - 1`` to the relay, back to back."""
        for i in range(first, first + n):
            await self.send(i)

    async def close(self) -> None:
        raise NotImplementedError


class TcpPair(Pair):
    name = "tcp relay"

    def __init__(self, relay: harness.Child, port: int) -> None:
        self.relay = relay
        self.port = port
        self.receiver = Receiver()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        self.rx = await RelayClient.connect("127.0.0.1", self.port, "gw-b")
        self.tx = await RelayClient.connect("127.0.0.1", self.port, "gw-a")
        self._tasks.append(asyncio.create_task(self._read()))

    async def _read(self) -> None:
        rx, receiver = self.rx, self.receiver
        while True:
            frame = await rx.recv()
            if frame is None:
                return
            message = frame.get("message")
            if message is None:
                continue  # an "offline" notice; never expected here
            receiver.got(time.monotonic_ns(), [int(message["content"])])

    @staticmethod
    def frame(i: int) -> dict[str, Any]:
        return {
            "to": ["gw-b"],
            "users": {"gw-b": [42]},
            "message": {
                "id": f"m-{i}",
                "from": 1,
                "to": 42,
                "type": 1,
                "contentType": 0,
                "time": int(time.time() * 1000),
                "content": str(time.monotonic_ns()),
            },
        }

    async def send(self, i: int) -> None:
        await self.tx.send(self.frame(i))

    async def send_burst(self, first: int, n: int) -> None:
        # Like a buffered writer (Go's bufio.Writer): n frames, one write call.
        self.tx.writer.write(b"".join(encode(self.frame(i)) for i in range(first, first + n)))
        await self.tx.writer.drain()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.tx.close()
        await self.rx.close()


class HubPair(Pair):
    name = "hub"

    def __init__(self, relay: harness.Child, port: int, *, max_batch: int | None) -> None:
        self.relay = relay
        self.port = port
        self.max_batch = max_batch
        self.receiver = Receiver()
        self.full_waits = 0
        self.notices: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def open(self, suffix: str) -> None:
        from transmit_hub import link as hub_link
        from transmit_hub import types as t

        self._message = t.Message
        self._message_id = t.MessageId
        self._transmit_map = t.TransmitMap
        self._user_id = t.UserId
        self._users = {t.GatewayId(f"gw-b{suffix}"): (t.Recipient(t.UserId(42)),)}
        kw: dict[str, Any] = {} if self.max_batch is None else {"max_batch": self.max_batch}
        target = f"127.0.0.1:{self.port}"
        self.rx = hub_link.HubLink(target, t.GatewayId(f"gw-b{suffix}"), **kw)
        self.tx = hub_link.HubLink(target, t.GatewayId(f"gw-a{suffix}"), **kw)
        await self.rx.start()
        await self.tx.start()
        await self.rx.wait_connected(15)
        await self.tx.wait_connected(15)
        self._tasks.append(asyncio.create_task(self._read()))
        self._tasks.append(asyncio.create_task(self._read_notices()))

    async def _read(self) -> None:
        from transmit_hub import link as hub_link

        receiver = self.receiver
        async for event in self.rx.events():
            if isinstance(event, hub_link.Delivered):
                receiver.got(
                    time.monotonic_ns(), [int(d.message.content) for d in event.deliveries]
                )

    async def _read_notices(self) -> None:
        from transmit_hub import link as hub_link

        async for event in self.tx.events():
            if isinstance(event, hub_link.NotDelivered):
                self.notices.update(n.reason.name for n in event.notices)
                self.receiver.not_delivered(sum(len(n.message_ids) for n in event.notices))

    async def send(self, i: int) -> None:
        tmap = self._transmit_map(
            message=self._message(
                id=self._message_id(f"m-{i}"),
                sender=self._user_id(1),
                to=42,
                type=1,
                content_type=0,
                time=int(time.time() * 1000),
                content=str(time.monotonic_ns()),
            ),
            users=self._users,
        )
        while not self.tx.send(tmap):
            self.full_waits += 1
            await asyncio.sleep(0.001)  # pending buffer full: wait for the writer to make room

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.tx.close()
        await self.rx.close()


# --- the measurements ----------------------------------------------------------------------


async def saturated(
    pair: Pair, key: str, name: str, n: int, warmup: int, wait_s: float, burst: int
) -> Result:
    """Send ``n`` messages back to back; rate = received / (last receive - first send)."""
    receiver = pair.receiver
    if warmup:
        receiver.expect(warmup)
        for i in range(0, warmup, burst):
            await pair.send_burst(i, min(burst, warmup - i))
            await asyncio.sleep(0)
        await asyncio.wait_for(receiver.done.wait(), wait_s)
    receiver.expect(n)
    meter = harness.CpuMeter([pair.relay.pid]).start()
    t0 = time.monotonic_ns()
    for i in range(0, n, burst):
        await pair.send_burst(i, min(burst, n - i))
        await asyncio.sleep(0)  # let the receiving side (same loop) run between bursts
    note = ""
    try:
        await asyncio.wait_for(receiver.done.wait(), wait_s)
    except TimeoutError:
        note = f"only {receiver.count}/{n} arrived within {wait_s:.0f}s"
    if receiver.refused:
        note = f"{note} {receiver.refused} not delivered (notices)".strip()
    relay_cpu, client_cpu, other_cpu = meter.stop()
    t1 = receiver.last_ns or time.monotonic_ns()
    return Result(
        key=key,
        name=name,
        messages=n,
        seconds=(t1 - t0) / 1e9,
        received=receiver.count,
        relay_cpu=relay_cpu,
        client_cpu=client_cpu,
        other_cpu=other_cpu,
        note=note,
    )


async def paced(
    pair: Pair, key: str, name: str, rate: float, seconds: float, warmup_s: float, wait_s: float
) -> Result:
    """Send at ``rate`` msgs/s for ``warmup_s + seconds``; latencies after the warm-up."""
    receiver = pair.receiver
    warm = int(rate * warmup_s)
    total = warm + int(rate * seconds)
    receiver.expect(total)
    interval = 1.0 / rate
    start = time.monotonic()
    meter = harness.CpuMeter([pair.relay.pid])
    t_measure = 0
    i = 0
    while i < total:
        if i == warm:
            meter.start()
            t_measure = time.monotonic_ns()
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        now = time.monotonic()
        while i < total and start + i * interval <= now:
            await pair.send(i)
            i += 1
            if i == warm:
                break
    note = ""
    try:
        await asyncio.wait_for(receiver.done.wait(), wait_s)
    except TimeoutError:
        note = f"only {receiver.count}/{total} arrived within {wait_s:.0f}s"
    if receiver.refused:
        note = f"{note} {receiver.refused} not delivered (notices)".strip()
    relay_cpu, client_cpu, other_cpu = meter.stop()
    measured = sorted(receiver.latencies[warm:])
    ms = [v / 1e6 for v in measured]
    end = receiver.last_ns or time.monotonic_ns()
    return Result(
        key=key,
        name=name,
        messages=total - warm,
        seconds=(end - t_measure) / 1e9,
        received=max(0, receiver.count - warm),
        relay_cpu=relay_cpu,
        client_cpu=client_cpu,
        other_cpu=other_cpu,
        p50_ms=harness.percentile(ms, 50),
        p99_ms=harness.percentile(ms, 99),
        max_ms=ms[-1] if ms else None,
        note=note,
    )


# --- the run -------------------------------------------------------------------------------


def start_tcp_relay(started: list[harness.Child], loop: str) -> tuple[harness.Child, int]:
    argv = [harness.PYTHON, str(harness.REPO / "bench" / "tcp_relay.py")] + (
        ["--uvloop"] if loop == "uvloop" else []
    )
    child = harness.Child("tcp-relay", argv).start()
    started.append(child)
    port = int(child.wait_line("LISTENING ", timeout=15).split()[1])
    return child, port


def start_hub(started: list[harness.Child]) -> tuple[harness.Child, int]:
    port = harness.free_port()
    child = harness.Child("hub", harness.hub_argv(port)).start()
    started.append(child)
    child.wait_port(port)
    return child, port


async def run(args: argparse.Namespace) -> list[list[Result]]:
    """Every scenario ``args.repeat`` times, interleaved (tcp, hub, tcp, hub, ...)."""
    only = set(args.only.split(",")) if args.only else {"tcp", "hub"}
    warmup = min(args.count // 10, 5000)
    t_sat = max(30.0, args.count / 2000)
    n1 = args.unbatched_count
    rate = f"{args.rate:,.0f}/s"
    rounds: list[list[Result]] = []
    with harness.children() as started:
        tcp = hub = one = None
        if "tcp" in only:
            child, port = start_tcp_relay(started, args.loop)
            tcp = TcpPair(child, port)
            await tcp.open()
        if "hub" in only:
            child, port = start_hub(started)
            hub = HubPair(child, port, max_batch=None)
            await hub.open("-1")
            one = HubPair(child, port, max_batch=1)
            await one.open("-2")
        servers = [c.pid for c in started]

        async def quiet() -> None:
            if args.wait_quiet > 0:
                await asyncio.to_thread(harness.wait_quiet, args.wait_quiet, exclude=servers)

        for r in range(args.repeat):
            results: list[Result] = []
            rounds.append(results)
            tag = f"round {r + 1}/{args.repeat}:"

            if tcp is not None:
                await quiet()
                print(tag, "tcp relay, saturated", flush=True)
                results.append(
                    await saturated(
                        tcp, "tcp", "tcp relay, saturated", args.count, warmup, t_sat, args.burst
                    )
                )
            if hub is not None:
                await quiet()
                print(tag, "hub, saturated", flush=True)
                hub.full_waits = 0
                res = await saturated(
                    hub,
                    "hub",
                    "hub, link batching, saturated",
                    args.count,
                    warmup,
                    t_sat,
                    args.burst,
                )
                if hub.full_waits:
                    res.note = f"{res.note} sender found the link full {hub.full_waits}x".strip()
                results.append(res)
            if one is not None:
                await quiet()
                print(tag, "hub, max_batch=1, saturated", flush=True)
                results.append(
                    await saturated(
                        one,
                        "hub1",
                        "hub, max_batch=1 (1 map/frame), saturated",
                        n1,
                        min(n1 // 10, 1000),
                        max(30.0, n1 / 500),
                        args.burst,
                    )
                )
            if tcp is not None:
                await quiet()
                print(tag, "tcp relay, paced", flush=True)
                results.append(
                    await paced(
                        tcp,
                        "tcp-paced",
                        f"tcp relay, paced {rate}",
                        args.rate,
                        args.seconds,
                        args.warmup,
                        30,
                    )
                )
            if hub is not None:
                await quiet()
                print(tag, "hub, paced", flush=True)
                results.append(
                    await paced(
                        hub,
                        "hub-paced",
                        f"hub, paced {rate}",
                        args.rate,
                        args.seconds,
                        args.warmup,
                        30,
                    )
                )
        for pair in (tcp, hub, one):
            if pair is not None:
                await pair.close()
    return rounds


def median_round(rounds: list[list[Result]]) -> list[Result]:
    """Per scenario, the run with the median figure (msgs/s when saturated, p99 when paced)."""
    keys = [r.key for r in rounds[0]]
    out = []
    for key in keys:
        runs = [r for results in rounds for r in results if r.key == key]
        if key.endswith("paced"):
            runs.sort(key=lambda r: r.p99_ms if r.p99_ms is not None else float("inf"))
        else:
            runs.sort(key=lambda r: r.rate)
        out.append(runs[len(runs) // 2])
    return out


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _ratios(rounds: list[list[Result]], a: str, b: str, paced: bool) -> list[float]:
    """Per round, ``a``'s figure over ``b``'s (msgs/s, or p99 when paced)."""
    out = []
    for results in rounds:
        by = {r.key: r for r in results}
        if a in by and b in by:
            x, y = by[a], by[b]
            if paced and x.p99_ms is not None and y.p99_ms:
                out.append(x.p99_ms / y.p99_ms)
            elif not paced and y.rate:
                out.append(x.rate / y.rate)
    return out


def report(rounds: list[list[Result]]) -> str:
    results = median_round(rounds)
    rows = [
        [
            r.name,
            f"{r.received:,}",
            f"{r.rate:,.0f}",
            _ms(r.p50_ms),
            _ms(r.p99_ms),
            f"{r.relay_cpu * 100:.0f}%",
            f"{r.relay_cpu * 1e6 / r.rate:.1f}" if r.rate else "-",
            f"{r.client_cpu * 100:.0f}%",
            f"{r.other_cpu * 100:.0f}%",
            r.note,
        ]
        for r in results
    ]
    headers = ["scenario", "received", "msgs/s", "p50 ms", "p99 ms"]
    headers += ["relay CPU", "relay µs/msg", "client CPU", "other CPU", "note"]
    out = [harness.table(headers, rows), ""]
    if len(rounds) > 1:
        out.append(f"(each row: the median of {len(rounds)} interleaved runs)")
    checks = [
        ("hub", "tcp", False, "saturated msgs/s, hub / tcp relay", ">=", 1.5),
        ("hub1", "tcp", False, "saturated msgs/s, hub max_batch=1 / tcp relay", "", 0.0),
        ("hub-paced", "tcp-paced", True, "paced p99 latency, hub / tcp relay", "<=", 2.0),
    ]
    for a, b, is_paced, label, op, target in checks:
        ratios = sorted(_ratios(rounds, a, b, is_paced))
        if not ratios:
            continue
        med = ratios[len(ratios) // 2]
        line = f"{label}: {med:.3f}x"
        if len(ratios) > 1:
            line += " (per run: " + ", ".join(f"{v:.3f}" for v in ratios) + ")"
        if op:
            ok = med >= target if op == ">=" else med <= target
            line += f"; target {op} {target}x: {'MET' if ok else 'NOT MET'}"
        out.append(line)
    return "\n".join(out)


def figures(rounds: list[list[Result]]) -> harness.Figures:
    """Each scenario's headline figures (its median run), for ``--before``."""
    out: harness.Figures = {}
    for r in median_round(rounds):
        out[f"{r.name}: msgs/s"] = r.rate
        if r.p99_ms is not None and r.p50_ms is not None:
            out[f"{r.name}: p50 ms"] = r.p50_ms
            out[f"{r.name}: p99 ms"] = r.p99_ms
        out[f"{r.name}: relay µs/msg"] = r.relay_cpu * 1e6 / r.rate if r.rate else float("nan")
        out[f"{r.name}: other CPU %"] = r.other_cpu * 100
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The transmit hub against a plain asyncio TCP relay: msgs/s and latency.",
    )
    parser.add_argument("--count", type=int, default=100_000, help="messages per saturated run")
    parser.add_argument(
        "--unbatched-count",
        type=int,
        default=20_000,
        help="messages for the max_batch=1 run (it is slow)",
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=64,
        help="saturated sender: messages per burst (tcp: one write call per burst, like a "
        "buffered writer; hub: HubLink.send calls back to back); 1 = one write per frame",
    )
    parser.add_argument("--rate", type=float, default=2000, help="paced rate, msgs/s")
    parser.add_argument("--seconds", type=float, default=5, help="paced measurement, seconds")
    parser.add_argument("--warmup", type=float, default=1, help="paced warm-up, seconds")
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved runs of everything; median reported"
    )
    parser.add_argument("--only", default="", help="comma list of tcp,hub (default both)")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop for the TCP relay and the clients (default: plain asyncio, the "
        "baseline the issue names; the hub runs as its own __main__ decides)",
    )
    harness.add_run_options(parser, each="scenario")
    harness.add_before_options(parser)
    parser.add_argument("--quick", action="store_true", help="small counts; finishes in < 20 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.unbatched_count = 20_000, 3_000
        args.seconds, args.warmup, args.repeat = 2.0, 0.5, 1
        args.wait_quiet = min(args.wait_quiet, 1)
    started = harness.start_run("relay", args)
    print(f"event loop of the TCP relay and of this (client) process: {args.loop}")
    if args.before:
        return harness.before_after(
            args, started, lambda: harness.run_async(run(args), loop=args.loop), figures
        )
    rounds = harness.run_async(run(args), loop=args.loop)
    data = [[asdict(r) | {"rate": r.rate} for r in rs] for rs in rounds]
    return harness.finish_run(report(rounds), started, args, data)


if __name__ == "__main__":
    sys.exit(main())
