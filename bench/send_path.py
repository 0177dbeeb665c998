"""Microbenchmarks of the gateway's sending side: a client's frame to the stored batch and
the map for the hub, per call of the functions on that path, in one process, no network
but one loopback WebSocket.

    python bench/send_path.py                         # this tree
    python bench/send_path.py --before PATH_OR_REF    # that tree's code (a directory or a
                                                      # git ref) and this one's, alternately
                                                      # (--before-rounds N)

Figures (CPU µs per operation, the best of ``--repeat`` timings of each):

- ``ws read``: ``ws.Connection.data_received`` per client text frame (a 100-byte message
  frame, masked as a client sends it), one frame per read and four per read, through a
  real connection whose ``receive_now`` takes each frame (the session's work is not in it);
- ``store submit``: ``RedisStore.submit``'s own work per message (arguments, the entries,
  reading the reply) for batches of 1, 6 and 32, its Redis call replaced by a reply of the
  script's shape (the round trip and Redis's work are ``bench/store_calls.py``'s);
- ``stored batch``: what the pipeline does with a batch from the store call on, per
  message, for batches of 6, 32 and 128 (the last as at full load): ``RedisStore.submit``
  (its Redis call replaced as above), each sender's type 10 written to its session (100
  sessions on ``ws`` connections whose transport only counts), the routing
  (``Fanout.route``: the sender's own position, the map to the other gateway), the hub
  pool's send and log, and the link's encoding of the maps into a request frame (its
  ``call.write`` left out);
- ``encode map``: ``transmit_hub.wire.encode_transmit_map`` of a map with one share;
- ``message id``: ``MessageIds.next``.

Each tree runs in its own child process with the tree first on ``sys.path`` (the
virtualenv's packages for both).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parents[1]
_MESSAGE = '{"type":1,"id":"c-123456","to":"1002","contentType":0,"content":"' + "x" * 40 + '"}'


def _best(run: Any, count: int, repeat: int) -> float:
    """The best CPU time of ``repeat`` runs of ``run(count)``, per operation, in µs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run(count)
        best = min(best, time.process_time() - start)
    return best / count * 1e6


