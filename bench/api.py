"""Server API publishes against client sends, to the same online users, in one run.

    python bench/api.py                # 10 s per phase
    python bench/api.py --quick        # 3 s per phase, under 30 s
    python bench/api.py --before REF   # that commit's servers vs this tree's, alternately
    python bench/api.py --help

Starts a real redis-server, a hub and two gateways (``python -m im_gateway``), gw-1 with
the server API on. ``--users`` recipients hold a WebSocket each on gw-2. Phase "api":
``--concurrency`` HTTP clients call ``POST /api/publish`` on gw-1 back to back (each waits
for its answer: stored in the recipient's inbox), to recipients in turn. Phase "client":
as many WebSocket senders on gw-1 send type 1 frames the same way (each waits for its
type 10). Both report calls per second, deliveries per second at the recipients, the
answer latency p50/p99, and the servers' CPU (gateways, hub, Redis, from /proc) per
delivered message; then the ratio api/client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import harness

SECRET = "bench-api-secret-0123456789abcdef-0123"
KEY = "bench-api-key-0123456789"
SENDER_BASE = 100_000


async def _recipients(port: int, users: int) -> tuple[list[Any], list[int]]:
    from websockets.asyncio.client import connect

    socks, counts = [], [0] * users
    for i in range(users):
        ws = await connect(
            f"ws://127.0.0.1:{port}/ws?token={harness.mint_token(i + 1, SECRET)}", proxy=None
        )
        while json.loads(await ws.recv())["type"] != 14:
            pass
        socks.append(ws)

    async def read(i: int, ws: Any) -> None:
        async for data in ws:
            if '"type":1' in data[:10]:
                counts[i] += 1

    readers = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(socks)]
    return [*socks, *readers], counts


async def _api_phase(api_port: int, users: int, concurrency: int, seconds: float) -> list[float]:
    import aiohttp

    lat: list[float] = []
    stop = time.monotonic() + seconds
    url = f"http://127.0.0.1:{api_port}/api/publish"
    headers = {"Authorization": f"Bearer {KEY}"}

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.monotonic() < stop:
            body = {"to": (w * 7919 + n) % users + 1, "content": "bench", "from": 0}
            t0 = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            lat.append(time.perf_counter() - t0)
            n += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(w, session) for w in range(concurrency)))
    return lat


async def _client_phase(port: int, users: int, concurrency: int, seconds: float) -> list[float]:
    from websockets.asyncio.client import connect

    lat: list[float] = []
    stop = time.monotonic() + seconds

    async def worker(w: int) -> None:
        user = SENDER_BASE + w
        url = f"ws://127.0.0.1:{port}/ws?token={harness.mint_token(user, SECRET)}"
        async with connect(url, proxy=None) as ws:
            while json.loads(await ws.recv())["type"] != 14:
                pass
            n = 0
            while time.monotonic() < stop:
                cid = f"c{w}-{n}"
                frame = {"type": 1, "id": cid, "to": (w * 7919 + n) % users + 1, "content": "bench"}
                t0 = time.perf_counter()
                await ws.send(json.dumps(frame))
                while True:
                    got = json.loads(await ws.recv())
                    if got.get("id") == cid and got["type"] in (10, 99):
                        break
                lat.append(time.perf_counter() - t0)
                n += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return lat


def _row(name: str, lat: list[float], delivered: int, cpu: float, seconds: float) -> list[str]:
    lat.sort()
    return [
        name,
        f"{len(lat) / seconds:,.0f}",
        f"{delivered / seconds:,.0f}",
        f"{harness.percentile(lat, 50) * 1000:.1f}",
        f"{harness.percentile(lat, 99) * 1000:.1f}",
        f"{cpu / max(delivered, 1) * 1e6:.0f}",
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both phases against a fresh stack: per phase (latencies, delivered, server CPU s)."""
    with harness.children() as kids:
        ports = harness.start_stack(kids, gateways=["gw-2"], secret=SECRET)
        ports["gw-1"], ports["api"] = harness.free_port(), harness.free_port()
        argv = harness.module_argv(
            "gw-1", "im_gateway", "--listen", f"127.0.0.1:{ports['gw-1']}",
            "--gateway-id", "gw-1", "--hub", f"127.0.0.1:{ports['hub']}",
            "--redis-url", f"redis://127.0.0.1:{ports['redis']}/0", "--jwt-secret", SECRET,
            "--api-listen", f"127.0.0.1:{ports['api']}", "--api-key", KEY,
        )  # fmt: skip
        gw1 = harness.Child("gw-1", argv).start()
        kids.append(gw1)
        harness.wait_healthy(gw1, ports["gw-1"])
        servers = [k.pid for k in kids]

        async def run() -> dict[str, Any]:
            _, counts = await _recipients(ports["gw-2"], args.users)
            results: dict[str, Any] = {}
            for name in ("api", "client"):
                harness.wait_quiet(args.wait_quiet, exclude=servers)
                before = sum(counts)
                t0 = time.monotonic()
                meter = harness.CpuMeter(servers).start()
                if name == "api":
                    lat = await _api_phase(ports["api"], args.users, args.concurrency, args.seconds)
                else:
                    lat = await _client_phase(
                        ports["gw-1"], args.users, args.concurrency, args.seconds
                    )
                await asyncio.sleep(0.5)  # the last pushes in flight (a drain, not a sync)
                cores, _, _ = meter.stop()
                results[name] = (lat, sum(counts) - before, cores * (time.monotonic() - t0))
            return results

        return harness.run_async(run())


def figures(results: dict[str, Any], seconds: float) -> harness.Figures:
    """Each phase's headline figures, for ``--before``."""
    out: harness.Figures = {}
    for name, (lat, delivered, cpu) in results.items():
        lat = sorted(lat)
        out[f"{name}: calls/s"] = len(lat) / seconds
        out[f"{name}: delivered/s"] = delivered / seconds
        out[f"{name}: p50 ms"] = harness.percentile(lat, 50) * 1000
        out[f"{name}: p99 ms"] = harness.percentile(lat, 99) * 1000
        out[f"{name}: server CPU µs/delivered"] = cpu / max(delivered, 1) * 1e6
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="online recipients on gw-2")
    parser.add_argument("--concurrency", type=int, default=16, help="callers at once")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--quick", action="store_true", help="3 s per phase; under 30 s")
    harness.add_run_options(parser, each="phase")
    harness.add_before_options(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.wait_quiet = 3.0, 2.0
    started = harness.start_run("server API", args)
    if args.before:
        return harness.before_after(
            args, started, lambda: measure(args), lambda r: figures(r, args.seconds)
        )
    results = measure(args)
    rows = [_row(n, lat, d, cpu, args.seconds) for n, (lat, d, cpu) in results.items()]
    api, client = (len(results[n][0]) for n in ("api", "client"))
    report = harness.table(
        ["phase", "calls/s", "delivered/s", "p50 ms", "p99 ms", "server CPU us/delivered"], rows
    )
    report += f"\n\nratio api/client calls per second: {api / max(client, 1):.2f}"
    data = {n: {"calls": len(lat), "delivered": d, "cpu": c} for n, (lat, d, c) in results.items()}
    return harness.finish_run(report, started, args, data)


if __name__ == "__main__":
    sys.exit(main())
