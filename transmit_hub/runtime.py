"""Process-wide settings for server processes (``python -m transmit_hub``, and the IM
gateway's command line too): the event loop they run on, how the cyclic garbage
collector is tuned, the open-file limit, and which of gRPC's I/O engines they use.

Only the command-line entry points call these; a hub or gateway embedded in another
program (the tests, for one) leaves the process's settings alone.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.metadata
import os
import resource
from collections.abc import Callable, MutableMapping

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


GRPC_POLL_IO = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"
"""``GRPC_EXPERIMENTS`` for gRPC's poll-based I/O: the thread that waits for completions
also reads and writes the sockets, where the EventEngine (grpcio's default) hands each
socket event from its own threads to that one. Measured on 2 cores (bench/RESULTS.md
section 20, ``python bench/e2e.py``): the servers' CPU per message at 2,000 msgs/s
0.82-0.98x (median about 0.87) with p50 and p99 lower; at full load at parity
(0.92-1.09x); the hub's CPU per relayed message paced about 0.8x (``bench/relay.py``)."""

GRPC_POLL_IO_VERSIONS = ("1.85.",)
"""grpcio versions on which these experiment names were checked (a later grpcio may drop
them: it would log "Unknown experiment" at every start). tests/transmit_hub/
test_runtime.py fails when the installed grpcio is not one of these, so an upgrade
re-checks the names and re-measures."""


def use_poll_io(
    environ: MutableMapping[str, str] | None = None, grpc_version: str | None = None
) -> str:
    """Ask gRPC for its poll-based I/O (:data:`GRPC_POLL_IO`): call before the process's
    first gRPC server or channel. Left alone when ``GRPC_EXPERIMENTS`` is set already
    (even empty: the operator's choice) or the installed grpcio is not in
    :data:`GRPC_POLL_IO_VERSIONS`. Returns the sentence to log once the server is up."""
    env = os.environ if environ is None else environ
    if "GRPC_EXPERIMENTS" in env:
        return f"gRPC I/O: GRPC_EXPERIMENTS={env['GRPC_EXPERIMENTS']!r} (as set)"
    version = importlib.metadata.version("grpcio") if grpc_version is None else grpc_version
    if not version.startswith(GRPC_POLL_IO_VERSIONS):
        return f"gRPC I/O: grpcio {version}'s default (poll-based I/O checked on 1.85 only)"
    env["GRPC_EXPERIMENTS"] = GRPC_POLL_IO
    return "gRPC I/O: poll-based (GRPC_EXPERIMENTS=" + GRPC_POLL_IO + ")"
