"""Memory and CPU per idle WebSocket connection on one gateway, and CPU per handshake.

    python bench/connections.py                 # 5,000 connections
    python bench/connections.py --quick         # 2,000 connections, about 80 s
    python bench/connections.py --trace         # also: what holds the memory (tracemalloc)
    python bench/connections.py --before REF    # that commit's gateway vs this tree's, alternating
    python bench/connections.py --help

Starts a real redis-server, a hub and one gateway (``python -m im_gateway``), each its own
process. Reads the gateway's resident memory (``VmRSS`` in ``/proc/PID/status``) after a
warm-up (a few connections opened and closed, so lazily loaded code and first-use caches are
not counted), opens ``--connections`` authenticated WebSocket connections (one user each,
tokens minted here with the gateway's secret), waits until every one has had its replay end
marker (type 14), lets the gateway settle, reads VmRSS again, and reports
(with - baseline) / connections. The connections stay idle (no frames; the client answers
WebSocket pings by itself, and sends none of its own unless ``--client-pings``: browsers
do not). Targets (issue 20): at most 8 KB per idle connection, and at
most 1 µs of gateway CPU per idle connection per second.

From the same run:

- CPU per handshake: the gateway's CPU time (``/proc/PID/stat``) while the connections
  open (each until its replay end marker), divided by their number; Redis's CPU and the
  Redis commands (``INFO commandstats``) per handshake alongside. Split: a burst of
  ``--refused`` handshakes with a token signed by another key (HTTP, token check, 401) is
  measured the same way; the difference is the upgrade, admission, the session and the
  replay of the (empty) inbox. The token check alone is timed in a process of its own
  (``verify_identity`` of the code tree under test, the gateway's default limits).
- CPU per idle connection per second: the gateway's CPU over ``--idle-window`` seconds
  (default: one ``--ping-interval``, so every connection is pinged once in it) with the
  connections open and silent, less its CPU over the same window without connections
  (its fixed upkeep: the presence watcher, the hub link), divided by connections and
  seconds; the whole CPU divided by the connections is reported too. The other
  processes' CPU in the same window is reported with it (the machine may be shared).
- ``--trace``: the gateway runs under ``bench/traced_gateway.py`` (tracemalloc on) and the
  allocation sites and object types that grew with the connections are listed per
  connection (tracemalloc's own overhead inflates that run's RSS and CPU figures).
- ``--before DIR``: runs the whole stack from the code tree DIR (for instance a
  ``git worktree`` of an older commit) and from this one, alternately, ``--rounds``
  times, and reports the medians side by side with their ratio.

The clients offer permessage-deflate, like browsers do, so the figure reflects the gateway's
own compression default; ``--client-compression none`` shows the figure without it.
RLIMIT_NOFILE is raised to its hard limit here, and the gateway inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import harness

CLIENT_PINGS: float | None = None
"""The clients' own keepalive ping interval (None: none, as browsers; ``--client-pings``)."""


async def open_one(url: str, compression: str | None) -> Any:
    """Connect, wait for the replay end marker (type 14), return the open connection."""
    from websockets.asyncio.client import connect

    ws = await connect(
        url, compression=compression, proxy=None, open_timeout=60, ping_interval=CLIENT_PINGS
    )
    try:
        async with asyncio.timeout(30):
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("type") == 14:
                    return ws
    except TimeoutError:
        return ws  # connected and authenticated; the marker is only a courtesy wait
    except BaseException:
        await ws.close()
        raise


async def open_many(
    urls: list[str], compression: str | None, parallel: int
) -> tuple[list[Any], float]:
    gate = asyncio.Semaphore(parallel)

    async def one(url: str) -> Any:
        async with gate:
            return await open_one(url, compression)

    t0 = time.monotonic()
    conns = await asyncio.gather(*(one(u) for u in urls))
    return list(conns), time.monotonic() - t0


