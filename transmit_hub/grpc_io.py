"""gRPC's I/O engine in a hub or a gateway: gRPC's default, or its poll-based one by the
operator's choice; each program logs which at start.

gRPC 1.85 does its socket I/O on the threads of its EventEngine by default: a frame read
wakes one of them, which hands the completed read to the thread grpc.aio waits on, which
wakes the event loop. Its older poll-based engine does the I/O on the thread that waits
for completions, one hand-off less per frame. gRPC takes the choice from the environment
variable ``GRPC_EXPERIMENTS`` when it is imported. Started with ``GRPC_EXPERIMENTS=``
:data:`POLL_BASED`, a hub spends 9-17% less CPU per message, at 2,000 msgs/s and at full
load alike, and gateways cut the end-to-end latency at 2,000 msgs/s by 2-25% for 3-8%
less of their CPU (``bench/relay.py``, ``bench/e2e.py --grpc-poll``, ``bench/grpc_hop.py``;
bench/RESULTS.md sections 24 and 27).

It is not the default: on the 2-core bench machine, with a six-node Redis Cluster, two
gateways and the clients on the same cores, the end-to-end bench's full-load phase
delivered about 12% fewer messages with the hub on it (12 of 15 rounds lower), while one
Redis showed no such loss. A server on a host of its own gains; one on a crowded host may
not.

This names gRPC's experiments, which a later gRPC may retire: the tests
``tests/transmit_hub/test_grpc_io.py`` and ``tests/end_to_end/test_grpc_engine.py`` pin
that a hub and a gateway started with :data:`POLL_BASED` do their TCP I/O in the
poll-based engine (gRPC's traces name the source file), and that gRPC knows every name
in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

ENV: Final = "GRPC_EXPERIMENTS"
POLL_BASED: Final = "-event_engine_client,-event_engine_listener,-event_engine_callback_cq"
"""``GRPC_EXPERIMENTS`` for the poll-based engine: gRPC's EventEngine turned off for
clients, listeners and completion queues (gRPC 1.85's names)."""


def engine_note(environ: Mapping[str, str]) -> str:
    """The start-up log line saying which I/O engine gRPC runs, from ``environ`` (the
    process's environment when gRPC was imported)."""
    value = environ.get(ENV)
    if not value:
        return f"gRPC I/O: gRPC's default engine ({ENV}={POLL_BASED} selects the poll-based one)"
    if value == POLL_BASED:
        return f"gRPC I/O: the poll-based engine ({ENV}={value})"
    return f"gRPC I/O: as {ENV}={value} says"
