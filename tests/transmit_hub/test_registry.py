"""The registry: keyed by declared gateway id, replacement, guarded removal, counters."""

from __future__ import annotations

from transmit_hub.registry import EndReason, Registry
from transmit_hub.types import GatewayId

GW = GatewayId("gw-1")


def test_second_attach_replaces_and_old_detach_keeps_the_new() -> None:
    """A second attach with the same id ends the first (REPLACED) and takes over its queued
    deliveries; the old stream's late detach does not remove the new one."""
    registry = Registry("hub", 10)
    old = registry.attach(GW, "peer-1")
    assert old.outbox.offer(b"queued")
    new = registry.attach(GW, "peer-2")
    assert old.end_reason is EndReason.REPLACED
    assert old.ended.is_set()
    assert registry.outboxes[GW] is new.outbox
    assert new.outbox.take(10, 100) == ([b"queued"], [])
    assert registry.detach(old) is False
    assert [g.peer for g in registry.gateways()] == ["peer-2"]
    assert registry.detach(new) is True
    assert registry.gateways() == []
    assert registry.outboxes == {}


def test_counters_outlive_attachments() -> None:
    """Per-gateway counters survive detach and re-attach; stats say whether it is attached."""
    registry = Registry("hub", 10)
    first = registry.attach(GW, "peer-1")
    first.counters.deliveries_sent += 3
    registry.detach(first)
    (gateway,) = registry.stats().gateways
    assert (gateway.deliveries_sent, gateway.attached) == (3, False)
    second = registry.attach(GW, "peer-2")
    second.counters.deliveries_sent += 1
    (gateway,) = registry.stats().gateways
    assert (gateway.deliveries_sent, gateway.attached) == (4, True)
