"""Failover benchmark: the live-delivery gap when a hub is killed, and relay throughput
through one hub and through two, side by side in one run.

    python bench/failover.py             # 3 kill runs per setup, 1 and 2 hubs (about 2 minutes)
    python bench/failover.py --quick     # one run each, short (under 40 s)
    python bench/failover.py --help      # rates, durations, counts

The hubs run as ``python -m transmit_hub`` processes; this process holds the gateways' ends:
``--pairs`` sending :class:`~transmit_hub.pool.HubPool` s and as many receiving ones (each
pool attached to every hub, as a gateway is). No Redis and no WebSockets: this measures the
hub tier and the pool, which is what a failover exercises.

Scenarios:

- ``kill``: paced traffic (``--rate`` msgs/s in all, over the pairs) for ``--seconds``; after
  a third of it, SIGKILL of the hub the first sender uses; with one hub, it is started again
  on its port ``--restart-after`` s later (the old design: one hub, wait for it), with two
  the pool moves to the other hub at once and the killed one comes back the same way. Per
  run: the longest and the p99 time between two new live arrivals (over all receivers,
  after dropping repeats by message id), messages lost (never arrived), repeats dropped.
- ``saturated``: ``--count`` maps sent as fast as the pools take them (a full pool: wait
  1 ms), spread over the pairs; msgs/s received, and the hubs' CPU per delivered message
  (µs, from /proc: every hub process's user+system time over the interval).

The CPU of this (client) process is shown too: on a 2-core machine it is often the
bottleneck, and then two hubs cannot show more msgs/s than one, only less CPU per hub.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import harness

# gRPC's fork support is off (the launcher, through harness); no gRPC notes either.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from transmit_hub import Delivered, GatewayId, HubPool, NotDelivered
from transmit_hub.types import Message, MessageId, Recipient, TransmitMap, UserId


@dataclass
class Receiver:
    """Arrival times of new message ids at one receiving pool; repeats counted."""

    arrivals: list[float] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    repeats: int = 0

    def got(self, now: float, ids: list[str]) -> None:
        for msg_id in ids:
            if msg_id in self.seen:
                self.repeats += 1
            else:
                self.seen.add(msg_id)
                self.arrivals.append(now)


@dataclass
class KillRun:
    hubs: int
    run: int
    sent: int
    received: int
    lost: int
    repeats: int
    max_gap_ms: float
    p99_gap_ms: float
    kill_gap_ms: float
    """The longest gap that ended between the kill and the restart."""
    restart_gap_ms: float
    """The longest gap that ended after the restart."""
    resent: int
    refused: int


@dataclass
class SaturatedRun:
    hubs: int
    messages: int
    received: int
    seconds: float
    hub_cpu: float
    """CPU of every hub process over the interval, in cores."""
    client_cpu: float
    other_cpu: float

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def hub_us_per_msg(self) -> float:
        return self.hub_cpu * self.seconds * 1e6 / self.received if self.received else 0.0


class Cluster:
    """Hub processes and the pools of ``pairs`` sending and receiving gateways."""

    def __init__(self, started: list[harness.Child], hubs: int, pairs: int, tag: str) -> None:
        self.started = started
        self.ports = [harness.free_port() for _ in range(hubs)]
        self.children = [self._start_hub(i) for i in range(hubs)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.tag = tag
        self.pairs = pairs
        self.senders: list[HubPool] = []
        self.receivers: list[tuple[HubPool, Receiver]] = []
        self.refused = 0
        self._tasks: list[asyncio.Task[None]] = []

    def _start_hub(self, i: int) -> harness.Child:
        port = self.ports[i]
        child = harness.Child(f"hub-{i}", harness.hub_argv(port)).start()
        self.started.append(child)
        child.wait_port(port)
        return child

    def restart(self, i: int) -> None:
        self.children[i] = self._start_hub(i)

    def hub_pids(self) -> list[int]:
        return [c.pid for c in self.children if c.alive()]

    async def open(self) -> None:
        for p in range(self.pairs):
            rx = HubPool(self.addresses, GatewayId(f"rx-{self.tag}-{p}"), backoff_max=0.5)
            tx = HubPool(self.addresses, GatewayId(f"tx-{self.tag}-{p}"), backoff_max=0.5)
            receiver = Receiver()
            for pool in (rx, tx):
                await pool.start()
            self.senders.append(tx)
            self.receivers.append((rx, receiver))
            self._tasks.append(asyncio.create_task(self._read(rx, receiver)))
            self._tasks.append(asyncio.create_task(self._notices(tx)))
        every = [*self.senders, *(rx for rx, _ in self.receivers)]
        deadline = time.monotonic() + 30
        while not all(all(s == "up" for s in p.hubs.values()) for p in every):
            if time.monotonic() > deadline:
                raise RuntimeError("the pools did not attach to every hub within 30 s")
            await asyncio.sleep(0.02)

    async def _read(self, pool: HubPool, receiver: Receiver) -> None:
        async for event in pool.events():
            if isinstance(event, Delivered):
                receiver.got(time.monotonic(), [d.message.id for d in event.deliveries])

    async def _notices(self, pool: HubPool) -> None:
        async for event in pool.events():
            if isinstance(event, NotDelivered):
                self.refused += sum(len(n.message_ids) for n in event.notices)

    def tmap(self, pair: int, i: int) -> TransmitMap:
        target = GatewayId(f"rx-{self.tag}-{pair}")
        message = Message(MessageId(f"{self.tag}-{pair}-{i}"), UserId(1), 42, 1, 0, 0, "x" * 64)
        return TransmitMap(message, {target: (Recipient(UserId(42), f"1-{i}"),)})

    async def send(self, pair: int, i: int) -> None:
        tmap = self.tmap(pair, i)
        while not self.senders[pair].send(tmap):  # noqa: ASYNC110 - the pool has no event
            await asyncio.sleep(0.001)  # the pool is full: wait for its writers

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pool in [*self.senders, *(rx for rx, _ in self.receivers)]:
            await pool.close()


def gaps(receivers: list[Receiver]) -> list[tuple[float, float]]:
    """(when it ended, how long) of each time between consecutive new arrivals, over every
    receiver."""
    out: list[tuple[float, float]] = []
    for receiver in receivers:
        times = sorted(receiver.arrivals)
        out.extend((b, b - a) for a, b in itertools.pairwise(times))
    return out


async def kill_run(args: argparse.Namespace, hubs: int, run: int) -> KillRun:
    """Paced traffic; the first sender's hub is SIGKILLed a third of the way through."""
    from transmit_hub.pool import rank

    with harness.children() as started:
        cluster = Cluster(started, hubs, args.pairs, f"k{hubs}{run}")
        await cluster.open()
        key = f"tx-{cluster.tag}-0>rx-{cluster.tag}-0"
        victim = cluster.addresses.index(rank(key, cluster.addresses)[0])
        interval = args.pairs / args.rate
        total = int(args.rate * args.seconds / args.pairs)
        kill_at = total // 3
        restart_at = kill_at + int(args.restart_after / interval)
        start = time.monotonic()
        killed = restarted = float("inf")
        restart: asyncio.Task[None] | None = None
        for i in range(total):
            if i == kill_at:
                killed = time.monotonic()
                cluster.children[victim].proc.kill()
                cluster.children[victim].proc.wait()
            if i == restart_at:
                restarted = time.monotonic()
                # In a thread: waiting for its port must not stall this loop's traffic.
                restart = asyncio.create_task(asyncio.to_thread(cluster.restart, victim))
            for pair in range(args.pairs):
                await cluster.send(pair, i)
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if restart is not None:
            await restart
        sent = total * args.pairs
        receivers = [r for _, r in cluster.receivers]
        deadline = time.monotonic() + args.settle
        while sum(len(r.seen) for r in receivers) < sent and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
            await asyncio.sleep(0.05)
        got = sum(len(r.seen) for r in receivers)
        found = gaps(receivers)
        spans = sorted(span for _, span in found)
        kill_gap = max((g for end, g in found if killed <= end < restarted), default=0.0)
        restart_gap = max((g for end, g in found if end >= restarted), default=0.0)
        result = KillRun(
            hubs=hubs,
            run=run,
            sent=sent,
            received=got,
            lost=sent - got,
            repeats=sum(r.repeats for r in receivers),
            max_gap_ms=(spans[-1] if spans else 0.0) * 1000,
            p99_gap_ms=harness.percentile(spans, 99) * 1000,
            kill_gap_ms=kill_gap * 1000,
            restart_gap_ms=restart_gap * 1000,
            resent=sum(p.resent for p in cluster.senders),
            refused=cluster.refused,
        )
        await cluster.close()
        return result