async def close_all(conns: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def settle(gw: harness.Child, seconds: float) -> int:
    """Wait ``seconds``, then the gateway's VmRSS in KiB (the lowest of a few reads; with
    ``--workers``, the sum over the parent and its workers)."""
    await asyncio.sleep(seconds)
    reads = []
    for _ in range(5):
        reads.append(sum(harness.rss_kb(p) for p in harness.with_descendants(gw.pid)))
        await asyncio.sleep(0.2)
    return min(reads)


async def refuse_many(url: str, n: int, parallel: int) -> int:
    """``n`` handshakes that the gateway refuses (401); how many were refused."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    gate = asyncio.Semaphore(parallel)

    async def one() -> bool:
        async with gate:
            try:
                ws = await connect(url, proxy=None, open_timeout=60)
            except InvalidStatus as exc:
                return exc.response.status_code == 401
            await ws.close()
            return False

    return sum(await asyncio.gather(*(one() for _ in range(n))))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / harness.CLK_TCK, int(fields[12]) / harness.CLK_TCK


def io_counts(pid: int) -> tuple[int, int, int]:
    """Process ``pid``'s read and write syscalls so far (all threads, ``/proc/PID/io``) and
    its main thread's voluntary context switches (each a sleep, so each a wake-up after)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    switches = next(line for line in status.splitlines() if line.startswith("voluntary_"))
    return int(io["syscr"]), int(io["syscw"]), int(switches.split()[1])


def per_second(before: tuple[int, ...], after: tuple[int, ...], seconds: float) -> list[float]:
    """The counts' growth per second."""
    return [(b - a) / seconds for a, b in zip(before, after, strict=True)]


def redis_slowlog(port: int, *, reset: bool) -> tuple[float, str]:
    """With ``reset``: log every command in Redis's SLOWLOG from now on (and answer 0).
    Else: the longest command logged since (ms) and its first words."""
    import redis

    client = redis.Redis(port=port)
    try:
        if reset:
            client.config_set("slowlog-log-slower-than", 0)
            client.config_set("slowlog-max-len", 100_000)
            client.slowlog_reset()
            return 0.0, ""
        entries = client.slowlog_get(100_000)
    finally:
        client.close()
    if not entries:
        return 0.0, "none"
    top = max(entries, key=lambda e: e["duration"])
    words = top["command"].decode(errors="replace").split(" ")
    if words[0].upper() in ("EVALSHA", "EVAL"):  # the script's keys, not its text
        return top["duration"] / 1000, f"{words[0]} of {words[2]} keys"
    return top["duration"] / 1000, " ".join(words[:2])


_TOKEN_CHECK = """
import sys, time
from im_gateway import auth
secret, n = sys.argv[1], int(sys.argv[2])
token = auth.mint(12345, secret, ttl=3600)
kw = dict(max_ttl=86400.0, audience=None, issuer=None, max_groups=1000)
auth.verify_identity(token, secret, **kw)
t0 = time.process_time()
for _ in range(n):
    auth.verify_identity(token, secret, **kw)
print((time.process_time() - t0) / n * 1e6)
"""


def token_check_us(secret: str, n: int = 3000) -> float:
    """µs of CPU per ``verify_identity`` of the code tree under test (its own process)."""
    out = subprocess.run(
        [harness.PYTHON, "-c", _TOKEN_CHECK, secret, str(n)],
        cwd=harness.TREE,  # the tree under test (--before's too), as the servers' own
        env=os.environ | harness.tree_env(harness.TREE),
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


async def trace_dump(gw: harness.Child, directory: Path, n: int) -> None:
    """Ask the traced gateway for its ``n``-th snapshot and wait until it is written."""
    os.kill(gw.pid, signal.SIGUSR1)
    done = directory / f"{n}.done"
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the traced gateway wrote no snapshot")
        await asyncio.sleep(0.1)


def trace_report(directory: Path, n: int, top: int = 12) -> dict[str, Any]:
    """What grew between snapshot 1 (baseline) and 2 (connections open), per connection."""
    base = tracemalloc.Snapshot.load(str(directory / "1.snap"))
    open_ = tracemalloc.Snapshot.load(str(directory / "2.snap"))
    stats = open_.compare_to(base, "lineno")
    root = str(harness.REPO) + os.sep
    sites = []
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = f"{frame.filename.replace(root, '').split('site-packages/')[-1]}:{frame.lineno}"
        sites.append([where, stat.size_diff / n, stat.count_diff / n])
    total = sum(s.size_diff for s in stats) / n
    counts0 = json.loads((directory / "1.json").read_text())
    counts1 = json.loads((directory / "2.json").read_text())
    grown = sorted(
        ((k, (v - counts0.get(k, 0)) / n) for k, v in counts1.items()),
        key=lambda kv: -kv[1],
    )
    return {
        "traced_bytes_per_connection": total,
        "sites": sites,
        "objects": [[k, v] for k, v in grown[:top] if v > 0],
        "objects_per_connection": sum(v for _, v in grown),
    }


def traced_argv(directory: Path) -> Any:
    """``harness.module_argv`` that starts the gateway under bench/traced_gateway.py."""
    plain = harness.module_argv

    def argv(name: str, module: str, *args: str) -> list[str]:
        if module != "im_gateway":
            return plain(name, module, *args)
        script = Path(__file__).resolve().parent / "traced_gateway.py"
        return [harness.PYTHON, str(script), str(directory), *args]

    return argv


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_hex(32)
    compression = None if args.client_compression == "none" else "deflate"
    gateway_args = ["--ping-interval", str(args.ping_interval), *shlex.split(args.gateway_args)]
    trace_dir = Path(tempfile.mkdtemp(prefix="conn-trace-")) if args.trace else None
    plain_argv = harness.module_argv
    if trace_dir is not None:
        harness.module_argv = traced_argv(trace_dir)
    try:
        with harness.children() as started:
            ports = harness.start_stack(
                started, gateways=["gw-1"], secret=secret, gateway_args=gateway_args
            )
            return await measure(args, started, ports, secret, compression, trace_dir)
    finally:
        harness.module_argv = plain_argv


async def measure(
    args: argparse.Namespace,
    started: list[harness.Child],
    ports: dict[str, int],
    secret: str,
    compression: str | None,
    trace_dir: Path | None,
) -> dict[str, Any]:
    gw = next(c for c in started if c.name == "gw-1")
    redis_proc = next(c for c in started if c.name.startswith("redis"))
    base = f"ws://127.0.0.1:{ports['gw-1']}/ws?token="

    def urls(first: int, n: int) -> list[str]:
        return [base + harness.mint_token(u, secret) for u in range(first, first + n)]

    rss_start = await settle(gw, 0.5)
    warm, _ = await open_many(urls(1, args.warmup_connections), compression, args.parallel)
    await close_all(warm)
    wrong = base + harness.mint_token(7, secrets.token_hex(32))
    await refuse_many(wrong, min(args.refused, 50), args.parallel)  # warm the 401 path too
    rss_base = await settle(gw, args.settle)
    print(f"gateway pid {gw.pid}: VmRSS {rss_start:,} KiB at start, {rss_base:,} after warm-up")
    if trace_dir is not None:
        await trace_dump(gw, trace_dir, 1)
    window = args.idle_window or args.ping_interval
    print(f"no connections: idle for {window:g} s ...", flush=True)
    meter = harness.CpuMeter([gw.pid]).start()
    io0 = io_counts(gw.pid)
    await asyncio.sleep(window)
    empty_rates = per_second(io0, io_counts(gw.pid), window)
    gw_empty_cores, _, _ = meter.stop()

    # Refused handshakes (HTTP + token check + 401).
    refused_cpu = gw.cpu_seconds()
    refused = await refuse_many(wrong, args.refused, args.parallel)
    refused_cpu = gw.cpu_seconds() - refused_cpu
    await asyncio.sleep(0.5)

    n = args.connections
    print(f"opening {n:,} connections ...", flush=True)
    targets = urls(100_000, n)
    calls0 = harness.redis_calls(ports["redis"])
    cpu0, rcpu0, split0 = gw.cpu_seconds(), redis_proc.cpu_seconds(), cpu_split(gw.pid)
    conns, took = await open_many(targets, compression, args.parallel)
    cpu1, rcpu1, split1 = gw.cpu_seconds(), redis_proc.cpu_seconds(), cpu_split(gw.pid)
    calls = harness.calls_delta(calls0, harness.redis_calls(ports["redis"]))
    open_now = sum(1 for c in conns if c.state.name == "OPEN")
    rss_open = await settle(gw, args.settle)
    if trace_dir is not None:
        await trace_dump(gw, trace_dir, 2)

    # Idle: every connection silent for a whole ping interval (or --idle-window).
    print(f"idle for {window:g} s ...", flush=True)
    redis_slowlog(ports["redis"], reset=True)
    meter = harness.CpuMeter([gw.pid]).start()
    idle0, io0 = cpu_split(gw.pid), io_counts(gw.pid)
    await asyncio.sleep(window)
    idle1, io1 = cpu_split(gw.pid), io_counts(gw.pid)
    reads, writes, wakeups = (
        b - a for a, b in zip(empty_rates, per_second(io0, io1, window), strict=True)
    )
    gw_cores, own_cores, other_cores = meter.stop()
    longest_ms, longest = redis_slowlog(ports["redis"], reset=False)
    still_open = sum(1 for c in conns if c.state.name == "OPEN")
    await close_all(conns)
    rss_closed = await settle(gw, args.settle)
    ext = conns[0].response.headers.get("Sec-WebSocket-Extensions", "") if conns else ""
    result: dict[str, Any] = {
        "connections": n,
        "open_after_connect": open_now,
        "open_at_measure": still_open,
        "connect_seconds": took,
        "rss_start_kib": rss_start,
        "rss_baseline_kib": rss_base,
        "rss_open_kib": rss_open,
        "rss_after_close_kib": rss_closed,
        "kib_per_connection": (rss_open - rss_base) / n,
        "negotiated_extensions": ext or "none",
        "client_compression": args.client_compression,
        "handshake_cpu_us": (cpu1 - cpu0) / n * 1e6,
        "handshake_system_share": (split1[1] - split0[1]) / max(cpu1 - cpu0, 1e-9),
        "handshake_redis_cpu_us": (rcpu1 - rcpu0) / n * 1e6,
        "handshake_redis_calls": sum(calls.values()) / n,
        "handshake_redis_commands": {k: v / n for k, v in sorted(calls.items())},
        "refused_handshakes": refused,
        "refused_cpu_us": refused_cpu / max(refused, 1) * 1e6,
        "token_check_us": token_check_us(secret),
        "idle_window_s": window,
        "ping_interval_s": args.ping_interval,
        "idle_cpu_us_per_conn_s": (gw_cores - gw_empty_cores) / max(still_open, 1) * 1e6,
        "idle_cpu_gross_us_per_conn_s": gw_cores / max(still_open, 1) * 1e6,
        "idle_gateway_cores": gw_cores,
        "idle_system_share": (idle1[1] - idle0[1]) / max(sum(idle1) - sum(idle0), 1e-9),
        "idle_gateway_cores_empty": gw_empty_cores,
        "idle_other_cores": other_cores + own_cores,
        "idle_redis_longest_ms": longest_ms,
        "idle_redis_longest": longest,
        # What the connections add per second (less the window without them): writes are
        # the pings, reads the pongs; per ping, the CPU they add.
        "idle_writes_per_s": writes,
        "idle_reads_per_s": reads,
        "idle_wakeups_per_s": wakeups,
        "idle_cpu_us_per_ping": (gw_cores - gw_empty_cores) / max(writes, 1e-9) * 1e6,
    }
    if trace_dir is not None:
        result["trace"] = trace_report(trace_dir, n)
    return result


def report(r: dict[str, Any]) -> str:
    per = r["kib_per_connection"]
    per_kb = per * 1024 / 1000
    idle = r["idle_cpu_us_per_conn_s"]
    commands = ", ".join(f"{k} {v:.2f}" for k, v in r["handshake_redis_commands"].items())
    rows = [
        ["connections (open when measured)", f"{r['connections']:,} ({r['open_at_measure']:,})"],
        ["time to open them", f"{r['connect_seconds']:.1f} s"],
        ["negotiated extension", r["negotiated_extensions"]],
        ["gateway VmRSS at start", f"{r['rss_start_kib']:,} KiB"],
        ["gateway VmRSS after warm-up (baseline)", f"{r['rss_baseline_kib']:,} KiB"],
        ["gateway VmRSS with the connections open", f"{r['rss_open_kib']:,} KiB"],
        ["gateway VmRSS after closing them", f"{r['rss_after_close_kib']:,} KiB"],
        ["memory per idle connection", f"{per:.1f} KiB ({per_kb:.1f} KB)"],
        [
            f"gateway CPU per idle connection per second ({r['idle_window_s']:g} s, "
            f"pings every {r['ping_interval_s']:g} s)",
            f"{idle:.2f} µs (the gateway: {r['idle_gateway_cores'] * 100:.2f}% of a core, "
            f"{r['idle_gateway_cores_empty'] * 100:.2f}% without connections, "
            f"{r['idle_system_share']:.0%} of it in the kernel; "
            f"other processes {r['idle_other_cores']:.2f} cores)",
        ],
        [
            "  the same, the gateway's whole CPU divided by the connections",
            f"{r['idle_cpu_gross_us_per_conn_s']:.2f} µs",
        ],
        [
            "  what the connections add: writes (pings), reads (pongs), wake-ups per second",
            f"{r['idle_writes_per_s']:,.0f}, {r['idle_reads_per_s']:,.0f}, "
            f"{r['idle_wakeups_per_s']:,.0f} (reads per wake-up "
            f"{r['idle_reads_per_s'] / max(r['idle_wakeups_per_s'], 1e-9):.1f}; /proc)",
        ],
        [
            "  gateway CPU per ping (the added CPU / the added writes)",
            f"{r['idle_cpu_us_per_ping']:.1f} µs",
        ],
        [
            "Redis's longest command during the idle window (SLOWLOG)",
            f"{r['idle_redis_longest_ms']:.2f} ms ({r['idle_redis_longest']})",
        ],
        [
            "gateway CPU per handshake (to the replay end marker)",
            f"{r['handshake_cpu_us']:.0f} µs ({r['handshake_system_share']:.0%} in the kernel)",
        ],
        [
            f"  of which HTTP + token check + 401 ({r['refused_handshakes']:,} refused)",
            f"{r['refused_cpu_us']:.0f} µs",
        ],
        ["  token check alone (verify_identity)", f"{r['token_check_us']:.1f} µs"],
        [
            "Redis per handshake: CPU, commands",
            f"{r['handshake_redis_cpu_us']:.0f} µs, {r['handshake_redis_calls']:.2f} ({commands})",
        ],
    ]
    lines = [
        harness.table(["measure", "value"], rows),
        "",
        f"per idle connection {per_kb:.1f} KB; target <= 8 KB: {'MET' if per_kb <= 8 else 'NOT MET'}",
        f"idle CPU {idle:.2f} µs per connection per second; target <= 1 µs: "
        f"{'MET' if idle <= 1 else 'NOT MET'}",
    ]
    trace = r.get("trace")
    if trace:
        lines += [
            "",
            f"tracemalloc: {trace['traced_bytes_per_connection']:,.0f} B traced per connection, "
            f"{trace['objects_per_connection']:.1f} gc-tracked objects per connection",
            harness.table(
                ["allocation site", "B / connection", "blocks / connection"],
                [[w, f"{b:,.0f}", f"{c:.2f}"] for w, b, c in trace["sites"]],
            ),
            "",
            harness.table(
                ["object type (gc)", "per connection"],
                [[k, f"{v:.2f}"] for k, v in trace["objects"]],
            ),
        ]
    return "\n".join(lines)


COMPARED = [
    ("memory per idle connection (KB)", "kib_per_connection", 1024 / 1000),
    ("gateway CPU per idle connection per second (µs)", "idle_cpu_us_per_conn_s", 1.0),
    ("  the gateway's whole CPU / connections (µs)", "idle_cpu_gross_us_per_conn_s", 1.0),
    ("  the gateway without connections (% of a core)", "idle_gateway_cores_empty", 100.0),
    ("  gateway CPU per ping (µs)", "idle_cpu_us_per_ping", 1.0),
    ("Redis's longest command during the idle window (ms)", "idle_redis_longest_ms", 1.0),
    ("gateway CPU per handshake (µs)", "handshake_cpu_us", 1.0),
    ("  share of it in the kernel", "handshake_system_share", 1.0),
    ("  of which HTTP + token check + 401 (µs)", "refused_cpu_us", 1.0),
    ("  token check alone (µs)", "token_check_us", 1.0),
    ("Redis CPU per handshake (µs)", "handshake_redis_cpu_us", 1.0),
    ("Redis commands per handshake", "handshake_redis_calls", 1.0),
    ("other processes during the idle window (cores)", "idle_other_cores", 1.0),
]


def figures(r: dict[str, Any]) -> harness.Figures:
    """The headline figures, for ``--before``."""
    return {label: r[key] * scale for label, key, scale in COMPARED}


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        print(f"warning: RLIMIT_NOFILE is {soft}, below the {need} this run needs", file=sys.stderr)


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """The options this script shares with ``bench/workers.py``."""
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--warmup-connections", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before reading RSS")
    parser.add_argument(
        "--client-compression",
        choices=["deflate", "none"],
        default="deflate",
        help="what the clients offer (browsers offer permessage-deflate; the gateway decides)",
    )
    parser.add_argument("--gateway-args", default="", help="extra flags for the gateway")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gateway memory and CPU per idle WebSocket connection, CPU per handshake."
    )
    add_connection_options(parser)
    parser.add_argument(
        "--ping-interval", type=float, default=20.0, help="the gateway's --ping-interval"
    )
    parser.add_argument(
        "--idle-window",
        type=float,
        default=0.0,
        help="seconds of idle CPU measured (0: one ping interval)",
    )
    parser.add_argument(
        "--client-pings",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the clients ping the gateway this often too (0: never, as browsers)",
    )
    parser.add_argument(
        "--refused", type=int, default=1000, help="refused handshakes (bad token) measured"
    )
    parser.add_argument(
        "--trace", action="store_true", help="what grows per connection (tracemalloc, gc)"
    )
    harness.add_run_options(parser, each=None)
    harness.add_before_options(parser)
    parser.add_argument("--quick", action="store_true", help="2,000 connections; about 80 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.warmup_connections, args.settle = 2000, 50, 1.0
        args.refused = 500
    global CLIENT_PINGS
    CLIENT_PINGS = args.client_pings or None
    raise_nofile(args.connections + args.warmup_connections + 200)
    started = harness.start_run("connections", args)
    if args.before:
        return harness.before_after(args, started, lambda: asyncio.run(run(args)), figures)
    result = asyncio.run(run(args))
    return harness.finish_run(report(result), started, args, result)


if __name__ == "__main__":
    sys.exit(main())
