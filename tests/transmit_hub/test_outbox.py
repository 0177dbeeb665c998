"""The per-gateway outbox: bounded, FIFO, batches by count and bytes, explicit full policy."""

from __future__ import annotations

import asyncio

import pytest

from transmit_hub.errors import ConfigError
from transmit_hub.outbox import Outbox


def test_offer_refuses_when_full_and_counts_notices() -> None:
    """offer() returns False once capacity items wait, notices included; nothing is queued."""
    box = Outbox(3)
    assert box.offer(b"d1")
    assert box.offer_notice(b"n1")
    assert box.offer(b"d2")
    assert not box.offer(b"d3")
    assert not box.offer_notice(b"n2")
    assert len(box) == 3
    assert box.take(10, 1000) == ([b"d1", b"d2"], [b"n1"])
    assert len(box) == 0


def test_take_respects_count_and_byte_budget_in_order() -> None:
    """take() keeps FIFO order, stops at max_items or max_bytes, but always takes one item."""
    box = Outbox(100)
    for i in range(10):
        assert box.offer(bytes([i]) * 10)
    first, _ = box.take(3, 1000)
    assert first == [bytes([i]) * 10 for i in range(3)]
    second, _ = box.take(100, 25)
    assert second == [bytes([i]) * 10 for i in range(3, 5)]
    big = Outbox(5)
    big.offer(b"x" * 100)
    assert big.take(10, 10) == ([b"x" * 100], [])


async def test_wait_wakes_on_offer_and_close() -> None:
    """wait() returns when an item arrives or the outbox closes; wait_empty() when drained
    and the frame taken is written (a hub's shutdown waits for it: old code returned at
    the take)."""
    box = Outbox(5)
    waiter = asyncio.create_task(box.wait())
    await asyncio.sleep(0)  # one loop turn: the task runs up to its wait, not past it
    assert not waiter.done()
    box.offer(b"d")
    await asyncio.wait_for(waiter, 1)
    emptied = asyncio.create_task(box.wait_empty())
    await asyncio.sleep(0)  # one loop turn, as above
    assert not emptied.done()
    box.take(10, 100)
    await asyncio.sleep(0)  # one loop turn, as above
    assert not emptied.done()  # taken, not written yet
    box.written()
    await asyncio.wait_for(emptied, 1)
    box.offer(b"e")
    box.take(10, 100)
    emptied = asyncio.create_task(box.wait_empty())
    box.discard()  # a gateway gone: nothing more to wait for
    await asyncio.wait_for(emptied, 1)
    box.close()
    await asyncio.wait_for(box.wait(), 1)
    assert not box.offer(b"late")


def test_adopt_moves_pending_items_first() -> None:
    """A replacing stream's outbox adopts what the replaced one still held, oldest first."""
    old = Outbox(5)
    old.offer(b"a")
    old.offer(b"b")
    new = Outbox(5)
    new.adopt(old)
    new.offer(b"c")
    assert new.take(10, 100) == ([b"a", b"b", b"c"], [])
    assert len(old) == 0


def test_capacity_must_be_positive() -> None:
    """An outbox without room is a configuration error."""
    with pytest.raises(ConfigError, match="capacity"):
        Outbox(0)


def test_offer_refuses_past_the_byte_budget_but_one_item_always_fits() -> None:
    """Items past max_bytes held (waiting or being written) are refused (deliveries and
    notices alike); an empty outbox takes one item of any size; take(), written() and
    adopt() keep the count of bytes."""
    box = Outbox(100, max_bytes=10)
    assert box.offer(b"x" * 25)  # alone: goes however big
    assert not box.offer(b"y")
    assert box.take(10, 100) == ([b"x" * 25], [])
    assert (box.waiting_bytes, box.held_bytes) == (0, 25)
    assert not box.offer(b"y")  # the frame being written still counts
    box.written()
    assert box.held_bytes == 0
    assert box.offer(b"a" * 6)
    assert box.offer_notice(b"n" * 4)
    assert not box.offer(b"b")
    assert not box.offer_notice(b"m")
    assert box.waiting_bytes == 10
    newer = Outbox(100, max_bytes=8)
    newer.adopt(box)  # the notice (4), then the delivery (6) would pass 8: it is dropped
    assert (newer.waiting_bytes, len(newer)) == (4, 1)
    assert newer.take(10, 100) == ([], [b"n" * 4])
    assert newer.waiting_bytes == 0
