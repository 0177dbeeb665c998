"""What one gRPC message costs here: gRPC's two I/O engines, another gRPC library, and
no gRPC at all.

    python bench/grpc_hop.py                 # 3 rounds, the stacks alternated
    python bench/grpc_hop.py --rounds 5 --count 5000
    python bench/grpc_hop.py --stacks default,poll-based
    python bench/grpc_hop.py --quick         # 1 round of 500 round trips

Two processes, a client and a server (uvloop on both, as the hub and the gateways run),
hold one connection; the client writes a 200-byte message and waits for the server's
echo, ``--count`` times: back to back (both stay busy), then with ``--gap`` between round
trips (both sleep and are woken for each one, as a hub link is at moderate load).
Reported per round trip: each process's CPU time (from /proc) and the latency's median.

The stacks (``--stacks``), each in a fresh pair of processes per case and round:

- ``default``: ``grpc.aio`` with gRPC's default I/O engine (its EventEngine: socket I/O
  on gRPC's own threads), as the gateways and the hub run; one bidirectional stream.
- ``poll-based``: the same with ``GRPC_EXPERIMENTS`` set as the README offers it for
  hubs (``transmit_hub.grpc_io.POLL_BASED``: the older poll-based I/O, done by the thread
  that waits for completions). gRPC reads that variable once, when it is imported.
- ``grpclib``: the same stream with grpclib, a pure-asyncio gRPC library on the ``h2``
  HTTP/2 state machine (no threads of its own; the ``bench`` extra installs it).
- ``tcp``: no gRPC and no HTTP/2: the message written to a plain TCP connection and
  echoed by an ``asyncio.Protocol``, the floor of any framing over TCP here.

The ratios are each stack's figure over ``default``'s, per round, then their median.
RESULTS.md sections 24 and 25 have the figures.
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
from collections.abc import Awaitable, Callable
from typing import Any, cast

import harness

from transmit_hub.grpc_io import POLL_BASED

ENGINES = {"default": "", "poll-based": POLL_BASED}
"""``GRPC_EXPERIMENTS`` for each of grpc.aio's engines: gRPC's default, the poll-based one."""
METHOD = "/bench.Echo/Echo"
PAYLOAD = b"x" * 200
WARM = 200
"""Round trips before the measured ones: the stream open, first-use costs paid."""

RoundTrip = Callable[[], Awaitable[None]]


async def _timed(
    round_trip: RoundTrip, server_pid: int, count: int, gap: float
) -> dict[str, float]:
    """``count`` round trips (``gap`` seconds apart) after the warm ones: CPU and p50."""
    for _ in range(WARM):
        await round_trip()
    own0, srv0 = harness.cpu_seconds(os.getpid()), harness.cpu_seconds(server_pid)
    latencies = []
    for _ in range(count):
        t = time.perf_counter()
        await round_trip()
        latencies.append(time.perf_counter() - t)
        if gap:
            await asyncio.sleep(gap)
    own, srv = harness.cpu_seconds(os.getpid()) - own0, harness.cpu_seconds(server_pid) - srv0
    return {
        "client_us": own / count * 1e6,
        "server_us": srv / count * 1e6,
        "p50_us": statistics.median(latencies) * 1e6,
    }


# grpc.aio (both engines): gRPC is imported in the child processes only, after
# GRPC_EXPERIMENTS is set for them.


async def _serve_grpc(port: int) -> None:
    import grpc  # type: ignore[import-untyped]

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


async def _measure_grpc(port: int, server_pid: int, count: int, gap: float) -> dict[str, float]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(METHOD)()

        async def round_trip() -> None:
            await call.write(PAYLOAD)
            await call.read()

        figures = await _timed(round_trip, server_pid, count, gap)
        await call.done_writing()
    return figures


# grpclib: messages pass as bytes (a codec that neither encodes nor decodes), as the
# grpc.aio stream above passes them with no serializer.


class _RawCodec:
    """grpclib's codec (its ``CodecBase``'s three members; grpclib only calls them, and a
    subclass would not type-check where grpclib is not installed): bytes as they are."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


