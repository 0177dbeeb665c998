"""Message ids unique across the whole system: time-ordered, then random, then a counter.

``<ms since epoch, 12 hex><process nonce, 12 hex><counter, 6 hex>``: ids from one
process sort by creation time; the 48-bit random nonce keeps processes apart.
"""

from __future__ import annotations

import secrets
import time

from transmit_hub.types import MessageId


class MessageIds:
    """A generator of unique, time-ordered message ids (one per process is enough)."""

    __slots__ = ("_counter", "_head", "_head_ms", "_nonce")

    def __init__(self) -> None:
        self._nonce = f"{secrets.randbits(48):012x}"
        self._counter = 0
        self._head_ms = -1
        self._head = ""
        """The time and nonce of the ids of millisecond ``_head_ms`` (formatted once)."""

    def next(self, now_ms: int | None = None) -> tuple[MessageId, int]:
        """A fresh id and the server time (ms) it was made at."""
        ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        self._counter = counter = (self._counter + 1) & 0xFFFFFF
        if ms != self._head_ms:
            self._head_ms = ms
            self._head = f"{ms:012x}{self._nonce}"
        # The counter as 6 hex digits: hex() of it with bit 24 set, less "0x1" (half the
        # CPU of a format spec; every message), and no NewType call (a Python call).
        return self._head + hex(0x1000000 | counter)[3:], ms  # type: ignore[return-value]
