"""The gate of counted log lines (transmit_hub.throttle), without a loop."""

from __future__ import annotations

from transmit_hub.throttle import Every


def test_every_opens_first_then_once_per_interval() -> None:
    gate = Every(10.0)
    assert gate.due(100.0)
    assert not gate.due(100.0)
    assert not gate.due(109.9)
    assert gate.due(110.0)  # the interval counts from the last time it opened
    assert not gate.due(119.0)
    assert gate.due(500.0)


def test_every_reads_the_clock_when_not_given_one() -> None:
    gate = Every(3600.0)
    assert gate.due()
    assert not gate.due()
