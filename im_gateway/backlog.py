"""The kernel's queue of connections that the gateway has not accepted yet.

``listen()``'s backlog (``--listen-backlog``) bounds how many connections the kernel
completes and holds for the gateway while its event loop is busy, in a reconnect storm
say. When that queue is full, Linux drops the next client's SYN, and the client sends it
again only 1 s later (then 3 s, 7 s ...): asyncio's default of 100 dropped a quarter of
6,000 wss:// handshakes that came 200 at a time (``bench/storm.py``). Linux silently
caps the backlog at ``net.core.somaxconn`` (4096 since Linux 5.4, 128 before): the
gateway reads that cap at start and says when the flag asks for more than it allows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

SOMAXCONN: Final = Path("/proc/sys/net/core/somaxconn")


def kernel_cap(path: Path = SOMAXCONN) -> int | None:
    """The kernel's cap on a listen backlog (None: not Linux, or unreadable)."""
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