async def saturated_run(args: argparse.Namespace, hubs: int) -> SaturatedRun:
    """``args.count`` maps as fast as the pools take them, over the pairs."""
    with harness.children() as started:
        cluster = Cluster(started, hubs, args.pairs, f"s{hubs}")
        await cluster.open()
        receivers = [r for _, r in cluster.receivers]
        per_pair = args.count // args.pairs
        for i in range(min(1000, per_pair // 10)):  # warm-up
            for pair in range(args.pairs):
                await cluster.send(pair, -1 - i)
        warm = min(1000, per_pair // 10) * args.pairs
        deadline = time.monotonic() + 60
        while sum(len(r.seen) for r in receivers) < warm and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
            await asyncio.sleep(0.01)
        for r in receivers:
            r.seen.clear()
            r.arrivals.clear()
        if args.wait_quiet > 0:
            await asyncio.to_thread(harness.wait_quiet, args.wait_quiet, exclude=cluster.hub_pids())
        meter = harness.CpuMeter(cluster.hub_pids()).start()
        t0 = time.monotonic()
        for i in range(per_pair):
            for pair in range(args.pairs):
                await cluster.send(pair, i)
            if i % 64 == 0:
                await asyncio.sleep(0)  # let the receivers (same loop) run
        want = per_pair * args.pairs
        deadline = time.monotonic() + 60
        while sum(len(r.seen) for r in receivers) < want and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded poll
            await asyncio.sleep(0.005)
        last = max((r.arrivals[-1] for r in receivers if r.arrivals), default=time.monotonic())
        hub_cpu, client_cpu, other_cpu = meter.stop()
        result = SaturatedRun(
            hubs=hubs,
            messages=want,
            received=sum(len(r.seen) for r in receivers),
            seconds=last - t0,
            hub_cpu=hub_cpu,
            client_cpu=client_cpu,
            other_cpu=other_cpu,
        )
        await cluster.close()
        return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kills: list[KillRun] = []
    for r in range(args.runs):
        for hubs in (1, 2):
            print(f"kill run {r + 1}/{args.runs}, {hubs} hub(s)", flush=True)
            kills.append(await kill_run(args, hubs, r + 1))
    sats: list[SaturatedRun] = []
    for hubs in (1, 2):
        print(f"saturated, {hubs} hub(s)", flush=True)
        sats.append(await saturated_run(args, hubs))
    return {"kill": kills, "saturated": sats}


TAIL = ("after kill ms", "after restart ms", "resent", "notices")


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    kills: list[KillRun] = results["kill"]
    sats: list[SaturatedRun] = results["saturated"]
    rows = [
        [
            f"{k.hubs} hub" + ("s" if k.hubs > 1 else " (restarted)"),
            str(k.run),
            f"{k.sent:,}",
            str(k.lost),
            str(k.repeats),
            f"{k.max_gap_ms:,.0f}",
            f"{k.p99_gap_ms:.1f}",
            f"{k.kill_gap_ms:,.0f}",
            f"{k.restart_gap_ms:,.0f}",
            str(k.resent),
            str(k.refused),
        ]
        for k in kills
    ]
    out = [
        f"kill: {args.rate:,.0f} msgs/s over {args.pairs} pairs for {args.seconds:g} s, SIGKILL "
        f"after a third; one hub is restarted {args.restart_after:g} s after its kill",
        "",
        harness.table(
            ["setup", "run", "sent", "lost", "repeats", "max gap ms", "p99 gap ms", *TAIL],
            rows,
        ),
        "",
    ]
    rows = [
        [
            f"{s.hubs} hub" + ("s" if s.hubs > 1 else ""),
            f"{s.received:,}",
            f"{s.rate:,.0f}",
            f"{s.hub_cpu * 100:.0f}%",
            f"{s.hub_us_per_msg:.1f}",
            f"{s.client_cpu * 100:.0f}%",
            f"{s.other_cpu * 100:.0f}%",
        ]
        for s in sats
    ]
    out.append(f"saturated: {args.count:,} maps over {args.pairs} pairs")
    out.append("")
    out.append(
        harness.table(
            ["setup", "received", "msgs/s", "hubs CPU", "hubs µs/msg", "client CPU", "other CPU"],
            rows,
        )
    )
    one = [k.max_gap_ms for k in kills if k.hubs == 1]
    two = [k.max_gap_ms for k in kills if k.hubs == 2]
    if one and two:
        med1, med2 = sorted(one)[len(one) // 2], sorted(two)[len(two) // 2]
        out.append("")
        out.append(
            f"longest live gap on a kill, median: 1 hub {med1:,.0f} ms, 2 hubs {med2:,.0f} ms "
            f"({med1 / med2:.1f}x shorter)"
            if med2
            else ""
        )
    if len(sats) == 2 and sats[0].rate:
        out.append(
            f"saturated msgs/s, 2 hubs / 1 hub: {sats[1].rate / sats[0].rate:.2f}x; hub CPU per "
            f"message, 2 hubs / 1 hub: {sats[1].hub_us_per_msg / max(sats[0].hub_us_per_msg, 1e-9):.2f}x"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Live-delivery gap when a hub is SIGKILLed, and throughput, 1 hub vs 2.",
    )
    parser.add_argument("--rate", type=float, default=1000, help="kill runs: msgs/s in all")
    parser.add_argument("--seconds", type=float, default=9, help="kill runs: traffic seconds")
    parser.add_argument(
        "--restart-after", type=float, default=1.0, help="kill runs: seconds before a restart"
    )
    parser.add_argument("--runs", type=int, default=3, help="kill runs per setup")
    parser.add_argument("--pairs", type=int, default=4, help="sending/receiving pool pairs")
    parser.add_argument("--count", type=int, default=100_000, help="saturated: maps in all")
    parser.add_argument(
        "--settle", type=float, default=20, help="seconds to wait for the last arrivals"
    )
    harness.add_run_options(parser, each="saturated run")
    parser.add_argument("--quick", action="store_true", help="one short run each (< 40 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.count = 1, 4.5, 20_000
        args.wait_quiet = min(args.wait_quiet, 1)
    started = harness.start_run("failover", args)
    results = harness.run_async(run(args))
    data = {key: [asdict(r) for r in rs] for key, rs in results.items()}
    return harness.finish_run(report(args, results), started, args, data)


if __name__ == "__main__":
    sys.exit(main())
