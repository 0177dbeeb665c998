"""The store's shared ack writes (:class:`im_gateway.store.keyspace.Acks`): one in flight at
a time, what is asked for meanwhile goes in the next one. The write itself is a fake here
(the boundary); the Redis script it calls has its own tests in test_contract.py."""

from __future__ import annotations

import asyncio

from im_gateway.store.keyspace import Acks
from tests.helpers import wait_until


class _Writes:
    """A write that holds until released, and records what each call got."""

    def __init__(self) -> None:
        self.calls: list[dict[str, int]] = []
        self.release = asyncio.Event()

    async def __call__(self, acks: dict[str, int]) -> None:
        self.calls.append(dict(acks))
        await self.release.wait()


async def test_acks_asked_for_during_a_write_share_the_next_one() -> None:
    writes = _Writes()
    acks = Acks(writes)
    first = asyncio.create_task(acks.ack("a", 1))
    await wait_until(lambda: len(writes.calls) == 1, what="the first write")
    later = []
    for key, upto in (("b", 5), ("a", 2), ("b", 7), ("b", 6)):
        later.append(asyncio.create_task(acks.ack(key, upto)))
        for _ in range(3):  # each in a loop turn of its own
            await asyncio.sleep(0)
    assert writes.calls == [{"a": 1}]  # nothing else goes out while the first is in flight
    assert not first.done()
    writes.release.set()
    await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)
    assert writes.calls == [{"a": 1}, {"a": 2, "b": 7}]  # one more write, highest positions


async def test_a_failed_write_reaches_its_callers_and_the_next_ack_is_written() -> None:
    calls: list[dict[str, int]] = []
    fail = True

    async def write(got: dict[str, int]) -> None:
        calls.append(got)
        if fail:
            raise ConnectionError("Redis went away")

    acks = Acks(write)
    results = await asyncio.gather(acks.ack("a", 3), acks.ack("b", 4), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    fail = False
    await asyncio.wait_for(acks.ack("a", 5), timeout=5)
    assert calls == [{"a": 3, "b": 4}, {"a": 5}]


async def test_a_cancelled_write_leaves_the_next_one_free() -> None:
    writes = _Writes()
    acks = Acks(writes)
    first = asyncio.create_task(acks.ack("a", 1))
    await wait_until(lambda: len(writes.calls) == 1, what="the first write")
    waiting = asyncio.create_task(acks.ack("b", 2))
    for _ in range(3):
        await asyncio.sleep(0)
    for task in list(acks._writes):  # the gateway stopping: its write tasks are cancelled
        task.cancel()
    await asyncio.gather(first, waiting, return_exceptions=True)
    assert first.cancelled()
    assert waiting.cancelled()
    writes.release.set()
    await asyncio.wait_for(acks.ack("c", 3), timeout=5)
    assert writes.calls[-1] == {"b": 2, "c": 3}  # b's ack stayed gathered, written with c's
