"""transmit_hub: the gRPC transmit hub and the gateway-side link to it.

- :class:`HubServer` runs the hub (``python -m transmit_hub`` is its command line).
- :class:`HubLink` is a gateway's end of the Connect stream; it yields
  :data:`LinkEvent` values (:class:`LinkUp`, :class:`LinkDown`, :class:`LinkLost`,
  :class:`Delivered`, :class:`NotDelivered`).
- :class:`HubPool` is a gateway's links to several hubs, used as one link.
- The plain types (:class:`TransmitMap`, :class:`Message`, ...) and the exceptions
  (:class:`TransmitHubError` and below) are the package's vocabulary.
"""

from __future__ import annotations

from .errors import (
    ConfigError,
    LifecycleError,
    LinkClosed,
    LinkError,
    ProtocolError,
    TransmitHubError,
)
from .link import Delivered, HubLink, LinkDown, LinkEvent, LinkLost, LinkUp, NotDelivered
from .pool import HubPool
from .server import HubServer
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
