"""What a hub link (:class:`~transmit_hub.link.HubLink`) and a pool of them
(:class:`~transmit_hub.pool.HubPool`) tell their one consumer, and the bounded queue that
carries it: a slow consumer backpressures the hubs, and no event is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from .types import Delivery, Undeliverable

__all__ = [
    "Delivered",
    "LinkDown",
    "LinkEvent",
    "LinkLost",
    "LinkUp",
    "NotDelivered",
    "close_events",
    "read_events",
]


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The link attached (again): the hub ``hub_id`` accepted this gateway."""

    hub_id: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The stream ended, or another process holds our gateway id; the link reconnects."""

    reason: str


@dataclass(frozen=True, slots=True)
class LinkLost:
    """One hub's stream ended while others still serve (from a
    :class:`~transmit_hub.pool.HubPool`): what that hub wrote into its dead stream may
    never have arrived, though the pool is still connected."""

    hub: str
    reason: str


@dataclass(frozen=True, slots=True)
class Delivered:
    """Messages for users of this gateway, one delivery per message."""

    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True)
class NotDelivered:
    """Shares of maps this gateway sent that the hub could not pass on."""

    notices: tuple[Undeliverable, ...]


LinkEvent = LinkUp | LinkDown | LinkLost | Delivered | NotDelivered

_CLOSED: Final = object()


async def read_events(
    queue: asyncio.Queue[object], closed: Callable[[], bool]
) -> AsyncIterator[LinkEvent]:
    """The events put in ``queue``, for one consumer; ends once ``closed()`` and the queue
    is empty, or at the mark of :func:`close_events`."""
    while True:
        if closed() and queue.empty():
            return
        item = await queue.get()
        if item is _CLOSED:
            return
        yield item  # type: ignore[misc]


def close_events(queue: asyncio.Queue[object]) -> None:
    """Wake a consumer waiting in :func:`read_events` so that it ends (when there is room
    for the mark; a full queue is read to its end first)."""
    if not queue.full():
        queue.put_nowait(_CLOSED)
