"""How long one presence refresh holds Redis: its longest command, from Redis's SLOWLOG.

    python bench/presence_calls.py                       # 5,000 and 18,000 users
    python bench/presence_calls.py --before 2d7a9b5      # that tree's store, alternately
    python bench/presence_calls.py --redis cluster       # a Redis Cluster: the gateway's CPU only

Redis runs one command at a time: while a script runs, every other client of that Redis
(every gateway's message stores, acks, handshakes) waits. A gateway refreshes the
presence of all its local users every ``--presence-ttl / 3`` seconds (and all at once
after a hub reconnect). One process (started like a server, so ``--before`` runs an
older tree's ``im_gateway``) opens the store for a URL (``open_store``)
with its defaults, as the gateway does, refreshes that many users' entries once to
create them, then ``--rounds`` times more; for each, Redis's SLOWLOG (every command
logged) gives the longest command and the scripts' total time per user, and
``time.process_time`` the gateway's CPU for the call. Medians of the rounds. The
machine's other work moves every figure; compare trees in one run.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

import harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def measure(url: str, sizes: list[int], rounds: int) -> dict[str, float]:
    """Per number of users: this process's CPU per refresh and what that costs per
    connection per second at the default refresh interval (``--presence-ttl`` 30 s / 3);
    on one Redis also the longest Redis command of a refresh, the scripts' Redis time per
    user and the script calls (SLOWLOG; a cluster's is spread over its nodes). Medians."""
    import redis.asyncio as aioredis

    from im_gateway.store import open_store
    from transmit_hub.types import GatewayId, UserId

    admin = None if url.startswith("redis+cluster://") else aioredis.Redis.from_url(url)
    if admin is not None:
        await admin.config_set("slowlog-log-slower-than", 0)
        await admin.config_set("slowlog-max-len", 100_000)
    store = await open_store(url)
    gateway = GatewayId("gw-bench")
    figures: dict[str, float] = {}
    try:
        for size in sizes:
            users = [UserId(10_000_000 + i) for i in range(size)]
            await store.refresh(gateway, users)  # the entries exist, the scripts are loaded
            longest, per_user, calls, cpu = [], [], [], []
            for _ in range(rounds):
                if admin is not None:
                    await admin.slowlog_reset()
                own = time.process_time()
                await store.refresh(gateway, users)
                cpu.append(time.process_time() - own)
                if admin is not None:
                    scripts = [
                        e["duration"]
                        for e in await admin.slowlog_get(100_000)
                        if e["command"].upper().startswith(b"EVALSHA")
                    ]
                    longest.append(max(scripts))
                    per_user.append(sum(scripts) / size)
                    calls.append(len(scripts))
            label = f"{size:,} users"
            if admin is not None:
                figures[f"{label}: longest Redis command, ms"] = statistics.median(longest) / 1000
                figures[f"{label}: Redis script time per user, µs"] = statistics.median(per_user)
                figures[f"{label}: script calls"] = statistics.median(calls)
            median = statistics.median(cpu)
            figures[f"{label}: gateway CPU per refresh, ms"] = median * 1000
            figures[f"{label}: gateway CPU per connection per second, µs"] = (
                median / size / 10 * 1e6
            )
    finally:
        await store.close()
        if admin is not None:
            await admin.aclose()
    return figures


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """Redis and the measuring process (from the current tree), once."""
    with harness.children() as started:
        if args.redis == "cluster":
            url = harness.redis_cluster(started)
        else:
            port = free_port()
            redis = harness.redis_server(port).start()
            started.append(redis)
            redis.wait_port(port)
            url = f"redis://127.0.0.1:{port}/0"
        argv = [
            harness.PYTHON,
            str(Path(__file__).resolve()),
            "--measure",
            url,
            str(harness.TREE),
            "--sizes",
            args.sizes,
            "--rounds",
            str(args.rounds),
        ]
        return harness.child_figures("presence-calls", argv, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The longest Redis command (SLOWLOG) of one presence refresh of many users."
    )
    parser.add_argument("--sizes", default="5000,18000", help="users refreshed, a comma list")
    parser.add_argument("--rounds", type=int, default=7, help="refreshes measured per size")
    parser.add_argument(
        "--redis",
        choices=("single", "cluster"),
        default="single",
        help="one redis-server (SLOWLOG figures too), or a Redis Cluster of 3 primaries and "
        "3 replicas (the gateway's CPU only)",
    )
    parser.add_argument("--measure", nargs=2, metavar=("URL", "TREE"), help=argparse.SUPPRESS)
    harness.add_run_options(parser, each=None)
    harness.add_before_options(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        url, tree = args.measure
        return harness.measured_in(
            tree, lambda: harness.run_async(measure(url, sizes, args.rounds), loop="uvloop")
        )
    return harness.report_figures("presence calls", args, lambda: run_once(args), 2)


if __name__ == "__main__":
    sys.exit(main())
