"""What one store call costs: the gateway's CPU and Redis's per ``Store.submit``.

    python bench/store_calls.py                      # batches of 1 and 6, 3,000 calls each
    python bench/store_calls.py --before 0981fc6     # that tree's store, alternately

One process (started like a server, so ``--before`` runs an older tree's ``im_gateway``)
makes a :class:`~im_gateway.store.RedisStore` from a URL, as the gateway does, and submits
batches of private messages one after the other, each waiting for its answer, as the
pipeline's worker does at moderate load: so every call pays both wake-ups. It reports its
own CPU time per call (``time.process_time``: the client library, the arguments, the
results, the system calls) and Redis's (from /proc), per call and per message. The
machine's other work moves both; compare trees in one run. Then Redis's memory per stored
message (``used_memory`` after all the calls, less before, over the messages), and the
share of it that is the dedupe record (deleted to measure it), which Redis keeps for
``--dedupe-window`` while the inbox entries stay up to ``--inbox-max-len`` and
``--inbox-max-age`` (with few messages per user, as in a short run, each inbox's own
keys weigh in: 100 users, so count on thousands of calls).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import harness

MESSAGE = "hello there, how are you doing today?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def measure(url: str, redis_pid: int, sizes: list[int], calls: int) -> dict[str, float]:
    """CPU per call (this process, and Redis) for each batch size, with the store of the
    tree first on ``sys.path``."""
    import redis as redis_py

    from im_gateway.store import RedisStore, Submission
    from im_gateway.store.contract import new_submission
    from transmit_hub.types import MessageId, UserId, new_message

    store = RedisStore(url)
    admin = redis_py.Redis.from_url(url)
    memory0 = admin.info("memory")["used_memory"]
    count = 0

    def batch(size: int) -> list[Submission]:
        nonlocal count
        out: list[Submission] = []
        for _ in range(size):
            count += 1
            m = new_message(
                MessageId(f"m{count:020d}"),
                UserId(1 + count % 100),
                1001 + count % 100,
                1,
                0,
                1_700_000_000_000 + count,
                MESSAGE,
            )
            out.append(new_submission(f"c{count}", m, True))
        return out

    figures: dict[str, float] = {}
    try:
        for size in sizes:
            for _ in range(200):  # warm: scripts loaded, inboxes past the age pass's reach
                await store.submit(batch(size))
            batches = [batch(size) for _ in range(calls)]
            own, redis = time.process_time(), harness.cpu_seconds(redis_pid)
            for b in batches:
                await store.submit(b)
            own, redis = time.process_time() - own, harness.cpu_seconds(redis_pid) - redis
            figures[f"batch {size}: gateway CPU µs/call"] = own / calls * 1e6
            figures[f"batch {size}: redis CPU µs/call"] = redis / calls * 1e6
            figures[f"batch {size}: gateway + redis µs/msg"] = (own + redis) / calls / size * 1e6
        # What the messages left in Redis: two inbox entries each (the recipient's and the
        # sender's copy) and a dedupe record, which lives --dedupe-window (600 s).
        memory1 = admin.info("memory")["used_memory"]
        doomed = list(admin.scan_iter(match="*:dedupe:*", count=1000))
        for i in range(0, len(doomed), 1000):
            admin.delete(*doomed[i : i + 1000])
        memory2 = admin.info("memory")["used_memory"]
        figures["Redis memory per stored message (B)"] = (memory1 - memory0) / count
        figures["  of which its dedupe record (B)"] = (memory1 - memory2) / count
    finally:
        admin.close()
        await store.close()
    return figures


def run_once(args: argparse.Namespace) -> dict[str, float]:
    """Redis and the measuring process (from the current tree), once."""
    port = free_port()
    with harness.children() as started:
        redis = harness.redis_server(port).start()
        started.append(redis)
        redis.wait_port(port)
        argv = [
            harness.PYTHON,
            str(Path(__file__).resolve()),
            "--measure",
            f"redis://127.0.0.1:{port}/0",
            str(redis.pid),
            str(harness.TREE),
            "--sizes",
            args.sizes,
            "--calls",
            str(args.calls),
        ]
        return harness.child_figures("store-calls", argv, started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gateway and Redis CPU per Store.submit call (batches one after the other)."
    )
    parser.add_argument("--sizes", default="1,6", help="batch sizes, a comma list")
    parser.add_argument("--calls", type=int, default=3000, help="calls per batch size")
    parser.add_argument(
        "--measure", nargs=3, metavar=("URL", "REDIS_PID", "TREE"), help=argparse.SUPPRESS
    )
    harness.add_run_options(parser, each=None)
    harness.add_before_options(parser)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        url, pid, tree = args.measure
        return harness.measured_in(
            tree,
            lambda: harness.run_async(measure(url, int(pid), sizes, args.calls), loop="uvloop"),
        )
    return harness.report_figures("store calls", args, lambda: run_once(args), 1)


if __name__ == "__main__":
    sys.exit(main())
