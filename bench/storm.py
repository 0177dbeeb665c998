"""A reconnect storm: how fast one gateway host takes new connections, by worker count.

    python bench/storm.py                            # 6,000 connections; 1 and 2 workers, 3 rounds
    python bench/storm.py --tls ec --tls rsa         # also wss:// (P-256, RSA 2048 certificates)
    python bench/storm.py --quick
    python bench/storm.py --tls rsa --rounds 1 --before 2f084ff --before-rounds 3
    python bench/storm.py --help

When a gateway host restarts, or a network blip drops its clients, they all come back at
once. Each round starts a real redis-server, a hub and one gateway (a single process, or
``--workers N``: N processes on one port), then opens ``--connections`` authenticated
connections (``--parallel`` handshakes in flight) from ``--client-processes`` processes,
each connection done when its replay end marker came. The default client
(``bench/raw_client.py``) writes a fixed opening request and finds the 101 and the marker
in the bytes, so the gateway, not the load generator, gets the cores; ``--client lean``
runs the end-to-end bench's client (websockets' protocol) instead.
The worker counts alternate (1, 2, then 2, 1, ...), ``--rounds`` times each, for each
``--tls`` (``none``: ws://; ``ec`` or ``rsa``: wss:// with a certificate the run makes).

Printed per setting: handshakes a second (the clients' clock), the gateway's CPU per
handshake and the cores it kept busy while the clients opened (all its processes, from
/proc; above 1.0 only with more than one worker), Redis's and the clients' CPU per
handshake, the SYNs the kernel dropped because the listener's accept queue was full
(``--listen-backlog``: each costs its client a second or more), a connection's time from
its connect to its replay end marker (p50, p99, max), and each worker count's rate
against one process's in the same round.

On a host of 2 cores the clients and Redis share the cores with the gateway, so a second
worker can only take what they leave; on a bigger host it takes a core of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import harness
from connections import raise_nofile
from workers import ClientProcesses, gateway_workers

if TYPE_CHECKING:
    from devtools.certs import ServerCert

TLS_KINDS = ("none", "ec", "rsa")


def server_cert(tls: str, directory: Path) -> ServerCert | None:
    """The gateway's certificate for ``--tls`` (None: ws://), made in ``directory``."""
    if tls == "none":
        return None
    try:
        from devtools.certs import make_server_cert
    except ImportError as exc:  # cryptography: the bench extra
        raise SystemExit(
            f"--tls {tls} makes its certificates with the cryptography package ({exc}): "
            "pip install -e '.[bench]', or run with --tls none"
        ) from exc

    folder = directory / tls
    folder.mkdir()
    return make_server_cert(folder, key_type=cast(Literal["ec", "rsa"], tls))


async def storm(
    workers: int, cert: ServerCert | None, args: argparse.Namespace
) -> dict[str, float]:
    """One round: a fresh stack, the connections opened and measured, then closed."""
    secret = secrets.token_hex(32)
    with harness.children() as started:
        ports = harness.start_stack(
            started,
            gateways=["gw-1"],
            secret=secret,
            gateway_args=gateway_workers(workers),
            tls=cert,
        )
        gw = next(c for c in started if c.name == "gw-1")
        redis = next(c for c in started if c.name == "redis")
        if workers > 1:
            harness.wait_workers(gw, workers)
        scheme = "ws" if cert is None else "wss"
        base = f"{scheme}://127.0.0.1:{ports['gw-1']}/ws?token="
        cafile = None if cert is None else str(cert.ca)

        def urls(first: int, n: int) -> list[str]:
            return [base + harness.mint_token(u, secret) for u in range(first, first + n)]

        warm = ClientProcesses(urls(1, 50), None, 10, 1, cafile, args.client)
        await warm.opened()
        await warm.close()
        gw_pids = harness.with_descendants(gw.pid)
        gw0, redis0 = sum(map(harness.cpu_seconds, gw_pids)), redis.cpu_seconds()
        overflows0 = listen_overflows()
        clients = ClientProcesses(
            urls(100_000, args.connections),
            None,
            args.parallel,
            args.client_processes,
            cafile,
            args.client,
        )
        done = await clients.opened()
        gw_cpu = sum(map(harness.cpu_seconds, gw_pids)) - gw0
        redis_cpu = redis.cpu_seconds() - redis0
        overflows = listen_overflows() - overflows0
        await clients.close()
        if done.open < args.connections:
            print(f"only {done.open:,} of {args.connections:,} opened; the gateway's log:")
            print(gw.tail(20))
    n = max(done.open, 1)
    return {
        "opened": done.open,
        "seconds": done.took,
        "handshakes_per_s": done.open / done.took,
        "gateway_cpu_us": gw_cpu / n * 1e6,
        "gateway_cores": gw_cpu / done.took,
        "redis_cpu_us": redis_cpu / n * 1e6,
        "client_cpu_us": done.cpu / n * 1e6,
        "listen_overflows": overflows,
        "open_p50_ms": harness.percentile(done.times, 50) * 1e3,
        "open_p99_ms": harness.percentile(done.times, 99) * 1e3,
        "open_max_ms": (done.times[-1] if done.times else float("nan")) * 1e3,
    }


