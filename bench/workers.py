"""Memory per idle WebSocket connection on a gateway of several workers on one port.

    python bench/workers.py --workers 2 --connections 36000 --gateway-args="--idle-timeout 3600"
    python bench/workers.py --quick --workers 2
    python bench/workers.py --help

Starts a real redis-server, a hub and one gateway with ``--workers N`` (N processes on one
port with SO_REUSEPORT, see ``im_gateway.workers``), reads the gateway's resident memory
(``VmRSS`` summed over the parent and its workers) after a warm-up, opens ``--connections``
authenticated WebSocket connections (one user each) from ``--client-processes`` processes
(default one per 15,000 connections: each process may hold only so many descriptors; each
connects from its own 127.0.0.x, since one source address has only about 28,000 ephemeral
ports toward one server port), waits for their replay end markers, reads VmRSS again and
reports (with - baseline) / connections open. The connections stay idle.

For one gateway process, and for its CPU per idle connection and per handshake, see
``bench/connections.py``; this script adds what a whole machine needs: several workers and
more connections than one process may hold.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import math
import multiprocessing
import secrets
import shlex
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

import harness
import raw_client
from connections import add_connection_options, close_all, open_many, raise_nofile, settle


async def _open_lean(
    url: str, compression: str | None, source: str, tls: ssl.SSLContext | None = None
) -> Any:
    """One connection on the end-to-end bench's lean client (websockets' sans-I/O protocol
    on a bare transport: far less client CPU), once its replay marker (type 14) came; a
    wss:// one with the client TLS context ``tls``."""
    from e2e import LeanConnection

    replayed = asyncio.Event()

    def on_text(data: bytes) -> None:
        if b'"type":14' in data.replace(b" ", b""):
            replayed.set()

    conn = await harness.open_from(
        lambda: LeanConnection(url, compression, on_text), url, source, tls
    )
    await asyncio.wait_for(conn.opened, 120)
    with contextlib.suppress(TimeoutError):  # the marker is only a courtesy wait
        await asyncio.wait_for(replayed.wait(), 60)
    return conn


def _client_process(
    urls: list[str],
    compression: str | None,
    parallel: int,
    source: str,
    cafile: str | None,
    client: str,
    pipe: Any,
) -> None:
    """A client process: open ``urls`` from the address ``source`` (wss:// ones trusting
    the PEM CA ``cafile``) on the ``lean`` or the ``raw`` client, send the parent what it
    opened (:class:`Opened`), then answer ``count`` and ``close`` from the parent (its
    event loop keeps running: pings are answered). Each process has its own 127.0.0.x: one source address has only
    about 28,000 ephemeral ports toward one server port."""
    raise_nofile(len(urls) + 100)
    tls = ssl.create_default_context(cafile=cafile) if cafile else None

    async def serve() -> None:
        gate = asyncio.Semaphore(parallel)
        times: list[float] = []

        async def one(url: str) -> Any:
            async with gate:
                start = time.monotonic()
                if client == "raw":
                    conn = await raw_client.open_raw(url, source, tls)
                else:
                    conn = await _open_lean(url, compression, source, tls)
                times.append(time.monotonic() - start)
                return conn

        t0, cpu0 = time.monotonic(), time.process_time()
        results = await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)
        took, cpu = time.monotonic() - t0, time.process_time() - cpu0
        conns = [c for c in results if not isinstance(c, BaseException)]
        failed = collections.Counter(repr(e)[:120] for e in results if isinstance(e, BaseException))
        for reason, count in failed.most_common(3):
            print(f"client process: {count} connections failed: {reason}", file=sys.stderr)

        def still_open() -> int:
            return sum(1 for c in conns if not c.closed.is_set())

        pipe.send(Opened(still_open(), took, cpu, times))
        loop = asyncio.get_running_loop()
        while (order := await loop.run_in_executor(None, pipe.recv)) != "close":
            assert order == "count"
            pipe.send(still_open())
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        pipe.send("closed")

    harness.run_async(serve(), loop="uvloop" if harness.have_uvloop() else "asyncio")


@dataclass
class Opened:
    """What client processes opened: connections still open, the longest time a process
    took, the CPU time they took meanwhile (seconds), and each connection's time from its
    connect to its replay end marker (seconds)."""

    open: int
    took: float
    cpu: float
    times: list[float]


