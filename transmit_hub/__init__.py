"""transmit_hub: the gRPC transmit hub and the gateway-side link to it.

- :class:`HubServer` runs the hub (``python -m transmit_hub`` is its command line).
- :class:`HubLink` is a gateway's end of the Connect stream; it yields
  :data:`LinkEvent` values (:class:`LinkUp`, :class:`LinkDown`, :class:`LinkLost`,
  :class:`Delivered`, :class:`NotDelivered`).
- :class:`HubPool` is a gateway's links to several hubs, used as one link.
- The plain types (:class:`TransmitMap`, :class:`Message`, ...) and the exceptions
  (:class:`TransmitHubError` and below) are the package's vocabulary.

The names that need gRPC (the server, the link, the pool) are imported on first use, so
``python -m transmit_hub`` can choose gRPC's I/O engine before gRPC loads
(:mod:`transmit_hub.grpc_io`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    LifecycleError,
    LinkClosed,
    LinkError,
    ProtocolError,
    TransmitHubError,
)
from .types import (
    MESSAGE_GROUP,
    MESSAGE_PRIVATE,
    Delivery,
    GatewayId,
    GatewayInfo,
    GatewayStats,
    HubStats,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    Undeliverable,
    UndeliverableReason,
    UserId,
)

if TYPE_CHECKING:
    from .link import Delivered, HubLink, LinkDown, LinkEvent, LinkLost, LinkUp, NotDelivered
    from .pool import HubPool
    from .server import HubServer

__all__ = [
    "MESSAGE_GROUP",
    "MESSAGE_PRIVATE",
    "ConfigError",
    "Delivered",
    "Delivery",
    "GatewayId",
    "GatewayInfo",
    "GatewayStats",
    "HubLink",
    "HubPool",
    "HubServer",
    "HubStats",
    "LifecycleError",
    "LinkClosed",
    "LinkDown",
    "LinkError",
    "LinkEvent",
    "LinkLost",
    "LinkUp",
    "Message",
    "MessageId",
    "NotDelivered",
    "ProtocolError",
    "Recipient",
    "TransmitHubError",
    "TransmitMap",
    "Undeliverable",
    "UndeliverableReason",
    "UserId",
]

_LAZY = {
    **dict.fromkeys(
        ("Delivered", "HubLink", "LinkDown", "LinkEvent", "LinkLost", "LinkUp", "NotDelivered"),
        ".link",
    ),
    "HubPool": ".pool",
    "HubServer": ".server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