async def _serve_grpclib(port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    class Echo:
        async def echo(self, stream: Any) -> None:
            async for message in stream:
                await stream.send_message(message)

        def __mapping__(self) -> dict[str, Handler]:
            return {METHOD: Handler(self.echo, Cardinality.STREAM_STREAM, bytes, bytes)}

    server = Server([Echo()], codec=cast(Any, _RawCodec()))
    await server.start("127.0.0.1", port)
    print("READY", flush=True)
    await server.wait_closed()


async def _measure_grpclib(port: int, server_pid: int, count: int, gap: float) -> dict[str, float]:
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    channel = Channel("127.0.0.1", port, codec=cast(Any, _RawCodec()))
    try:
        async with channel.request(METHOD, Cardinality.STREAM_STREAM, bytes, bytes) as stream:
            await stream.send_request()

            async def round_trip() -> None:
                await stream.send_message(PAYLOAD)
                await stream.recv_message()

            figures = await _timed(round_trip, server_pid, count, gap)
            await stream.end()
    finally:
        channel.close()
    return figures


# Plain TCP: the echo writes back what it reads; the client reads its 200 bytes back.


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _serve_tcp(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Echo, "127.0.0.1", port)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


async def _measure_tcp(port: int, server_pid: int, count: int, gap: float) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def round_trip() -> None:
        writer.write(PAYLOAD)
        await reader.readexactly(len(PAYLOAD))

    try:
        return await _timed(round_trip, server_pid, count, gap)
    finally:
        writer.close()


SIDES = {
    "default": (_serve_grpc, _measure_grpc),
    "poll-based": (_serve_grpc, _measure_grpc),
    "grpclib": (_serve_grpclib, _measure_grpclib),
    "tcp": (_serve_tcp, _measure_tcp),
}
"""Each stack's server and measuring client, in ``--stacks``' default order."""
STACKS = tuple(SIDES)


def run_case(stack: str, count: int, gap: float) -> dict[str, float]:
    """One fresh server and client of ``stack``."""
    env = dict(os.environ)
    if stack in ENGINES:
        env["GRPC_EXPERIMENTS"] = ENGINES[stack]
    port = harness.free_port()
    me = os.path.abspath(__file__)
    server = subprocess.Popen(
        [sys.executable, me, "--serve", stack, str(port)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "READY":
            raise SystemExit(f"the {stack} echo server did not start")
        argv = [sys.executable, me, "--measure", stack, str(port), str(server.pid)]
        argv += [str(count), str(gap)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode:
            raise SystemExit(f"the {stack} measuring client failed:\n{out.stderr}")
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        server.kill()
        server.wait()


def stacks_of(text: str) -> list[str]:
    """``--stacks``' value, checked: known names, ``default`` among them, grpclib there."""
    stacks = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(stacks) - set(STACKS))
    if unknown or "default" not in stacks:
        raise SystemExit(
            f"--stacks: {', '.join(unknown) or 'default is missing'}; "
            f"name some of {', '.join(STACKS)}, default among them (the ratios' base)"
        )
    if "grpclib" in stacks:
        try:
            import grpclib  # noqa: F401
        except ImportError:
            raise SystemExit(
                "grpclib is not installed: pip install -e '.[bench]', or leave it out "
                "(--stacks default,poll-based,tcp)"
            ) from None
    return stacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU per round trip of one message: grpc.aio with gRPC's default and "
        "poll-based I/O engines, grpclib, and plain TCP."
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (stacks alternated)")
    parser.add_argument("--count", type=int, default=3000, help="round trips per case")
    parser.add_argument(
        "--gap", type=float, default=0.002, help="seconds between round trips when paced"
    )
    parser.add_argument(
        "--stacks",
        default=",".join(STACKS),
        help=f"comma-separated, 'default' among them (default: {','.join(STACKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 500; under 20 s")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        stack, port = args.serve
        harness.run_async(SIDES[stack][0](int(port)), loop="uvloop")
        return 0
    if args.measure is not None:
        stack, port, pid, count, gap = args.measure
        measure = SIDES[stack][1](int(port), int(pid), int(count), float(gap))
        print(json.dumps(harness.run_async(measure, loop="uvloop")))
        return 0
    stacks = stacks_of(args.stacks)
    if args.quick:
        args.rounds, args.count = 1, 500
    started = harness.start_run("gRPC hop", args)
    cases = [("back to back", 0.0), (f"paced ({args.gap * 1e3:g} ms apart)", args.gap)]
    runs: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = stacks if r % 2 == 0 else list(reversed(stacks))
        for label, gap in cases:
            for stack in order:
                print(f"round {r + 1}/{args.rounds}: {label}, {stack} ...", flush=True)
                runs.setdefault((label, stack), []).append(run_case(stack, args.count, gap))
    figures = (("server_us", "server CPU µs"), ("client_us", "client CPU µs"), ("p50_us", "p50 µs"))
    rows = []
    for label, _ in cases:
        for key, name in figures:
            base = runs[(label, "default")]
            row = [f"{label}: {name}"]
            for stack in stacks:
                values = runs[(label, stack)]
                median = statistics.median(v[key] for v in values)
                ratios = [v[key] / b[key] for b, v in zip(base, values, strict=True)]
                cell = f"{median:.0f}"
                if stack != "default":
                    cell += f" ({statistics.median(ratios):.2f})"
                row.append(cell)
            rows.append(row)
    headers = ["per round trip (x default)", *stacks]
    report = harness.table(headers, rows)
    return harness.finish_run(
        report,
        started,
        args,
        {
            "stacks": stacks,
            "rows": rows,
            "runs": {f"{label} / {stack}": values for (label, stack), values in runs.items()},
        },
    )


if __name__ == "__main__":
    sys.exit(main())
