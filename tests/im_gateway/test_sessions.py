"""A session against a fake WebSocket, a fake router and the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from im_gateway import frames
from im_gateway.group_policy import OPEN_RIGHTS
from im_gateway.sessions import CLOSE_SEND_QUEUE_FULL, Session, SessionLimits, sweep_idle
from im_gateway.store import InboxEntry, seq_key
from im_gateway.store_memory import MemoryStore
from im_gateway.tasks import cancel_and_wait
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeRouter, FakeWebSocket, store_message
from transmit_hub.types import Message, MessageId, UserId

A, B = UserId(1), UserId(2)


class GatedStore(MemoryStore):
    """A memory store whose inbox reads wait for ``gate`` (to hold a replay mid-way)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    async def read_inbox(self, user: UserId, after: str, limit: int) -> list[InboxEntry]:
        entries = await super().read_inbox(user, after, limit)
        self.reads += 1
        await self.gate.wait()
        return entries


@pytest.fixture
def store() -> GatedStore:
    return GatedStore()


@contextlib.asynccontextmanager
async def running(
    store: MemoryStore, user: UserId = B, **limits: float
) -> AsyncIterator[tuple[Session, FakeWebSocket, FakeRouter]]:
    ws, router = FakeWebSocket(), FakeRouter()
    session = Session(
        ws,
        user,
        store=store,  # type: ignore[arg-type]
        router=router,
        limits=SessionLimits(**limits),  # type: ignore[arg-type]
        group_rights=OPEN_RIGHTS,  # the join test joins from the client
    )
    session.start()
    reader = asyncio.create_task(session.run())
    try:
        yield session, ws, router
    finally:
        await ws.close()
        await reader
        await session.close()


def contents(ws: FakeWebSocket) -> list[str]:
    return [f["content"] for f in ws.frames() if f["type"] in (1, 2)]


def live(session: Session, seq: str, content: str) -> None:
    message = Message(MessageId(f"m-{seq}"), A, B, 1, 0, 1, content)
    session.deliver(seq_key(seq), frames.encode_message(message, seq))


async def test_connect_replays_the_inbox_in_pages_then_an_end_marker(store: GatedStore) -> None:
    """Everything in the inbox after the acked position, in order, then {"type":14,"seq":last}."""
    seqs = [(await store_message(store, A, B, f"m{i}"))[0] for i in range(7)]
    await store.ack(B, seqs[1])
    async with running(store, replay_page=2, send_queue=4) as (_, ws, _):
        await wait_until(lambda: any(f["type"] == 14 for f in ws.frames()))
        assert contents(ws) == [f"m{i}" for i in range(2, 7)]
        assert ws.frames()[-1] == {"type": 14, "seq": seqs[-1]}
        assert store.reads == 3  # pages of 2: [2,3] [4,5] [6]


async def test_empty_inbox_ends_at_the_acked_position(store: GatedStore) -> None:
    """With nothing to replay, the end marker names the acknowledged position."""
    async with running(store) as (_, ws, _):
        await wait_until(lambda: bool(ws.sent))
        assert ws.frames() == [{"type": 14, "seq": "0"}]


async def test_live_messages_during_replay_are_held_then_sent_once_in_order(
    store: GatedStore,
) -> None:
    """Live pushes during a replay wait for it; one already replayed is not sent again."""
    first = (await store_message(store, A, B, "old"))[0]
    store.gate.clear()
    async with running(store) as (session, ws, _):
        await wait_until(lambda: store.reads == 1)
        live(session, first, "old")  # its push raced the replay
        newer = (await store_message(store, A, B, "new"))[0]
        live(session, newer, "new")
        assert ws.sent == []
        store.gate.set()
        await wait_until(lambda: len(ws.sent) == 3)
        assert [f["type"] for f in ws.frames()] == [1, 14, 1]
        assert contents(ws) == ["old", "new"]
        assert ws.frames()[1] == {"type": 14, "seq": first}


async def test_live_duplicates_are_dropped_and_late_ones_still_delivered(
    store: GatedStore,
) -> None:
    """A repeated position is dropped; a lower position never sent (out of order) is delivered."""
    async with running(store) as (session, ws, _):
        await wait_until(lambda: bool(ws.sent))
        live(session, "100-0", "a")
        live(session, "100-0", "a")
        live(session, "90-0", "late")
        live(session, "110-0", "b")
        await wait_until(lambda: len(contents(ws)) == 3)
        assert contents(ws) == ["a", "late", "b"]


