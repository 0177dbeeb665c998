"""The hub process's gRPC I/O engine, chosen before gRPC is imported.

gRPC 1.85 does a server's socket I/O on the threads of its EventEngine by default: a
message read wakes one of them, which hands the completed read to the thread grpc.aio
waits on, which wakes the event loop. Its older poll-based engine does the I/O on the
thread that waits for completions, one hand-off less per message. For the hub, whose
whole work is reading and writing gRPC frames, that is 9-17% less CPU per message at
2,000 msgs/s and at full load alike (``bench/relay.py``, ``bench/e2e.py``,
``bench/grpc_hop.py``; bench/RESULTS.md section 24). The gateways' links gained nothing
measurable end to end (their gRPC frames are a small part of their work), so gateways
keep gRPC's default.

gRPC reads its engine from the environment variable ``GRPC_EXPERIMENTS`` once, when it is
imported, for the whole process. So ``python -m transmit_hub`` calls :func:`choose`
before it imports anything that imports gRPC (``__main__`` imports the server inside
``serve``; ``tls`` imports gRPC inside its methods). An operator's own
``GRPC_EXPERIMENTS``, even empty, is left as it is: ``GRPC_EXPERIMENTS=`` runs the hub on
gRPC's default engine.

This leans on gRPC's experiment names, which a later gRPC may retire. The test
``tests/transmit_hub/test_grpc_io.py`` pins that a hub started by ``python -m
transmit_hub`` really does its TCP I/O in the poll-based engine (gRPC's own traces name
the source file), and that gRPC knows every name given here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Final

ENV: Final = "GRPC_EXPERIMENTS"
POLL_BASED: Final = "-event_engine_client,-event_engine_listener,-event_engine_callback_cq"
"""The experiments turned off: gRPC's EventEngine for clients, listeners and completion
queues (names of gRPC 1.85)."""


def choose(
    environ: MutableMapping[str, str] | None = None, modules: Mapping[str, object] | None = None
) -> str | None:
    """Set ``GRPC_EXPERIMENTS`` to :data:`POLL_BASED` in ``environ`` (default
    ``os.environ``) unless it is set already or gRPC is already imported (``modules``,
    default ``sys.modules``: the choice would come too late to count). Answers a line for
    the log saying which engine gRPC runs, or None when gRPC was loaded first."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "grpc" in modules:
        return None
    if ENV in environ:
        return f"gRPC I/O: as {ENV}={environ[ENV]!r} says (set by the operator)"
    environ[ENV] = POLL_BASED
    return f"gRPC I/O: the poll-based engine ({ENV}={POLL_BASED})"
