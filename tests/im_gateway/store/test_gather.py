"""Reads gathered per loop turn (:class:`~im_gateway.store.gather.Gathered`): one call for
the keys asked for together, each caller its own answer or the batch's error, and a
cancelled caller leaves the others' answers alone."""

from __future__ import annotations

import asyncio

import pytest

from im_gateway.errors import StoreError
from im_gateway.store.gather import Gathered


class Reader:
    """Answers ``key * 10`` per key, records each call, and can be made to fail or wait."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def __call__(self, keys: list[int]) -> list[int]:
        self.calls.append(keys)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [k * 10 for k in keys]


async def test_keys_asked_for_in_one_turn_share_one_read() -> None:
    """Five callers in one turn: one read with their keys in order, each its own answer;
    a later caller gets a read of its own."""
    reader = Reader()
    gathered: Gathered[int, int] = Gathered(reader)
    assert await asyncio.gather(*(gathered.get(k) for k in (3, 1, 4, 1, 5))) == [
        30,
        10,
        40,
        10,
        50,
    ]
    assert reader.calls == [[3, 1, 4, 1, 5]]
    assert await gathered.get(9) == 90
    assert reader.calls == [[3, 1, 4, 1, 5], [9]]


async def test_a_failed_read_fails_every_caller_of_its_batch_only() -> None:
    """The batch's error reaches each of its callers; the next batch reads afresh."""
    reader = Reader()
    reader.fail = ConnectionError("redis went away")
    gathered: Gathered[int, int] = Gathered(reader)
    results = await asyncio.gather(gathered.get(1), gathered.get(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    reader.fail = None
    assert await gathered.get(2) == 20


async def test_a_key_answered_with_an_exception_fails_its_caller_alone() -> None:
    """A read may answer one key with an exception (its Redis Cluster node silent): that
    caller gets it, the others of the batch their answers."""

    async def read(keys: list[int]) -> list[int | Exception]:
        return [TimeoutError(f"node of {k}") if k == 2 else k * 10 for k in keys]

    gathered: Gathered[int, int] = Gathered(read)
    results = await asyncio.gather(*(gathered.get(k) for k in (1, 2, 3)), return_exceptions=True)
    assert results[0] == 10
    assert isinstance(results[1], TimeoutError)
    assert results[2] == 30


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    """One caller of a batch in flight is cancelled: the others still get their answers."""
    reader = Reader()
    reader.gate = asyncio.Event()
    gathered: Gathered[int, int] = Gathered(reader)
    first = asyncio.create_task(gathered.get(1))
    second = asyncio.create_task(gathered.get(2))
    await asyncio.wait_for(reader.called.wait(), 5)
    first.cancel()
    reader.gate.set()
    assert await second == 20
    with pytest.raises(asyncio.CancelledError):
        await first
    assert reader.calls == [[1, 2]]


async def test_a_read_that_answers_the_wrong_count_fails_its_callers() -> None:
    """A read with fewer answers than keys is an error for its callers, not a mix-up."""

    async def short(keys: list[int]) -> list[int]:
        return [0]

    gathered: Gathered[int, int] = Gathered(short)
    results = await asyncio.gather(gathered.get(1), gathered.get(2), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)


async def test_drain_waits_for_a_call_whose_callers_were_cancelled() -> None:
    """What the store's close relies on for its acks: a write under way lands before
    ``drain`` returns, even when everyone who asked for it has given up."""
    reader = Reader()
    reader.gate = asyncio.Event()
    gathered: Gathered[int, int] = Gathered(reader)
    caller = asyncio.create_task(gathered.get(7))
    await asyncio.wait_for(reader.called.wait(), timeout=5)
    caller.cancel()
    drained = asyncio.create_task(gathered.drain())
    await asyncio.sleep(0)  # one turn: drain is waiting, not done
    assert not drained.done()
    reader.gate.set()
    await asyncio.wait_for(drained, timeout=5)
    assert reader.calls == [[7]]
    assert caller.cancelled()
