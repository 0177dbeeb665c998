"""Opt-in stamps of a message's hops, for ``bench/e2e.py --timeline``; off by default.

With ``TRANSMIT_HUB_TIMELINE=DIR`` in a process's environment, the hot path records when
each message passes a named hop (``time.monotonic_ns()``, one clock for every process on
a Linux machine) and the process writes its records to ``DIR/<pid>.tsv`` (``hop``, message
id, nanoseconds, tab-separated) when it exits. Without it, :data:`ON` is ``False`` and each
call site costs one attribute test per batch or frame.

The hops, in a message's order: ``read`` (a gateway made the submission from a client's
frame), ``batched`` (its batch goes to the store), ``stored`` (the store answered),
``link_woke`` (the hub link's idle writer woke to it, before any linger), ``to_hub`` (the
link's writer took it into a frame, before the gRPC write), ``link_wrote`` (that write
completed), ``hub_in`` (the hub read its frame), ``hub_routed`` (the hub offered it to the
target gateways' outboxes), ``hub_woke`` (an outbox's writer woke to it), ``hub_out`` (the
writer took it into a frame, before the gRPC write), ``hub_wrote`` (that write
completed), ``from_hub`` (the receiving gateway's link decoded it). At most
:data:`MAX_RECORDS` records are kept per process.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterable
from typing import Final

__all__ = ["ENV", "MAX_RECORDS", "ON", "stamp"]

ENV: Final = "TRANSMIT_HUB_TIMELINE"
MAX_RECORDS: Final = 2_000_000
"""Records kept per process; later stamps are ignored."""

_DIR: Final = os.environ.get(ENV, "")
ON: Final = bool(_DIR)
"""Whether stamps are recorded (``TRANSMIT_HUB_TIMELINE`` is set)."""

_records: list[tuple[str, str, int]] = []


def stamp(hop: str, message_ids: Iterable[str], now: int = 0) -> None:
    """Record that these messages passed ``hop`` now, or at ``now`` (``time.monotonic_ns()``)
    when given (call only when :data:`ON`)."""
    now = now or time.monotonic_ns()
    if len(_records) < MAX_RECORDS:
        _records.extend((hop, message_id, now) for message_id in message_ids)


def _dump() -> None:
    path = os.path.join(_DIR, f"{os.getpid()}.tsv")
    with open(path, "w") as f:
        f.writelines(f"{hop}\t{mid}\t{ns}\n" for hop, mid, ns in _records)


if ON:
    atexit.register(_dump)