class ClientProcesses:
    """Connections held by several client processes (``--client-processes``)."""

    def __init__(
        self,
        urls: list[str],
        compression: str | None,
        parallel: int,
        procs: int,
        cafile: str | None = None,
        client: str = "lean",
    ):
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        for i in range(procs):
            mine, theirs = context.Pipe()
            share = urls[i::procs]
            proc = context.Process(
                target=_client_process,
                args=(
                    share,
                    compression,
                    parallel // procs or 1,
                    f"127.0.0.{i + 2}",
                    cafile,
                    client,
                    theirs,
                ),
                daemon=True,
            )
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)

    async def opened(self) -> Opened:
        """Once every process opened its share: what they opened, together."""
        answers: list[Opened] = [await asyncio.to_thread(p.recv) for p in self.pipes]
        return Opened(
            sum(a.open for a in answers),
            max(a.took for a in answers),
            sum(a.cpu for a in answers),
            sorted(t for a in answers for t in a.times),
        )

    async def count(self) -> int:
        for p in self.pipes:
            p.send("count")
        return sum([await asyncio.to_thread(p.recv) for p in self.pipes])

    async def close(self) -> None:
        for p in self.pipes:
            p.send("close")
        for p in self.pipes:
            await asyncio.to_thread(p.recv)
        for proc in self.procs:
            proc.join(30)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    secret = secrets.token_hex(32)
    compression = None if args.client_compression == "none" else "deflate"
    with harness.children() as started:
        ports = harness.start_stack(
            started,
            gateways=["gw-1"],
            secret=secret,
            gateway_args=[*shlex.split(args.gateway_args), *gateway_workers(args.workers)],
        )
        gw = next(c for c in started if c.name == "gw-1")
        if args.workers > 1:
            harness.wait_workers(gw, args.workers)
        base = f"ws://127.0.0.1:{ports['gw-1']}/ws?token="

        def urls(first: int, n: int) -> list[str]:
            return [base + harness.mint_token(u, secret) for u in range(first, first + n)]

        rss_start = await settle(gw, 0.5)
        warm, _ = await open_many(urls(1, args.warmup_connections), compression, args.parallel)
        await close_all(warm)
        rss_base = await settle(gw, args.settle)
        print(f"gateway pid {gw.pid}: VmRSS {rss_start:,} KiB at start, {rss_base:,} after warm-up")
        n = args.connections
        print(f"opening {n:,} connections ...", flush=True)
        ext = "(see the single-process run)"
        if args.client_processes > 1:
            clients = ClientProcesses(
                urls(100_000, n), compression, args.parallel, args.client_processes
            )
            opened = await clients.opened()
            open_now, took = opened.open, opened.took
            if open_now < n:
                print(f"only {open_now:,} opened; the gateway's log:\n{gw.tail(30)}")
            rss_open = await settle(gw, args.settle)
            still_open = await clients.count()
            await clients.close()
        else:
            conns, took = await open_many(urls(100_000, n), compression, args.parallel)
            open_now = sum(1 for c in conns if c.state.name == "OPEN")
            rss_open = await settle(gw, args.settle)
            still_open = sum(1 for c in conns if c.state.name == "OPEN")
            ext = conns[0].response.headers.get("Sec-WebSocket-Extensions", "") if conns else ""
            await close_all(conns)
        rss_closed = await settle(gw, args.settle)
        return {
            "workers": args.workers,
            "client_processes": args.client_processes,
            "connections": n,
            "open_after_connect": open_now,
            "open_at_measure": still_open,
            "connect_seconds": took,
            "rss_start_kib": rss_start,
            "rss_baseline_kib": rss_base,
            "rss_open_kib": rss_open,
            "rss_after_close_kib": rss_closed,
            "kib_per_connection": (rss_open - rss_base) / max(still_open, 1),
            "negotiated_extensions": ext or "none",
            "client_compression": args.client_compression,
        }


def report(r: dict[str, Any]) -> str:
    per = r["kib_per_connection"]
    per_kb = per * 1024 / 1000
    rows = [
        ["gateway workers (one port)", str(r["workers"])],
        ["client processes", str(r["client_processes"])],
        ["connections (open when measured)", f"{r['connections']:,} ({r['open_at_measure']:,})"],
        ["time to open them", f"{r['connect_seconds']:.1f} s"],
        ["negotiated extension", r["negotiated_extensions"]],
        ["gateway VmRSS at start", f"{r['rss_start_kib']:,} KiB"],
        ["gateway VmRSS after warm-up (baseline)", f"{r['rss_baseline_kib']:,} KiB"],
        ["gateway VmRSS with the connections open", f"{r['rss_open_kib']:,} KiB"],
        ["gateway VmRSS after closing them", f"{r['rss_after_close_kib']:,} KiB"],
        ["memory per idle connection", f"{per:.1f} KiB ({per_kb:.1f} KB)"],
    ]
    ok = per_kb <= 16
    return "\n".join(
        [
            harness.table(["measure", "value"], rows),
            "",
            f"per idle connection {per_kb:.1f} KB; target <= 16 KB: {'MET' if ok else 'NOT MET'}",
        ]
    )


def gateway_workers(workers: int) -> list[str]:
    """The gateway's flags for ``workers`` processes on its port (none for one)."""
    return ["--workers", str(workers)] if workers > 1 else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gateway memory per idle WebSocket connection.")
    add_connection_options(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="gateway processes on the one port (the gateway's --workers); its memory is "
        "summed over them",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=0,
        help="processes holding the client connections (default: one per 15,000)",
    )
    harness.add_run_options(parser, each=None)
    parser.add_argument("--quick", action="store_true", help="1,000 connections; < 20 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.warmup_connections, args.settle = 1000, 50, 1.0
    if args.client_processes <= 0:
        args.client_processes = math.ceil(args.connections / 15_000)
    raise_nofile(args.connections + args.warmup_connections + 200)
    started = harness.start_run("connections", args)
    result = asyncio.run(run(args))
    return harness.finish_run(report(result), started, args, result)


if __name__ == "__main__":
    sys.exit(main())
