"""What a wake-up costs on this machine: CPU per round trip between two processes.

    python bench/wakeup.py

Two processes bounce 20 bytes over a socketpair, first back to back (both stay busy), then
with a pause between round trips (both sleep in the kernel and are woken for each one).
The CPU time per round trip in the second case is what every message pays per hop when
traffic is too light for batching: it explains why the relays and the end-to-end path
cost far more CPU per message at 2,000 msgs/s than when saturated (see RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import time


def bounce(n: int, gap: float) -> tuple[float, float]:
    """(sender CPU, echo CPU) per round trip, in microseconds."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the echo side
        a.close()
        for _ in range(n):
            b.send(b.recv(64))
        os._exit(0)
    b.close()
    payload = b"x" * 20
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
        a.send(payload)
        a.recv(64)
        if gap:
            time.sleep(gap)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    os.waitpid(pid, 0)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    a.close()
    own = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return own / n * 1e6, (child.ru_utime + child.ru_stime) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU cost of a process wake-up, per round trip.")
    parser.add_argument("--count", type=int, default=5000, help="round trips per case")
    args = parser.parse_args(argv)
    print("| case | CPU µs per round trip, sender | CPU µs per round trip, echo |")
    print("|---|---|---|")
    for gap, label in ((0.0, "back to back (both busy)"), (0.001, "1 ms pause (woken each time)")):
        own, child = bounce(args.count, gap)
        print(f"| {label} | {own:.0f} | {child:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
