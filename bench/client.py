"""The Python client library's own CPU per message sent and per message received.

    python bench/client.py             # 20,000 messages
    python bench/client.py --quick     # 3,000 messages, under 30 s
    python bench/client.py --help

Starts a real redis-server, a hub and two gateways (``--rate-limit 0``: the load is one
socket's). A sender process (alice on gw-1,
``--window`` sends in flight, each waiting for its type 10) sends ``--messages`` messages
to a receiver process (bob on gw-2, taking each from ``messages()``, which acknowledges
them). Each process reads its own CPU time (``time.process_time``) over its run, so the
figures are the client's cost alone (the library, ``websockets`` and the event loop), not
the servers'. The same run with a bare ``websockets`` client that does only the framing
(send a frame, match its type 10; count message frames, acknowledge the last seq every
100 ms) gives the floor, so the library's own share is the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import harness

SECRET = "bench-client-secret-0123456789abcdef-01"
USERS = {"raw": (1, 2), "library": (3, 4)}
"""(sender, receiver) per scenario: fresh inboxes for each."""


# --- the worker processes ---------------------------------------------------------------


async def _send_library(url: str, token: str, to: int, count: int, window: int) -> int:
    from im_gateway.client import Client

    async with Client(url, token=token) as client:
        await client.send(to=to, content="warm-up")
        started = time.process_time()

        async def lane(k: int) -> None:
            for i in range(k, count, window):
                await client.send(to=to, content=f"message {i}")

        await asyncio.gather(*(lane(k) for k in range(window)))
        return _report(started, count)


async def _receive_library(url: str, token: str, count: int) -> int:
    from im_gateway.client import Client

    async with Client(url, token=token) as client:
        seen = 0
        started = 0.0
        print("ready", flush=True)
        async for _ in client.messages():
            if seen == 0:
                started = time.process_time()  # the warm-up message
            seen += 1
            if seen == count + 1:
                break
        return _report(started, count)


async def _send_raw(url: str, token: str, to: int, count: int, window: int) -> int:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        waiting: dict[str, asyncio.Future[None]] = {}

        async def read() -> None:
            async for data in ws:
                frame = json.loads(data)
                if frame["type"] == 10 and frame["id"] in waiting:
                    waiting.pop(frame["id"]).set_result(None)

        reader = asyncio.ensure_future(read())
        loop = asyncio.get_running_loop()

        async def send(i: int, content: str) -> None:
            cid = f"raw-{i}"
            waiting[cid] = loop.create_future()
            frame = {"type": 1, "id": cid, "to": to, "contentType": 0, "content": content}
            await ws.send(json.dumps(frame))
            await waiting[cid]

        await send(-1, "warm-up")
        started = time.process_time()

        async def lane(k: int) -> None:
            for i in range(k, count, window):
                await send(i, f"message {i}")

        await asyncio.gather(*(lane(k) for k in range(window)))
        reader.cancel()
        return _report(started, count)


async def _receive_raw(url: str, token: str, count: int) -> int:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        print("ready", flush=True)
        seen, started, last_ack, seq = 0, 0.0, 0.0, ""
        async for data in ws:
            frame = json.loads(data)
            if frame["type"] not in (1, 2):
                continue
            if seen == 0:
                started = time.process_time()
            seen, seq = seen + 1, frame["seq"]
            now = time.monotonic()
            if now - last_ack >= 0.1:
                last_ack = now
                await ws.send(json.dumps({"type": 11, "seq": seq}))
            if seen == count + 1:
                break
        await ws.send(json.dumps({"type": 11, "seq": seq}))
        return _report(started, count)


def _report(started: float, count: int) -> int:
    print(json.dumps({"cpu_s": time.process_time() - started, "messages": count}), flush=True)
    return 0


def worker(args: argparse.Namespace) -> int:
    if args.worker == "send":
        main = (_send_library if args.kind == "library" else _send_raw)(
            args.url, args.token, args.to, args.messages, args.window
        )
    else:
        main = (_receive_library if args.kind == "library" else _receive_raw)(
            args.url, args.token, args.messages
        )
    return asyncio.run(main)


# --- the driver ---------------------------------------------------------------------------


def _spawn(role: str, kind: str, url: str, token: str, args: argparse.Namespace) -> Any:
    argv = [harness.PYTHON, __file__, "--worker", role, "--kind", kind, "--url", url]
    argv += ["--token", token, "--messages", str(args.messages), "--window", str(args.window)]
    argv += ["--to", str(USERS[kind][1])]
    return subprocess.Popen(
        argv, cwd=harness.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: Any, timeout: float) -> dict[str, float]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"a client worker failed: {err[-2000:]}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def scenario(kind: str, ports: dict[str, int], args: argparse.Namespace) -> dict[str, float]:
    alice, bob = USERS[kind]
    receiver = _spawn(
        "receive",
        kind,
        f"ws://127.0.0.1:{ports['gw-2']}/ws",
        harness.mint_token(bob, SECRET),
        args,
    )
    assert receiver.stdout is not None
    if receiver.stdout.readline().strip() != "ready":
        raise SystemExit(f"the receiver did not start: {receiver.stderr.read()[-2000:]}")
    sender = _spawn(
        "send", kind, f"ws://127.0.0.1:{ports['gw-1']}/ws", harness.mint_token(alice, SECRET), args
    )
    sent = _result(sender, timeout=600)
    got = _result(receiver, timeout=600)
    return {
        "send_us": sent["cpu_s"] / sent["messages"] * 1e6,
        "receive_us": got["cpu_s"] / got["messages"] * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per run")
    parser.add_argument("--window", type=int, default=50, help="sends in flight")
    parser.add_argument("--quick", action="store_true", help="3,000 messages")
    parser.add_argument("--worker", choices=("send", "receive"), help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=("library", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--to", type=int, default=0, help=argparse.SUPPRESS)
    harness.add_run_options(parser, each=None)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.messages = 3_000
    started = harness.start_run("client", args)
    with harness.children() as children:
        ports = harness.start_stack(
            children,
            gateways=["gw-1", "gw-2"],
            secret=SECRET,
            gateway_args=["--rate-limit", "0"],  # one sender's whole load on one socket
        )
        results = {kind: scenario(kind, ports, args) for kind in ("raw", "library")}
    rows = [[kind, f"{r['send_us']:.0f}", f"{r['receive_us']:.0f}"] for kind, r in results.items()]
    lib, raw = results["library"], results["raw"]
    report = harness.table(["client", "CPU µs per message sent", "per message received"], rows)
    report += (
        f"\n\n{args.messages:,} messages, {args.window} in flight. The library's own share "
        f"(library - raw): {lib['send_us'] - raw['send_us']:.0f} µs per message sent, "
        f"{lib['receive_us'] - raw['receive_us']:.0f} µs per message received."
    )
    return harness.finish_run(report, started, args, {"messages": args.messages, **results})


if __name__ == "__main__":
    sys.exit(main())