def listen_overflows() -> int:
    """Connections the kernel's accept queues dropped so far, all sockets of the machine
    (``TcpExt: ListenOverflows`` in /proc/net/netstat): a client's SYN that finds its
    listener's backlog full is dropped and sent again a second (then 3, 7 ...) later."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return 0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="storm-") as tmp:
        for tls in args.tls:
            cert = server_cert(tls, Path(tmp))
            for i in range(args.rounds):
                order = args.workers if i % 2 == 0 else list(reversed(args.workers))
                for workers in order:
                    print(f"== {tls}, round {i + 1}/{args.rounds}: {workers} worker(s)", flush=True)
                    figures = await storm(workers, cert, args)
                    runs.setdefault(f"{tls}/{workers}", []).append(figures)
                    print(
                        f"   {figures['handshakes_per_s']:,.0f} handshakes/s, gateway "
                        f"{figures['gateway_cpu_us']:,.0f} µs each, "
                        f"{figures['gateway_cores']:.2f} cores, "
                        f"{figures['listen_overflows']:,.0f} SYNs dropped",
                        flush=True,
                    )
    return {"connections": args.connections, "parallel": args.parallel, "runs": runs}


ROWS = (
    ("handshakes a second", "handshakes_per_s", "{:,.0f}"),
    ("gateway CPU per handshake (µs)", "gateway_cpu_us", "{:,.0f}"),
    ("gateway cores busy while opening", "gateway_cores", "{:.2f}"),
    ("Redis CPU per handshake (µs)", "redis_cpu_us", "{:,.0f}"),
    ("clients' CPU per handshake (µs)", "client_cpu_us", "{:,.0f}"),
    ("SYNs dropped, accept queue full (machine)", "listen_overflows", "{:,.0f}"),
    ("a connection's open time p50 (ms)", "open_p50_ms", "{:,.0f}"),
    ("  p99 (ms)", "open_p99_ms", "{:,.0f}"),
    ("  max (ms)", "open_max_ms", "{:,.0f}"),
)


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    runs: dict[str, list[dict[str, float]]] = result["runs"]
    lines = [
        f"{result['connections']:,} connections per round, {result['parallel']} handshakes "
        f"in flight, {args.client_processes} client processes; medians of {args.rounds} "
        "rounds, worker counts alternated."
    ]
    for tls in args.tls:
        settings = [f"{tls}/{w}" for w in args.workers]
        headers = ["figure", *(f"{w} worker(s)" for w in args.workers)]
        rows = [
            [name, *(fmt.format(statistics.median(r[key] for r in runs[s])) for s in settings)]
            for name, key, fmt in ROWS
        ]
        one = runs[settings[0]]
        for workers, setting in zip(args.workers[1:], settings[1:], strict=True):
            ratios = [
                b["handshakes_per_s"] / a["handshakes_per_s"]
                for a, b in zip(one, runs[setting], strict=True)
            ]
            rows.append(
                [
                    f"rate, {workers} against {args.workers[0]} (per round)",
                    *[""] * (len(settings) - 1),
                    f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})",
                ]
            )
        scheme = "ws://" if tls == "none" else f"wss://, {tls.upper()} certificate"
        lines += ["", f"### {scheme}", "", harness.table(headers, rows)]
    return "\n".join(lines)


def figures(result: dict[str, Any]) -> harness.Figures:
    """Each setting's medians, for ``--before``."""
    return {
        f"{setting}: {name}": statistics.median(r[key] for r in runs)
        for setting, runs in result["runs"].items()
        for name, key, _ in ROWS
    }


def worker_counts(text: str) -> list[int]:
    counts = [int(v) for v in text.split(",") if v.strip()]
    if not counts or any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give distinct worker counts of at least 1, comma-separated, e.g. 1,2"
        )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A reconnect storm: handshakes a second on one gateway host, by workers.",
        epilog="Example: python bench/storm.py --tls none --tls rsa --rounds 3",
    )
    parser.add_argument("--connections", type=int, default=6000, help="per round")
    parser.add_argument("--parallel", type=int, default=200, help="handshakes in flight")
    parser.add_argument(
        "--workers",
        type=worker_counts,
        default=[1, 2],
        help="gateway worker counts to alternate, comma-separated (1: a single process, no "
        "--workers); the first is the one the others' rate is compared to (default 1,2)",
    )
    parser.add_argument(
        "--tls",
        choices=TLS_KINDS,
        action="append",
        help="none: ws://; ec / rsa: wss:// with a P-256 / RSA 2048 certificate made for the "
        "run; repeat for several (default none)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per worker count")
    parser.add_argument(
        "--client",
        choices=("raw", "lean"),
        default="raw",
        help="raw: a fixed opening request, the 101 and the replay end marker looked for in "
        "the bytes (bench/raw_client.py: the least client CPU, so the gateway gets the "
        "cores); lean: websockets' sans-I/O protocol, as the end-to-end bench",
    )
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes opening the connections"
    )
    harness.add_run_options(parser, each=None)
    harness.add_before_options(parser)
    parser.add_argument("--quick", action="store_true", help="1,000 connections, 1 round; < 30 s")
    args = parser.parse_args(argv)
    args.tls = list(dict.fromkeys(args.tls or ["none"]))
    if args.quick:
        args.connections, args.rounds = 1000, 1
    if args.connections < 1 or args.rounds < 1 or args.client_processes < 1:
        parser.error("--connections, --rounds and --client-processes must be at least 1")
    raise_nofile(args.connections + 200)
    started = harness.start_run("storm", args)
    if args.before:
        return harness.before_after(args, started, lambda: asyncio.run(run(args)), figures)
    result = asyncio.run(run(args))
    return harness.finish_run(report(result, args), started, args, result)


if __name__ == "__main__":
    sys.exit(main())