async def test_client_type_14_replays_after_its_position(store: GatedStore) -> None:
    """{"type":14,"seq":X} resends everything after X and ends with a marker."""
    seqs = [(await store_message(store, A, B, f"m{i}"))[0] for i in range(3)]
    async with running(store) as (_, ws, _):
        await wait_until(lambda: any(f["type"] == 14 for f in ws.frames()))
        ws.sent.clear()
        ws.client_sends({"type": 14, "seq": seqs[0]})
        await wait_until(lambda: any(f["type"] == 14 for f in ws.frames()))
        assert contents(ws) == ["m1", "m2"]
        ws.sent.clear()
        ws.client_sends({"type": 14})  # after the acknowledged position: everything
        await wait_until(lambda: any(f["type"] == 14 for f in ws.frames()))
        assert contents(ws) == ["m0", "m1", "m2"]


async def test_catch_up_after_a_link_outage_sends_only_what_was_missed(
    store: GatedStore,
) -> None:
    """After link_down/catch_up, messages stored meanwhile are sent; ones already sent are not."""
    async with running(store) as (session, ws, _):
        await wait_until(lambda: bool(ws.sent))
        s1 = (await store_message(store, A, B, "before"))[0]
        live(session, s1, "before")
        session.link_down()
        await store_message(store, A, B, "missed")
        s3 = (await store_message(store, A, B, "local"))[0]
        live(session, s3, "local")  # delivered live by this gateway during the outage
        session.catch_up()
        await wait_until(lambda: not session.replaying)
        assert contents(ws) == ["before", "local", "missed"]
        assert sum(1 for f in ws.frames() if f["type"] == 14) == 1  # no marker for catch-ups


async def test_a_client_that_does_not_read_is_closed_with_1013(store: GatedStore) -> None:
    """When the send queue is full the session closes the socket instead of growing."""
    async with running(store, send_queue=4, replay_page=2, close_timeout=0.05) as (
        session,
        ws,
        _,
    ):
        await wait_until(lambda: bool(ws.sent))
        ws.gate = asyncio.Event()  # the client stops reading
        for i in range(6):
            live(session, f"{100 + i}-0", f"m{i}")
        await wait_until(lambda: ws.closed is not None)
        assert ws.closed is not None
        assert ws.closed[0] == CLOSE_SEND_QUEUE_FULL
        assert session.closing
        assert session.queued == 0
        assert not session.push(frames.HEARTBEAT_REPLY)


async def test_frames_are_answered(store: GatedStore) -> None:
    """Heartbeats are answered, messages go to the router, joins are acked, errors are 99."""
    async with running(store) as (_, ws, router):
        await wait_until(lambda: bool(ws.sent))
        ws.sent.clear()
        ws.client_sends({"type": 0})
        ws.client_sends({"type": 1, "id": "c-1", "to": 1, "content": "hi"})
        ws.client_sends({"type": 12, "id": "j-1", "to": 7})
        ws.client_sends("{oops")
        await wait_until(lambda: len(ws.sent) == 3)
        replies = ws.frames()
        assert replies[0] == {"type": 0}
        assert replies[1]["type"] == 10
        assert replies[1]["id"] == "j-1"
        assert replies[2]["type"] == 99
        assert replies[2]["code"] == "bad_request"
        assert [f.id for _, f in router.submitted] == ["c-1"]
        assert await store.is_member(7, B)


async def test_acks_are_stored_and_coalesced(store: GatedStore) -> None:
    """Type 11 moves the acknowledged position forward to the latest acked seq."""
    seqs = [(await store_message(store, A, B, f"m{i}"))[0] for i in range(3)]
    async with running(store) as (_, ws, _):
        for seq in seqs:
            ws.client_sends({"type": 11, "seq": seq})

        async def acked() -> bool:
            return await store.acked(B) == seqs[-1]

        await wait_until(acked)


async def test_rate_limit_refuses_frames_past_the_burst(store: GatedStore) -> None:
    """Past the burst, frames are answered rate_limited (with their id)."""
    async with running(store, rate=0.001, burst=2) as (_, ws, router):
        await wait_until(lambda: bool(ws.sent))
        ws.sent.clear()
        for i in range(4):
            ws.client_sends({"type": 1, "id": f"c-{i}", "to": 1, "content": "x"})
        await wait_until(lambda: len(ws.sent) == 2)
        assert [(f["id"], f["code"]) for f in ws.frames()] == [
            ("c-2", "rate_limited"),
            ("c-3", "rate_limited"),
        ]
        assert len(router.submitted) == 2


