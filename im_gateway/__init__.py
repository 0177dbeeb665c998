"""im_gateway: the WebSocket server for IM users, linked to the transmit hub.

- :class:`Gateway` runs a gateway (``python -m im_gateway`` is its command line).
- :class:`GatewayConfig` holds and validates its settings.
- :mod:`im_gateway.frames` is the WebSocket protocol (pure parsing and encoding).
- :class:`Store` is the shared state in Redis (``im_gateway.store.redis``), with an
  in-memory twin for tests (``im_gateway.store.memory``).
- :class:`GatewayError` is the root of the package's exceptions.
"""

from __future__ import annotations

from .config import GatewayConfig
from .errors import (
    AuthError,
    ConfigError,
    FrameError,
    GatewayError,
    LifecycleError,
    StartupError,
)
from .server import Gateway
from .store import Store

__all__ = [
    "AuthError",
    "ConfigError",
    "FrameError",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "LifecycleError",
    "StartupError",
    "Store",
]
