"""Redis Cluster failover benchmark: acknowledged messages lost when a primary is killed,
with ``--redis-wait-replicas`` 0 and 1, side by side in one run.

    python bench/redis_failover.py           # 20 s of traffic per setting
    python bench/redis_failover.py --quick   # 8 s per setting (under a minute in all)
    python bench/redis_failover.py --help

Per setting: a Redis Cluster of 3 primaries and 3 replicas (no persistence), a hub and two
gateways (``python -m im_gateway --redis-url redis+cluster://...``), each a process. On
gw-1, ``--senders`` WebSocket clients each keep ``--window`` messages in flight to one
receiver, whose inbox lives on a primary; a sender answered ``internal`` resends with the
same client id, as the protocol asks. After a third of the run that primary is SIGKILLed;
once its replica took over, it is started again (it rejoins as a replica). At the end,
every message id a sender was acknowledged for (type 10) is looked up in the receiver's
inbox: ``lost`` counts those missing. Also shown: the longest time without any
acknowledgement (the failover pause) and how many answers were ``internal``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import harness
import redis
from redis.cluster import RedisCluster
from websockets.asyncio.client import ClientConnection, connect

from im_gateway import auth

RECEIVER = 9_000


def node_port(child: harness.Child) -> int:
    argv = list(child.argv)
    return int(argv[argv.index("--port") + 1])


def owner(ports: list[int], key: str) -> int | None:
    """The port of the primary that holds ``key``'s slot now (None while none does)."""
    for port in ports:
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis(port=port, socket_timeout=0.5)
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))  # type: ignore[no-untyped-call]
            for row in client.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
                if int(row[0]) <= slot <= int(row[1]):
                    return int(row[2][1])
    return None


def harness_wait(condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` (blocking; run it in a thread) until true, or fail."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the failover")
        time.sleep(0.05)


class Sender:
    """One WebSocket client keeping ``window`` messages in flight, resending on internal."""

    def __init__(self, ws: ClientConnection, user: int) -> None:
        self.ws, self.user = ws, user
        self.answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.acked: list[tuple[float, str]] = []
        self.internal = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for data in self.ws:
            frame = json.loads(data)
            fut = self.answers.get(frame.get("id", ""))
            if frame["type"] in (10, 99) and fut is not None and not fut.done():
                fut.set_result(frame)

    async def one(self, cid: str) -> None:
        while True:
            fut = self.answers[cid] = asyncio.get_running_loop().create_future()
            await self.ws.send(
                json.dumps({"type": 1, "id": cid, "to": RECEIVER, "contentType": 0, "content": cid})
            )
            answer = await asyncio.wait_for(fut, 30)
            if answer["type"] == 10:
                self.acked.append((time.monotonic(), answer["msgId"]))
                return
            if answer.get("code") != "internal":
                raise RuntimeError(f"refused: {answer}")
            self.internal += 1
            await asyncio.sleep(0.05)

    async def run(self, until: float, window: int) -> None:
        counter = 0

        async def lane(lane_id: int) -> None:
            nonlocal counter
            while time.monotonic() < until:
                counter += 1
                await self.one(f"s{self.user}-{lane_id}-{counter}")

        await asyncio.gather(*(lane(i) for i in range(window)))


async def scenario(wait: int, args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_hex(32)
    gateway_args = ["--redis-wait-replicas", str(wait), "--redis-wait-timeout", "0.5"]
    gateway_args += ["--rate-limit", "0"]
    with harness.children() as started:
        ports = harness.start_stack(
            started,
            gateways=["gw-1", "gw-2"],
            secret=secret,
            gateway_args=gateway_args,
            redis="cluster",
        )
        nodes = [c for c in started if c.name.startswith("redis-")]
        node_ports = [node_port(c) for c in nodes]
        key = f"im:{{u:{RECEIVER}}}:inbox"
        victim_port = owner(node_ports, key)
        victim = next(c for c in nodes if node_port(c) == victim_port)
        url = f"ws://127.0.0.1:{ports['gw-1']}/ws?token="
        senders = []
        for i in range(args.senders):
            user = 10_000 + i
            ws = await connect(url + auth.mint(user, secret, ttl=600), max_queue=None)
            senders.append(Sender(ws, user))
        start = time.monotonic()
        until = start + args.seconds
        traffic = asyncio.gather(*(s.run(until, args.window) for s in senders))
        await asyncio.sleep(args.seconds / 3)
        assert victim.proc is not None
        victim.proc.kill()
        killed = time.monotonic()
        others = [p for p in node_ports if p != victim_port]
        await asyncio.to_thread(
            harness_wait, lambda: owner(others, key) not in (None, victim_port), 60
        )
        failed_over = time.monotonic()
        victim.proc.wait()
        victim.start()  # same port and directory: it rejoins as a replica
        await traffic
        for s in senders:
            await s.ws.close()
        alive = next(p for p in node_ports if p != victim_port)
        cluster = RedisCluster(host="127.0.0.1", port=alive)
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]], cluster.xrange(key, "-", "+"))
        stored = {json.loads(fields[b"m"])[0] for _, fields in rows}
        cluster.close()
    acks = sorted(t for s in senders for t, _ in s.acked)
    acked = [mid for s in senders for _, mid in s.acked]
    gaps = [b - a for a, b in zip([start, *acks], [*acks, until], strict=False)]
    return {
        "wait_replicas": wait,
        "acked": len(acked),
        "lost": sum(1 for mid in acked if mid not in stored),
        "internal": sum(s.internal for s in senders),
        "failover_s": failed_over - killed,
        "longest_without_ack_s": max(gaps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Acknowledged messages lost when a Redis Cluster primary is killed, "
        "with --redis-wait-replicas 0 and 1."
    )
    parser.add_argument("--senders", type=int, default=20, help="WebSocket senders on gw-1")
    parser.add_argument("--window", type=int, default=4, help="messages in flight per sender")
    parser.add_argument("--seconds", type=float, default=20, help="traffic seconds per setting")
    parser.add_argument("--waits", default="0,1", help="--redis-wait-replicas values to run")
    harness.add_run_options(parser, each="setting")
    parser.add_argument("--quick", action="store_true", help="8 s per setting")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 8.0
        args.wait_quiet = min(args.wait_quiet, 1)
    started = harness.start_run("redis failover", args)
    results = []
    for wait in (int(w) for w in args.waits.split(",")):
        if args.wait_quiet > 0:
            harness.wait_quiet(args.wait_quiet)
        print(f"--redis-wait-replicas {wait} ...", flush=True)
        results.append(asyncio.run(scenario(wait, args)))
    rows = [
        [
            str(r["wait_replicas"]),
            f"{r['acked']:,}",
            str(r["lost"]),
            f"{r['internal']:,}",
            f"{r['failover_s']:.1f}",
            f"{r['longest_without_ack_s']:.1f}",
        ]
        for r in results
    ]
    headers = ["--redis-wait-replicas", "acked", "lost (acked, not in the inbox)", "internal"]
    headers += ["failover s", "longest without an ack s"]
    report = harness.table(headers, rows)
    return harness.finish_run(report, started, args, results)


if __name__ == "__main__":
    sys.exit(main())
