"""Splitting a TransmitMap into per-gateway deliveries: pure functions, no I/O.

The hub calls :func:`split` for every map it receives. Each target gateway gets
exactly one :class:`Delivery` carrying only its own users, however many users
that is; a target that is not attached yields one :class:`Undeliverable` for the
sender (``NOT_ATTACHED``, or ``INVALID`` when the id breaks the gateway id rule, so
it can never attach). A map may name its own sender as a target (a gateway can hold local and
remote members of one group): that share is delivered like any other. A
delivery is never routed again, so nothing can loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .types import (
    Delivery,
    GatewayId,
    TransmitMap,
    Undeliverable,
    UndeliverableReason,
    gateway_id_problem,
)


@dataclass(frozen=True, slots=True)
class Route:
    """What to do with one map: deliveries to write and notices for the sender."""

    deliveries: tuple[tuple[GatewayId, Delivery], ...]
    undeliverable: tuple[Undeliverable, ...]


def invalid_reason(tmap: TransmitMap) -> str | None:
    """Say why ``tmap`` cannot be routed, or ``None`` when it can."""
    if not tmap.message.id:
        return "message has no id"
    for gateway_id in tmap.users:
        if not gateway_id:
            return "empty gateway id"
    return None


def split(tmap: TransmitMap, is_attached: Callable[[GatewayId], bool]) -> Route:
    """Split ``tmap`` into one delivery per attached target and notices for the rest.

    Targets with no users are skipped: there is nothing to deliver there.
    """
    if invalid_reason(tmap) is not None:
        notice = Undeliverable(
            gateway_id=GatewayId(""),
            message_ids=(tmap.message.id,),
            user_ids=tuple(r.user_id for rs in tmap.users.values() for r in rs),
            reason=UndeliverableReason.INVALID,
        )
        return Route(deliveries=(), undeliverable=(notice,))
    deliveries: list[tuple[GatewayId, Delivery]] = []
    undeliverable: list[Undeliverable] = []
    for gateway_id, recipients in tmap.users.items():
        if not recipients:
            continue
        if is_attached(gateway_id):
            deliveries.append((gateway_id, Delivery(tmap.message, tuple(recipients))))
        else:
            # A valid id may attach later; any other never will (the sender's data is bad).
            reason = (
                UndeliverableReason.NOT_ATTACHED
                if gateway_id_problem(gateway_id) is None
                else UndeliverableReason.INVALID
            )
            undeliverable.append(not_delivered(gateway_id, tmap, reason))
    return Route(deliveries=tuple(deliveries), undeliverable=tuple(undeliverable))


def not_delivered(
    gateway_id: GatewayId, tmap: TransmitMap, reason: UndeliverableReason
) -> Undeliverable:
    """The notice telling a sender that ``gateway_id``'s share of ``tmap`` was not passed on."""
    return Undeliverable(
        gateway_id=gateway_id,
        message_ids=(tmap.message.id,),
        user_ids=tuple(r.user_id for r in tmap.users.get(gateway_id, ())),
        reason=reason,
    )
