"""Process-wide settings for server processes (``python -m transmit_hub``, and the IM
gateway's command line too): the event loop they run on and how the cyclic garbage
collector is tuned.

Only the command-line entry points call these; a hub or gateway embedded in another
program (the tests, for one) leaves the process's settings alone.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
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