async def _ws_read(repeat: int) -> dict[str, float]:
    from websockets.asyncio.client import connect
    from websockets.frames import Frame, Opcode

    from im_gateway import ws
    from im_gateway.admission import RejectionLog
    from im_gateway.config import GatewayConfig
    from im_gateway.descriptors import Sockets

    connections: list[Any] = []
    taken = [0]
    ready = asyncio.Event()
    done = asyncio.Event()

    def receive_now(text: str) -> bool:
        taken[0] += 1
        return True

    async def handler(connection: Any) -> None:
        connection.handshake_done()
        connection.receive_now = receive_now
        connections.append(connection)
        ready.set()
        await done.wait()

    async def accept(connection: Any, request: Any) -> None:
        return None

    config = GatewayConfig(listen="127.0.0.1:0", jwt_secret=secrets.token_hex(32))
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=10)
    server = await ws.listen(
        handler,
        config,
        process_request=accept,
        connection=ws.connection_class(sockets, RejectionLog()),
        tls=None,
    )
    await server.start_serving()
    port = server.sockets[0].getsockname()[1]
    out: dict[str, float] = {}
    try:
        async with connect(f"ws://127.0.0.1:{port}/ws", compression=None):
            await asyncio.wait_for(ready.wait(), 10)
            connection = connections[0]
            frame = Frame(Opcode.TEXT, _MESSAGE.encode()).serialize(mask=True)
            for per_read in (1, 4):
                chunk = frame * per_read

                def run(count: int, chunk: bytes = chunk) -> None:
                    for _ in range(count):
                        connection.data_received(chunk)

                per_frame = _best(run, 40_000 // per_read, repeat) / per_read
                out[f"ws read: µs per frame, {per_read} per read"] = per_frame
            assert taken[0] > 0
            done.set()
    finally:
        server.close()
    return out


async def _store_submit(repeat: int) -> dict[str, float]:
    from im_gateway.store.contract import new_submission
    from im_gateway.store.redis import RedisStore
    from transmit_hub.types import MessageId, UserId, new_message

    store = RedisStore("redis://127.0.0.1:1/0")  # never connected: its call is replaced
    out: dict[str, float] = {}
    for size in (1, 6, 32):
        batch = [
            new_submission(
                f"c-{i}",
                new_message(
                    MessageId(f"01a24b885ba07b9f8404aea{i:07d}"),
                    UserId(1000 + 2 * i),
                    1001 + 2 * i,
                    1,
                    0,
                    1_765_000_000_000 + i,
                    "hello " * 7,
                ),
                True,
            )
            for i in range(size)
        ]
        results = [
            [0, str(1001 + 2 * i), str(100 + i), str(1000 + 2 * i), str(200 + i)]
            for i in range(size)
        ]
        live = [[str(1001 + 2 * i), "gw-2"] for i in range(size)]
        live += [[str(1000 + 2 * i), "gw-1"] for i in range(size)]
        reply = json.dumps([results, live]).encode()

        async def script(*_: Any, reply: bytes = reply) -> bytes:
            return reply

        store._script = script  # type: ignore[method-assign,assignment]
        count = max(200, 20_000 // size)
        best = float("inf")
        for _ in range(repeat):
            start = time.process_time()
            for _ in range(count):
                await store.submit(batch)
            best = min(best, time.process_time() - start)
        out[f"store submit: µs per message, batch {size}"] = best / count / size * 1e6
    return out


async def _stored_batch(repeat: int) -> dict[str, float]:

    from im_gateway.fanout import Fanout
    from im_gateway.ids import MessageIds
    from im_gateway.metrics import GatewayMetrics
    from im_gateway.pipeline import Pipeline
    from im_gateway.store.contract import new_submission
    from im_gateway.store.redis import RedisStore
    from transmit_hub import wire
    from transmit_hub.pool import HubPool
    from transmit_hub.runtime import tune_gc
    from transmit_hub.types import GatewayId, UserId, new_message

    users = 100

    store = RedisStore("redis://127.0.0.1:1/0")  # never connected: its call is replaced
    metrics = GatewayMetrics()
    pool = HubPool(["127.0.0.1:1"], GatewayId("gw-1"))
    (link,) = pool.members.values()
    link._connected = True  # never started: its pending maps are encoded below
    fanout: Any = Fanout(gateway_id=GatewayId("gw-1"), store=store, link=pool, metrics=metrics)
    pipeline = Pipeline(store=store, route=fanout, metrics=metrics)
    sessions = harness.connected_sessions(range(1, users + 1), store=store, metrics=metrics)
    for session in sessions:
        fanout.add(session)
    ids = MessageIds()
    positions = dict.fromkeys(range(1, 2 * users + 1), 0)
    turn = 0

    def batch(size: int) -> tuple[list[Any], bytes]:
        """``size`` messages from the next senders (here) to their peers (on gw-2), and
        the batch script's reply for them."""
        nonlocal turn
        items, results, live = [], [], []
        for _ in range(size):
            sender = turn % users + 1
            peer = sender + users
            turn += 1
            positions[sender] += 1
            positions[peer] += 1
            msg_id, now = ids.next()
            m = new_message(msg_id, UserId(sender), peer, 1, 0, now, "hello " * 7)
            items.append((sessions[sender - 1], new_submission(f"c-{turn}", m, True)))
            results.append(
                [0, str(peer), str(positions[peer]), str(sender), str(positions[sender])]
            )
            live += [[str(peer), "gw-2"], [str(sender), "gw-1"]]
        return items, json.dumps([results, live]).encode()

    replies: list[bytes] = []

    async def script(*_: Any) -> bytes:
        return replies.pop()

    store._script = script  # type: ignore[method-assign,assignment]
    out: dict[str, float] = {}
    for size in (6, 32, 128):
        count = max(50, 12_000 // size)
        best = float("inf")
        for _ in range(repeat):
            batches = [batch(size) for _ in range(count)]
            replies[:] = [reply for _, reply in reversed(batches)]
            tune_gc()  # as the servers do once up
            start = time.process_time()
            for items, _ in batches:
                await pipeline._process(items)
                maps = link.take_pending()
                wire.encode_batch_request([wire.encode_transmit_map(tmap) for tmap in maps])
                await asyncio.sleep(0)  # the sockets' flushes run
            best = min(best, time.process_time() - start)
            gc.unfreeze()
        out[f"stored batch {size}: µs per message"] = best / count / size * 1e6
    if any(s._out.closing for s in sessions) or not harness.CountingTransport.writes:
        raise RuntimeError("a session closed, or nothing was written: the rig is broken")
    return out


def _pure(repeat: int) -> dict[str, float]:
    from im_gateway.ids import MessageIds
    from transmit_hub import wire
    from transmit_hub.types import (
        GatewayId,
        MessageId,
        UserId,
        new_message,
        new_recipient,
        new_transmit_map,
    )

    message = new_message(
        MessageId("01a24b885ba07b9f8404aea2000004"),
        UserId(1000),
        1001,
        1,
        0,
        1_765_000_000_000,
        '{"t":123456789012345,"pad":"xxxxxxxxxxxx"}',
    )
    tmap = new_transmit_map(message, {GatewayId("gw-2"): (new_recipient(UserId(1001), "1234"),)})
    ids = MessageIds()

    def encode(count: int) -> None:
        for _ in range(count):
            wire.encode_transmit_map(tmap)

    def next_id(count: int) -> None:
        for _ in range(count):
            ids.next()

    return {
        "encode map: µs per map of one share": _best(encode, 50_000, repeat),
        "message id: µs per id": _best(next_id, 100_000, repeat),
    }


def _measure(repeat: int) -> dict[str, float]:
    figures = asyncio.run(_ws_read(repeat))
    figures.update(asyncio.run(_store_submit(repeat)))
    figures.update(asyncio.run(_stored_batch(repeat)))
    figures.update(_pure(repeat))
    return figures


def _run_tree(tree: Path, repeat: int) -> dict[str, float]:
    """This script's figures with ``tree``'s code, in a child process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, __file__, "--worker", str(tree), "--repeat", str(repeat)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the run with {tree} failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_before_options(parser)
    parser.add_argument("--repeat", type=int, default=5, help="timings of each figure (best kept)")
    parser.add_argument("--json", default="", metavar="PATH", help="also write every run's figures")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.path.insert(0, args.worker)
        print(json.dumps(_measure(args.repeat)))
        return 0
    after = [_run_tree(ROOT, args.repeat)]
    if not args.before:
        for name, value in after[0].items():
            print(f"{name:45s} {value:8.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"after": after}, indent=1))
        return 0
    before: list[dict[str, float]] = []
    with harness.code_tree(args.before) as tree:
        for _ in range(args.before_rounds):
            before.append(_run_tree(tree, args.repeat))
            after.append(_run_tree(ROOT, args.repeat))
    after = after[1:]
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before, "after": after}, indent=1))
    print(f"before: {args.before}; after: {ROOT}; medians of {args.before_rounds} alternations")
    print(f"| {'figure':45s} | before | after | after/before |")
    print(f"| {'-' * 45} | ------ | ----- | ------------ |")
    for name in after[0]:
        b = statistics.median(run[name] for run in before)
        a = statistics.median(run[name] for run in after)
        print(f"| {name:45s} | {b:6.2f} | {a:5.2f} | {a / b:12.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
