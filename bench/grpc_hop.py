"""What one gRPC message costs here, with gRPC's default I/O engine and its poll-based one.

    python bench/grpc_hop.py                 # 3 rounds, engines alternated
    python bench/grpc_hop.py --rounds 5 --count 5000
    python bench/grpc_hop.py --quick         # 1 round of 500 round trips

Two processes, a ``grpc.aio`` client and server (uvloop on both, as the hub and the
gateways run), hold one bidirectional stream; the client writes a 200-byte message and
waits for the server's echo, ``--count`` times: back to back (both stay busy), then with
``--gap`` between round trips (both sleep and are woken for each one, as a hub link is at
moderate load). Reported per round trip: each process's CPU time (from /proc) and the
latency's median.

Each case runs twice per round, in a fresh pair of processes each: with gRPC's default
(its EventEngine: I/O on gRPC's own threads) and with ``GRPC_EXPERIMENTS`` set as the
README offers it for hubs (``transmit_hub.grpc_io.POLL_BASED``: the older poll-based I/O,
done by the thread that waits for completions). gRPC reads that variable once, when it
is imported, for the whole process. The ratios are poll / default, per round, then their
median. RESULTS.md section 24 has the figures and what a hub on it does end to end
(``bench/relay.py`` and ``bench/e2e.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import grpc  # type: ignore[import-untyped]  # reads GRPC_EXPERIMENTS on import
import harness

from transmit_hub.grpc_io import POLL_BASED

ENGINES = {"default": "", "poll-based": POLL_BASED}
"""``GRPC_EXPERIMENTS`` for each engine: gRPC's default, and the poll-based one."""
PAYLOAD = b"x" * 200


async def _serve(port: int) -> None:
    async def echo(requests: Any, context: Any) -> Any:
        async for message in requests:
            yield message

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


async def _measure(port: int, server_pid: int, count: int, gap: float) -> dict[str, float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream("/bench.Echo/Echo")()
        for _ in range(200):  # warm: the stream open, first-use costs paid
            await call.write(PAYLOAD)
            await call.read()
        own0, srv0 = harness.cpu_seconds(os.getpid()), harness.cpu_seconds(server_pid)
        latencies = []
        for _ in range(count):
            t = time.perf_counter()
            await call.write(PAYLOAD)
            await call.read()
            latencies.append(time.perf_counter() - t)
            if gap:
                await asyncio.sleep(gap)
        own, srv = harness.cpu_seconds(os.getpid()) - own0, harness.cpu_seconds(server_pid) - srv0
        await call.done_writing()
    return {
        "client_us": own / count * 1e6,
        "server_us": srv / count * 1e6,
        "p50_us": statistics.median(latencies) * 1e6,
    }


def run_case(engine: str, count: int, gap: float) -> dict[str, float]:
    """One fresh server and client, both with ``engine``'s ``GRPC_EXPERIMENTS``."""
    env = {**os.environ, "GRPC_EXPERIMENTS": ENGINES[engine]}
    port = harness.free_port()
    me = os.path.abspath(__file__)
    server = subprocess.Popen(
        [sys.executable, me, "--serve", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise SystemExit("the echo server did not start")
        argv = [sys.executable, me, "--measure", str(port), str(server.pid), str(count), str(gap)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(f"the measuring client failed:\n{out.stderr}")
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        server.kill()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU per gRPC round trip, gRPC's default I/O engine against its poll-based one."
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (engines alternated)")
    parser.add_argument("--count", type=int, default=3000, help="round trips per case")
    parser.add_argument(
        "--gap", type=float, default=0.002, help="seconds between round trips when paced"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 500; under 10 s")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        harness.run_async(_serve(args.serve), loop="uvloop")
        return 0
    if args.measure is not None:
        port, pid, count, gap = args.measure
        figures = harness.run_async(
            _measure(int(port), int(pid), int(count), float(gap)), loop="uvloop"
        )
        print(json.dumps(figures))
        return 0
    if args.quick:
        args.rounds, args.count = 1, 500
    started = harness.start_run("gRPC hop", args)
    cases = [("back to back", 0.0), (f"paced ({args.gap * 1e3:g} ms apart)", args.gap)]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = list(ENGINES) if r % 2 == 0 else list(reversed(ENGINES))
        for label, gap in cases:
            for engine in order:
                print(f"round {r + 1}/{args.rounds}: {label}, {engine} ...", flush=True)
                runs.setdefault((label, engine), []).append(run_case(engine, args.count, gap))
    rows = []
    for label, _ in cases:
        for key, name in (("server_us", "server CPU µs"), ("client_us", "client CPU µs")):
            rows.append(
                _row(f"{label}: {name}", runs[(label, "default")], runs[(label, "poll-based")], key)
            )
        rows.append(
            _row(
                f"{label}: latency p50 µs",
                runs[(label, "default")],
                runs[(label, "poll-based")],
                "p50_us",
            )
        )
    report = harness.table(["per round trip", "default", "poll-based", "ratio", "per round"], rows)
    return harness.finish_run(report, started, args, {"rows": rows})


def _row(
    name: str, base: list[dict[str, float]], poll: list[dict[str, float]], key: str
) -> list[str]:
    ratios = [p[key] / b[key] for b, p in zip(base, poll, strict=True)]
    return [
        name,
        f"{statistics.median(b[key] for b in base):.0f}",
        f"{statistics.median(p[key] for p in poll):.0f}",
        f"{statistics.median(ratios):.2f}",
        ", ".join(f"{x:.2f}" for x in ratios),
    ]


if __name__ == "__main__":
    sys.exit(main())
