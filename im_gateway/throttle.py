"""Counted logging: a failure that repeats is one line with a count, never a flood."""

from __future__ import annotations

import logging

from transmit_hub.throttle import Every


class Throttled:
    """Count an event; log it (with the count since the last line) at most once per
    ``interval`` seconds. ``message`` takes one ``%d``, the count."""

    __slots__ = ("_count", "_every", "_level", "_logger", "_message")

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        interval: float = 5.0,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._message = message
        self._every = Every(interval)
        self._level = level
        self._count = 0

    def hit(self, n: int = 1, *, exc: BaseException | None = None) -> bool:
        """Count ``n`` events; True when this call wrote the line (with ``exc``'s text)."""
        self._count += n
        if not self._every.due():
            return False
        if exc is not None:
            self._logger.log(
                self._level,
                "%s (last: %s: %s)",
                self._message % self._count,
                type(exc).__name__,
                exc,
            )
        else:
            self._logger.log(self._level, self._message, self._count)
        self._count = 0
        return True
