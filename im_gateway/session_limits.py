"""A connection's limits, as the gateway's settings give them to each
:class:`~im_gateway.sessions.Session`."""

from __future__ import annotations

from dataclasses import dataclass

from . import frames

__all__ = ["SessionLimits"]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits (see :class:`im_gateway.config.GatewayConfig`)."""

    send_queue: int = 1024
    replay_page: int = 200
    held_max: int = 1024
    fill_delay: float = 0.05
    """Seconds a hole may wait for its push before it is read from the inbox."""
    replay_budget: int = 20_000
    """Inbox entries per minute a connection may ask to be replayed (type 14); 0: no limit."""
    max_refused: int = 100
    """Refused frames per minute before the connection is closed (1008); 0: never."""
    idle_timeout: float = 300.0
    rate: float = 200.0
    burst: float = 400.0
    max_content: int = frames.DEFAULT_MAX_CONTENT
    close_timeout: float = 3.0
