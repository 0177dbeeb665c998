"""The kernel's queue of connections that the gateway has not accepted yet.

``listen()``'s backlog (``--listen-backlog``) bounds how many connections the kernel
completes and holds for the gateway while its event loop is busy, in a reconnect storm
say. When that queue is full, Linux drops the next client's SYN, and the client sends it
again only 1 s later (then 3 s, 7 s ...): with asyncio's default of 100, 6,000 wss://
connections coming 200 at a time had 1,856 SYNs dropped and the last one waited 21.6 s
(``bench/storm.py``, bench/RESULTS.md section 26). Linux silently
caps the backlog at ``net.core.somaxconn`` (4096 since Linux 5.4, 128 before): the
gateway reads that cap at start and says when the flag asks for more than it allows.

With ``--workers``, each worker has a listener and a queue of its own on the one port
(SO_REUSEPORT). When a worker dies, Linux resets the connections waiting in its queue,
unless ``net.ipv4.tcp_migrate_req`` is 1 (Linux 5.14+): then it hands them to another
worker's listener. With a worker frozen and 600 connections opened, then the worker
killed, 283 were reset with 0 and none with 1 (bench/RESULTS.md section 26). The parent
says so at start when it is 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

SOMAXCONN: Final = Path("/proc/sys/net/core/somaxconn")
MIGRATE_REQ: Final = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def kernel_cap(path: Path = SOMAXCONN) -> int | None:
    """The kernel's cap on a listen backlog (None: not Linux, or unreadable)."""
    return _read_int(path)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def capped_note(backlog: int, cap: int | None) -> str | None:
    """What to tell the operator when ``backlog`` is above the kernel's ``cap``."""
    if cap is None or backlog <= cap:
        return None
    return (
        f"--listen-backlog {backlog} is above the kernel's cap (net.core.somaxconn = "
        f"{cap}), so the kernel queues at most {cap} connections not yet accepted: raise "
        f"the cap (sysctl -w net.core.somaxconn={backlog}) or lower --listen-backlog"
    )


def check_at_start(backlog: int) -> None:
    """Log a warning when the kernel caps ``backlog`` below what was asked."""
    note = capped_note(backlog, kernel_cap())
    if note is not None:
        logger.warning("%s", note)


def migrate_note(workers: int, migrate: int | None) -> str | None:
    """What to tell the operator of ``workers`` processes on one port when the kernel
    resets a dead worker's queue (``migrate``: ``net.ipv4.tcp_migrate_req``; None: no
    such setting, a kernel before 5.14 or not Linux)."""
    if workers <= 1 or migrate != 0:
        return None
    return (
        "net.ipv4.tcp_migrate_req is 0: when a worker dies, the connections waiting in "
        "its accept queue are reset (their clients connect again); set it to 1 (sysctl -w "
        "net.ipv4.tcp_migrate_req=1) to hand them to the other workers"
    )


def migrate_setting(path: Path = MIGRATE_REQ) -> int | None:
    """``net.ipv4.tcp_migrate_req`` (None: no such setting, or unreadable)."""
    return _read_int(path)


def check_workers_at_start(workers: int) -> None:
    """Log at INFO when a dead worker's queued connections would be reset."""
    note = migrate_note(workers, migrate_setting())
    if note is not None:
        logger.info("%s", note)
