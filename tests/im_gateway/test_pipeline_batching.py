"""The pipeline's natural batching: no wait when idle or at moderate load, and what
arrives while a store call is out goes into the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from im_gateway import frames
from im_gateway.pipeline import Pipeline, Rejected
from im_gateway.store import Accepted, MemoryStore, Refusal, Refused, Submission
from tests.helpers import wait_until
from transmit_hub.types import UserId

A = UserId(1)
B = UserId(2)


class GatedStore(MemoryStore):
    """Records each submit's size; holds every submit while ``gate`` is clear."""

    def __init__(self) -> None:
        super().__init__()
        self.submits: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        self.submits.append(len(batch))
        await self.gate.wait()
        return await super().submit(batch)


class Caller:
    """Keeps the client ids of its settled submissions, in order."""

    def __init__(self) -> None:
        self.settled_ids: list[str] = []

    def settled(self, result: Accepted | Rejected) -> None:
        self.settled_ids.append(result.client_id)

    def failed(self, code: str, reason: str, client_id: str) -> None:
        raise AssertionError(f"{client_id} failed: {code} {reason}")


class Route:
    def route(self, accepted: Accepted, caller: object) -> None:
        pass


def frame(cid: str) -> frames.SendMessage:
    return frames.SendMessage(type=1, id=cid, to=int(B), content_type=0, content=cid)


async def turns(n: int) -> None:
    """Let the loop run ``n`` iterations (no time needs to pass)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_what_arrives_during_a_store_call_makes_the_next_batch() -> None:
    """The first message is stored at once; three that arrive while its call is out go
    together in the next call, in order."""
    store = GatedStore()
    pipeline = Pipeline(store=store, route=Route())
    caller = Caller()
    await pipeline.start()
    try:
        store.gate.clear()
        assert pipeline.offer(caller, pipeline.submission(A, frame("c0")))
        await wait_until(lambda: store.submits == [1])
        for cid in ("c1", "c2", "c3"):
            assert pipeline.offer(caller, pipeline.submission(A, frame(cid)))
        store.gate.set()
        await wait_until(lambda: len(caller.settled_ids) == 4)
        assert store.submits == [1, 3]
        assert caller.settled_ids == ["c0", "c1", "c2", "c3"]
    finally:
        await pipeline.close()


async def test_while_traffic_flows_a_lone_message_does_not_wait_by_default() -> None:
    """Right after a batch (traffic flowing), the next message is stored within a few loop
    turns: no linger by default (the old default waited 3 ms for company)."""
    store = GatedStore()
    pipeline = Pipeline(store=store, route=Route())
    caller = Caller()
    await pipeline.start()
    try:
        for i in range(3):
            assert pipeline.offer(caller, pipeline.submission(A, frame(f"c{i}")))
            await turns(10)
            assert caller.settled_ids == [f"c{j}" for j in range(i + 1)]
        assert store.submits == [1, 1, 1]
    finally:
        await pipeline.close()


class UnreplicatedStore(MemoryStore):
    """Stores, but answers every submission as ``WAIT`` unsatisfied."""

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        await super().submit(batch)
        return [Refused(s.client_id, Refusal.NOT_REPLICATED) for s in batch]


async def test_messages_not_replicated_in_time_are_one_counted_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sends refused because too few replicas confirmed them (a silent replica under
    --redis-wait-replicas) are answered ``internal`` and logged as one counted line, not
    one per message (before: not logged at all, only a metric)."""
    pipeline = Pipeline(store=UnreplicatedStore(), route=Route())
    answers: list[Accepted | Rejected] = []

    class Keeping(Caller):
        def settled(self, result: Accepted | Rejected) -> None:
            answers.append(result)

    caller = Keeping()
    await pipeline.start()
    try:
        for cid in ("c0", "c1", "c2"):
            await pipeline.put(caller, pipeline.submission(A, frame(cid)))
        await wait_until(lambda: len(answers) == 3)
    finally:
        await pipeline.close()
    assert {a.code for a in answers if isinstance(a, Rejected)} == {frames.INTERNAL}
    lines = [r.getMessage() for r in caplog.records if "not confirmed" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].endswith("within --redis-wait-timeout; senders told to send again")
