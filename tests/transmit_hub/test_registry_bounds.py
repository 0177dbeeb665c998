"""The registry's bounds as pure logic with a fake clock: what is forgotten, and when."""

from __future__ import annotations

from transmit_hub.registry import Registry
from transmit_hub.types import GatewayId


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ids(registry: Registry) -> list[str]:
    return [g.gateway_id for g in registry.stats().gateways]


def attach_and_leave(registry: Registry, gateway_id: str) -> None:
    registry.detach(registry.attach(GatewayId(gateway_id), "peer"))


def test_departed_gateways_are_forgotten_after_forget_after() -> None:
    """A gateway's counters outlive its stream by forget_after seconds, then go; an attached
    gateway is never forgotten, and coming back before the deadline keeps its history."""
    clock = Clock()
    registry = Registry("hub", 8, forget_after=60, clock=clock)
    attached = registry.attach(GatewayId("stays"), "peer")
    attach_and_leave(registry, "gone")
    back = registry.attach(GatewayId("back"), "peer")
    back.counters.deliveries_sent = 7
    registry.detach(back)
    clock.now += 59
    assert ids(registry) == ["back", "gone", "stays"]
    back = registry.attach(GatewayId("back"), "peer")  # returns in time: history kept
    clock.now += 2
    assert ids(registry) == ["back", "stays"]
    assert registry.counters("back").deliveries_sent == 7
    clock.now += 3600
    assert ids(registry) == ["back", "stays"]
    registry.detach(attached)
    registry.detach(back)
    clock.now += 61
    assert ids(registry) == []


def test_at_most_max_gateways_departed_are_remembered() -> None:
    """Beyond max_gateways departed gateways, the longest gone are forgotten first."""
    clock = Clock()
    registry = Registry("hub", 8, max_gateways=3, forget_after=3600, clock=clock)
    for i in range(10):
        attach_and_leave(registry, f"gw-{i}")
        clock.now += 1
    assert ids(registry) == ["gw-7", "gw-8", "gw-9"]


def test_full_counts_attached_gateways_only() -> None:
    """full() is true for a new id once max_gateways are attached; an attached id may always
    attach again (it replaces itself)."""
    registry = Registry("hub", 8, max_gateways=2)
    registry.attach(GatewayId("a"), "peer")
    assert not registry.full("b")
    registry.attach(GatewayId("b"), "peer")
    assert registry.full("c")
    assert not registry.full("a")