async def test_idle_connections_are_closed(store: GatedStore) -> None:
    """No frame for idle_timeout seconds: the sweep closes the socket and run() returns."""
    ws, router = FakeWebSocket(), FakeRouter()
    busy_ws = FakeWebSocket()
    limits = SessionLimits(idle_timeout=0.2)
    session = Session(ws, B, store=store, router=router, limits=limits)
    busy = Session(busy_ws, A, store=store, router=router, limits=limits)
    sweeper = asyncio.create_task(sweep_idle(lambda: [session, busy], 0.2))
    busy_run = asyncio.create_task(busy.run())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        run = asyncio.create_task(session.run())
        while not run.done():
            busy_ws.client_sends({"type": 0})  # keeps the other session alive
            await asyncio.wait([run], timeout=0.02)
            assert asyncio.get_running_loop().time() < deadline
        assert ws.closed == (1000, "idle timeout")
        assert busy_ws.closed is None
    finally:
        sweeper.cancel()
        await busy_ws.close()
        await busy_run
        await session.close()
        await busy.close()


async def test_held_overflow_is_recovered_from_the_inbox(store: GatedStore) -> None:
    """More live pushes than the hold buffer during a replay: the rest are read from the inbox."""
    store.gate.clear()
    async with running(store, held_max=2, send_queue=64, replay_page=8) as (session, ws, _):
        await wait_until(lambda: store.reads == 1)
        for i in range(6):
            seq = (await store_message(store, A, B, f"m{i}"))[0]
            live(session, seq, f"m{i}")
        store.gate.set()
        await wait_until(lambda: len(contents(ws)) == 6 and not session.replaying)
        assert contents(ws) == [f"m{i}" for i in range(6)]
        assert json.loads(ws.sent[0]) == {"type": 14, "seq": "0"}


async def test_keepalive_pings_quiet_clients_and_drops_silent_ones(store: GatedStore) -> None:
    """Quiet clients are pinged; one whose pong never comes is closed with 1011."""
    ok_ws, dead_ws, router = FakeWebSocket(), FakeWebSocket(), FakeRouter()
    dead_ws.answers_pings = False
    limits = SessionLimits(idle_timeout=0)
    ok = Session(ok_ws, A, store=store, router=router, limits=limits)
    dead = Session(dead_ws, B, store=store, router=router, limits=limits)
    sweeper = asyncio.create_task(
        sweep_idle(lambda: [ok, dead], 0, ping_interval=0.05, ping_timeout=0.1)
    )
    try:
        await wait_until(lambda: dead_ws.closed is not None)
        assert dead_ws.closed == (1011, "keepalive ping timeout")
        await wait_until(lambda: ok_ws.pings >= 3)
        assert ok_ws.closed is None
    finally:
        await cancel_and_wait(sweeper)
        await ok.close()
        await dead.close()


class SteppedStore(MemoryStore):
    """A memory store whose inbox reads each wait for one permit."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = asyncio.Semaphore(0)

    async def read_inbox(self, user: UserId, after: str, limit: int) -> list[InboxEntry]:
        await self.permits.acquire()
        return await super().read_inbox(user, after, limit)


@settings(max_examples=120, deadline=None)
@given(
    before=st.integers(0, 6),
    steps=st.lists(st.sampled_from(["store", "push", "dup", "read"]), max_size=40),
)
def test_replay_and_live_pushes_interleaved_give_each_message_once_in_order(
    before: int, steps: list[str]
) -> None:
    """Whatever the interleaving of stores, live pushes (some repeated) and replay reads,
    the client gets every message exactly once and in inbox order."""

    async def scenario() -> None:
        store = SteppedStore()
        stored: list[tuple[str, str]] = []  # (seq, content) in inbox order
        pushed = 0

        async def add() -> None:
            content = f"m{len(stored)}"
            stored.append(((await store_message(store, A, B, content))[0], content))

        for _ in range(before):
            await add()
        async with running(store, replay_page=2, send_queue=64) as (session, ws, _):
            for step in steps:
                if step == "store":
                    await add()
                elif step == "push" and pushed < len(stored):
                    if pushed >= before:  # the relay pushes what is stored after connect
                        live(session, *stored[pushed])
                    pushed += 1
                elif step == "dup" and pushed > before:
                    live(session, *stored[pushed - 1])
                elif step == "read":
                    store.permits.release()
                await asyncio.sleep(0)  # the interleaving under test: the session runs a step
            for i in range(max(pushed, before), len(stored)):
                live(session, *stored[i])
            for _ in range(len(stored) + 2):
                store.permits.release()
            await wait_until(lambda: not session.replaying, timeout=5)
            assert contents(ws) == [content for _, content in stored]

    asyncio.run(scenario())
