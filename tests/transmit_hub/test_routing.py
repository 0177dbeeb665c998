"""The pure split of a TransmitMap into per-gateway deliveries and notices."""

from __future__ import annotations

from transmit_hub.routing import split
from transmit_hub.types import (
    GatewayId,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    UndeliverableReason,
    UserId,
)

MSG = Message(MessageId("m1"), UserId(1), 7, 2, 0, 1000, "hi")


def rs(*ids: int) -> tuple[Recipient, ...]:
    return tuple(Recipient(UserId(i)) for i in ids)


def test_one_delivery_per_attached_gateway_with_only_its_users() -> None:
    """Three targets give three deliveries, each with only that gateway's users."""
    tmap = TransmitMap(
        MSG, {GatewayId("a"): rs(1, 2), GatewayId("b"): rs(3), GatewayId("c"): rs(4, 5, 6)}
    )
    route = split(tmap, lambda g: True)
    got = {g: tuple(r.user_id for r in d.recipients) for g, d in route.deliveries}
    assert got == {"a": (1, 2), "b": (3,), "c": (4, 5, 6)}
    assert all(d.message == MSG for _, d in route.deliveries)
    assert route.undeliverable == ()


def test_unattached_gateway_yields_one_notice_with_message_id() -> None:
    """A target that is not attached becomes one NOT_ATTACHED notice naming the message and users."""
    tmap = TransmitMap(MSG, {GatewayId("a"): rs(1), GatewayId("gone"): rs(8, 9)})
    route = split(tmap, lambda g: g == "a")
    assert [g for g, _ in route.deliveries] == ["a"]
    (notice,) = route.undeliverable
    assert notice.gateway_id == "gone"
    assert notice.message_ids == ("m1",)
    assert notice.user_ids == (8, 9)
    assert notice.reason is UndeliverableReason.NOT_ATTACHED


def test_empty_targets_are_skipped_and_invalid_maps_refused() -> None:
    """A target with no users yields nothing; a map without a message id is INVALID."""
    assert split(TransmitMap(MSG, {GatewayId("a"): ()}), lambda g: True).deliveries == ()
    bad = TransmitMap(Message(MessageId(""), UserId(1), 2, 1, 0, 0, ""), {GatewayId("a"): rs(2)})
    route = split(bad, lambda g: True)
    assert route.deliveries == ()
    assert route.undeliverable[0].reason is UndeliverableReason.INVALID
