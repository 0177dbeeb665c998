"""One gate for counted log lines: a failure that repeats is one line now and then, with
its count, never a flood. Both programs' rate-limited lines go through :class:`Every`
(the gateway's counted-line helper too)."""

from __future__ import annotations

import time

__all__ = ["Every"]


class Every:
    """Open at most once per ``interval`` seconds (the first call always opens)."""

    __slots__ = ("_interval", "_last")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = float("-inf")

    def due(self, now: float | None = None) -> bool:
        """True (and the interval starts again) when ``interval`` has passed since the
        last True; ``now``: the monotonic clock, read when not given."""
        if now is None:
            now = time.monotonic()
        if now - self._last < self._interval:
            return False
        self._last = now
        return True
