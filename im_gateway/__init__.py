"""im_gateway: the WebSocket server for IM users, linked to the transmit hub.

- :class:`Gateway` runs a gateway (``python -m im_gateway`` is its command line).
- :class:`GatewayConfig` holds and validates its settings.
- :mod:`im_gateway.frames` is the WebSocket protocol (pure parsing and encoding).
- :class:`Store` is the shared state in Redis (``im_gateway.store.redis``), with an
  in-memory twin for tests (``im_gateway.store.memory``).
- :class:`GatewayError` is the root of the package's exceptions.
- :mod:`im_gateway.client` is the client library; it needs only ``websockets``, so the
  names above are imported on first use (importing the client loads no server code).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import GatewayConfig
    from .errors import (
        AuthError,
        ConfigError,
        FrameError,
        GatewayError,
        LifecycleError,
        StartupError,
    )
    from .gateway import Gateway
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

_WHERE = {
    "AuthError": ".errors",
    "ConfigError": ".errors",
    "FrameError": ".errors",
    "Gateway": ".gateway",
    "GatewayConfig": ".config",
    "GatewayError": ".errors",
    "LifecycleError": ".errors",
    "StartupError": ".errors",
    "Store": ".store",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
