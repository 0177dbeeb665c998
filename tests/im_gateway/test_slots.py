"""The store slots: a call waits at most ``--store-wait`` for one, and no wait that
gives up (or is cancelled) loses or adds a slot."""

from __future__ import annotations

import asyncio
import random

import pytest

from im_gateway.errors import ConfigError, StoreBusy
from im_gateway.slots import Slots


async def test_a_free_slot_is_taken_at_once_and_a_full_set_fails_after_the_wait() -> None:
    slots = Slots(2, wait=0.05)
    async with slots, slots:
        assert (slots.held, slots.locked()) == (2, True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreBusy, match="--store-wait") as caught:
            async with slots:
                raise AssertionError("a third slot was given")
        assert isinstance(caught.value, TimeoutError)  # a store failure like a timeout
        assert 0.04 <= loop.time() - started < 1.0
        assert (slots.held, slots.busy) == (2, 1)
    assert (slots.held, slots.locked()) == (0, False)


async def test_a_waiter_gets_the_slot_given_back_within_its_wait() -> None:
    slots = Slots(1, wait=5.0)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)  # the waiter queues
    slots.release()
    assert await asyncio.wait_for(waiter, 1.0) is True
    assert (slots.held, slots.busy) == (1, 0)
    slots.release()


async def test_waits_that_give_up_or_are_cancelled_keep_the_count_right() -> None:
    """Hundreds of calls on 3 slots, holding them a random number of loop turns, with
    waits short enough that many give up and some cancelled: afterwards exactly 3 slots
    are free."""
    rng = random.Random(7)
    slots = Slots(3, wait=0.002)

    async def call(turns: int) -> None:
        try:
            async with slots:
                for _ in range(turns):
                    await asyncio.sleep(0)
        except StoreBusy:
            pass

    tasks = [asyncio.create_task(call(rng.randrange(0, 200))) for _ in range(400)]
    for task in rng.sample(tasks, 40):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert slots.held == 0
    assert slots.busy > 0  # the waits did give up
    for _ in range(3):
        await asyncio.wait_for(slots.acquire(), 0.5)
    assert slots.locked()


def test_a_slot_set_needs_a_slot_and_a_wait() -> None:
    with pytest.raises(ConfigError):
        Slots(0, wait=1.0)
    with pytest.raises(ConfigError):
        Slots(1, wait=0.0)
