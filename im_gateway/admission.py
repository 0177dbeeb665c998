"""Who gets a WebSocket: connection caps, and a quiet log of refused handshakes.

Pure state, no I/O, tested without an event loop:

- :class:`ConnectionCaps` counts this gateway's WebSockets, per user and in all.
  :meth:`ConnectionCaps.admit` checks and takes a slot in one synchronous step (the
  gateway calls it in ``process_request`` with no ``await`` in between), so many
  concurrent handshakes cannot race past a cap. The slot is given back by
  :meth:`ConnectionCaps.release` when the TCP connection is gone, whatever happened
  after the check (handshake failure, session end).
- :class:`RejectionLog` logs refused handshakes at INFO without flooding: the first
  at once, then one line per ``interval`` seconds with the count and the last reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from transmit_hub.types import UserId

from .errors import ConfigError

logger = logging.getLogger(__name__)

TOO_MANY_FOR_USER: Final = 429
GATEWAY_FULL: Final = 503


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade is refused: the HTTP status, a code and a sentence."""

    status: int
    code: str
    reason: str


class ConnectionCaps:
    """At most ``per_user`` WebSockets per user and ``total`` in all, on this gateway."""

    __slots__ = ("_per_user", "_total", "_users", "count")

    def __init__(self, *, per_user: int, total: int) -> None:
        if per_user < 1 or total < 1:
            raise ConfigError("connection caps must be at least 1")
        self._per_user = per_user
        self._total = total
        self._users: dict[UserId, int] = {}
        self.count = 0
        """Slots taken now."""

    def admit(self, user: UserId) -> Refusal | None:
        """Take a slot for ``user``, or say why not (nothing is taken then)."""
        if self.count >= self._total:
            return Refusal(
                GATEWAY_FULL,
                "gateway_full",
                f"this gateway holds {self._total} connections, its most "
                "(--max-connections); try another gateway or later",
            )
        held = self._users.get(user, 0)
        if held >= self._per_user:
            return Refusal(
                TOO_MANY_FOR_USER,
                "too_many_connections",
                f"user {user} already has {self._per_user} connections on this gateway "
                "(--max-connections-per-user); close one first",
            )
        self._users[user] = held + 1
        self.count += 1
        return None

    def release(self, user: UserId) -> None:
        """Give back a slot taken by :meth:`admit`."""
        held = self._users.get(user, 0)
        if held <= 0:
            return
        if held == 1:
            del self._users[user]
        else:
            self._users[user] = held - 1
        self.count -= 1

    def held(self, user: UserId) -> int:
        """Slots ``user`` holds now."""
        return self._users.get(user, 0)


class RejectionLog:
    """Log refused handshakes at INFO: one line per ``interval`` seconds, with a count."""

    __slots__ = ("_clock", "_count", "_interval", "_last", "_logged_once", "_reason")

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._count = 0
        self._last = 0.0
        self._logged_once = False
        self._reason = ""

    def hit(self, reason: str) -> bool:
        """Count one refusal; True when this call wrote a log line."""
        self._count += 1
        self._reason = reason
        now = self._clock()
        if self._logged_once and now - self._last < self._interval:
            return False
        if self._count == 1:
            logger.info("refused a WebSocket handshake: %s", reason)
        else:
            logger.info(
                "refused %d WebSocket handshakes in the last %.0f s (last: %s)",
                self._count,
                now - self._last,
                reason,
            )
        self._count = 0
        self._last = now
        self._logged_once = True
        return True

    def flush(self) -> bool:
        """Log what was counted since the last line (at shutdown); True when it wrote."""
        if not self._count:
            return False
        logger.info(
            "refused %d WebSocket handshakes since the last report (last: %s)",
            self._count,
            self._reason,
        )
        self._count = 0
        return True
