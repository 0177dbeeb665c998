"""Process-wide settings for server processes (``python -m transmit_hub``, and the IM
gateway's command line too): the event loop they run on, how the cyclic garbage
collector is tuned, and the open-file limit.

Only the command-line entry points call these; a hub or gateway embedded in another
program (the tests, for one) leaves the process's settings alone.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import resource
from collections.abc import Callable

GC_GEN0_THRESHOLD = 10_000
"""Allocations (net of frees) between young-generation collections; Python's default
is 700. Measured with ``bench/e2e.py``: at about 10,000 msgs/s a gateway on the default
spent about 16% of its CPU in the cyclic collector (some 1,000 collections in 10 s,
each walking the large young batches); with 10,000 it spent under 1%. The server's
data is freed by reference counting, so collections find little; memory is unchanged."""


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (less CPU per wake-up and socket
    call), else None: asyncio's default."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def tune_gc() -> None:
    """Call once the server is up: move everything alive now (modules, descriptors,
    configuration) out of the collector's sight, and collect the young generation
    less often (see :data:`GC_GEN0_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


NOFILE_WHEN_UNLIMITED = 1_048_576
"""The soft open-file limit asked for when the hard limit is unlimited (Linux refuses
an unlimited soft limit above ``fs.nr_open``, whose default is this)."""


def raise_open_file_limit() -> str:
    """Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one, as Go servers do;
    return the sentence to log at INFO once the server is up (so a failed start still
    prints one line).

    Every socket is a descriptor, and systemd's default soft limit (1,024) would stop a
    server at about a thousand clients while the hard limit allows far more. A limit
    that cannot be raised is left as it is (and the sentence says so).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return f"open-file limit: {_limit_text(soft)} (already the hard limit)"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        return f"open-file limit: {soft} (could not raise it to {target}: {exc})"
    return f"open-file limit raised from {soft} to {target} (the hard limit)"


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
