"""What the delivering side costs per message: a hub frame to the bytes for the sockets.

    python bench/deliver.py                          # 1, 6 and 32 deliveries per frame
    python bench/deliver.py --before /work/main      # that tree's code, alternately
    python bench/deliver.py --devices 3              # three sockets per user

One process (started like a server, so ``--before`` runs an older tree's code) holds 100
users' sessions (``--devices`` each, one by default: a delivery goes to all of its user's),
each on a real ``im_gateway.ws`` connection whose transport only counts what it is given, behind a real fan-out with the gateway's metrics on. It feeds the fan-out
frames as a hub writes them (``transmit_hub.wire``: one private message per delivery,
each to the next user, positions in order), as the hub link's reader does: decode the
frame, hand its deliveries over, and let the loop run the sockets' flushes after every
frame. It reports its own CPU time (``time.process_time``) per delivery: in total, frame
by frame as the link does; for the decode alone (another pass over the same frames);
and the difference (fan-out, cursor, writer, framing, flush); the lowest of ``--rounds``.
(Decoding every frame first and delivering them all after, as this script did before,
kept all of them alive at once and read faster than the link's order ever runs: 16 µs
per delivery of one per frame against 22.)
No socket, no system call: what is left is the Python work, which is what this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

import harness

USERS = 100


async def measure(
    sizes: list[int], messages: int, rounds: int, devices: int = 1
) -> dict[str, float]:
    """CPU per delivery for each frame size, with the code of the tree first on sys.path."""

    from im_gateway.fanout import Fanout
    from im_gateway.ids import MessageIds
    from im_gateway.metrics import GatewayMetrics
    from im_gateway.store import MemoryStore
    from transmit_hub import codec, wire
    from transmit_hub.runtime import tune_gc
    from transmit_hub.types import GatewayId, Recipient, UserId, new_message, new_transmit_map

    class Link:
        def send(self, tmap: object) -> bool:
            return True

    metrics = GatewayMetrics()
    store = MemoryStore()
    link: Any = Link()
    fanout: Any = Fanout(gateway_id=GatewayId("gw-2"), store=store, link=link, metrics=metrics)
    users = [u for u in range(1, USERS + 1) for _ in range(devices)]
    sessions = harness.connected_sessions(users, store=store, metrics=metrics)
    for session in sessions:
        fanout.add(session)
    ids = MessageIds()
    positions = dict.fromkeys(range(1, USERS + 1), 0)
    turn = 0

    def frame(size: int) -> bytes:
        nonlocal turn
        entries = []
        for _ in range(size):
            user = turn % USERS + 1
            turn += 1
            positions[user] += 1
            msg_id, now = ids.next()
            m = new_message(msg_id, UserId(1000 + user), user, 1, 0, now, str(time.time_ns()))
            tmap = new_transmit_map(
                m, {GatewayId("gw-2"): (Recipient(UserId(user), str(positions[user])),)}
            )
            request = wire.encode_batch_request([wire.encode_transmit_map(tmap)])
            [read] = wire.split_batch_request(request) or []
            entries.append(wire.delivery_entry(read.message or b"", read.targets[0][1]))
        return wire.delivery_batch_response(entries)

    # As the link hands them to the fan-out: as rows where the tree's fan-out takes them
    # (HubLink.deliver_rows_to), else as Delivery objects.
    if hasattr(fanout, "_deliver_rows"):
        deliver = fanout._deliver_rows

        def decode(data: bytes) -> Any:
            return codec.decode_response(data, rows=True).rows
    else:
        deliver = fanout._deliver_all

        def decode(data: bytes) -> Any:
            return codec.decode_response(data).deliveries

    best: dict[str, float] = {}
    for _ in range(rounds):
        for size in sizes:
            count = max(1, messages // size)
            frames = [frame(size) for _ in range(count)]
            tune_gc()  # as the servers do once up
            start = time.process_time()
            for f in frames:
                decode(f)
            middle = time.process_time()
            for f in frames:  # as the link's reader: each frame decoded, then handed over
                deliver(decode(f))
                await asyncio.sleep(0)  # the flushes run (a frame per loop iteration)
            end = time.process_time()
            gc.unfreeze()
            n = count * size
            decoding, total = (middle - start) / n * 1e6, (end - middle) / n * 1e6
            for name, value in (
                (f"{size} per frame: decode µs/delivery", decoding),
                (f"{size} per frame: deliver + flush µs/delivery", total - decoding),
                (f"{size} per frame: total µs/delivery", total),
            ):
                best[name] = min(best.get(name, value), value)
    if any(s._out.closing for s in sessions) or not harness.CountingTransport.writes:
        raise RuntimeError("a session closed, or nothing was written: the rig is broken")
    return best


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """The measuring process (with the tree's code), once."""
    argv = [
        harness.PYTHON,
        str(Path(__file__).resolve()),
        "--measure",
        str(harness.TREE),
        "--sizes",
        args.sizes,
        "--messages",
        str(args.messages),
        "--rounds",
        str(args.rounds),
        "--devices",
        str(args.devices),
    ]
    with harness.children() as started:
        return harness.child_figures("deliver", argv, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU per delivered message on the delivering side: a hub frame decoded, "
        "fanned out, written to 100 sessions' connections (no sockets)."
    )
    parser.add_argument("--sizes", default="1,6,32", help="deliveries per frame, a comma list")
    parser.add_argument("--messages", type=int, default=18000, help="deliveries per size and round")
    parser.add_argument("--rounds", type=int, default=5, help="the lowest of this many rounds")
    parser.add_argument(
        "--devices", type=int, default=1, help="sessions per user (each delivery goes to all)"
    )
    parser.add_argument("--measure", metavar="TREE", help=argparse.SUPPRESS)
    harness.add_run_options(parser, each=None)
    harness.add_before_options(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        return harness.measured_in(
            args.measure,
            lambda: harness.run_async(
                measure(sizes, args.messages, args.rounds, args.devices), loop="uvloop"
            ),
        )
    return harness.report_figures("delivering side", args, lambda: run_once(args), 2)


if __name__ == "__main__":
    sys.exit(main())
