"""The router with the in-memory store, a fake hub link and sessions on fake sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import pytest

from im_gateway import frames
from im_gateway.relay import Relay
from im_gateway.sessions import Session, SessionLimits
from im_gateway.store import Accepted, Refused, Submission
from im_gateway.store_memory import MemoryStore
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeLink, FakeWebSocket, store_message
from transmit_hub.link import Delivered, LinkDown, LinkUp, NotDelivered
from transmit_hub.types import (
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    Undeliverable,
    UndeliverableReason,
    UserId,
)

ME = GatewayId("gw-1")
A, B, C = UserId(1), UserId(2), UserId(3)


class CountingStore(MemoryStore):
    """Counts submit round trips; can be told to fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.submits: list[int] = []
        self.fail = False
        self.fail_once = False
        self.forgotten: list[tuple[GatewayId, set[UserId]]] = []

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        if self.fail or self.fail_once:
            self.fail_once = False
            raise ConnectionError("redis went away")
        self.submits.append(len(batch))
        return await super().submit(batch)

    async def forget(self, gateway: GatewayId, users: object) -> None:
        self.forgotten.append((gateway, set(users)))  # type: ignore[call-overload]
        await super().forget(gateway, users)  # type: ignore[arg-type]


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
async def relay(store: CountingStore, link: FakeLink) -> AsyncIterator[Relay]:
    r = Relay(gateway_id=ME, store=store, link=link, batch_size=64, forget_grace=0)
    await r.start()
    try:
        yield r
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await r.close()


async def connect(relay: Relay, store: MemoryStore, user: UserId) -> tuple[Session, FakeWebSocket]:
    """A registered session whose connect replay is done."""
    ws = FakeWebSocket()
    session = Session(ws, user, store=store, router=relay, limits=SessionLimits())
    relay.add(session)
    session.start()
    await wait_until(lambda: not session.replaying)
    ws.sent.clear()
    return session, ws


def message(to: int, content: str, *, group: bool = False, cid: str = "c") -> frames.SendMessage:
    return frames.SendMessage(
        type=2 if group else 1, id=cid, to=to, content_type=0, content=content
    )


def types(ws: FakeWebSocket) -> list[int]:
    return [f["type"] for f in ws.frames()]


async def test_frames_queued_together_share_one_store_round_trip(
    relay: Relay, store: CountingStore
) -> None:
    """Fifty frames queued before the worker runs are stored with a single submit call."""
    a, a_ws = await connect(relay, store, A)
    for i in range(50):
        await relay.submit(a, message(B, f"m{i}", cid=f"c{i}"))
    await wait_until(lambda: len(a_ws.sent) == 50)
    assert store.submits == [50]
    assert [f["id"] for f in a_ws.frames()] == [f"c{i}" for i in range(50)]
    assert set(types(a_ws)) == {10}


async def test_local_and_remote_routing(relay: Relay, store: CountingStore, link: FakeLink) -> None:
    """Local sockets get the message directly, other gateways get one map, the sender an ack."""
    await store.refresh(GatewayId("gw-2"), [B])
    await store.refresh(GatewayId("gw-3"), [A, B])
    a, a_ws = await connect(relay, store, A)
    _, a2_ws = await connect(relay, store, A)
    _, b_ws = await connect(relay, store, B)
    await relay.submit(a, message(B, "hi"))
    await wait_until(lambda: bool(a_ws.sent) and bool(b_ws.sent) and bool(a2_ws.sent))
    (ack,) = a_ws.frames()
    assert ack["type"] == 10
    for ws in (b_ws, a2_ws):
        (got,) = ws.frames()
        assert (got["type"], got["id"], got["from"], got["to"]) == (1, ack["msgId"], A, B)
    (tmap,) = link.sent
    assert tmap.message.id == ack["msgId"]
    assert {g: {r.user_id for r in rs} for g, rs in tmap.users.items()} == {
        "gw-2": {B},
        "gw-3": {A, B},
    }
    assert all(r.seq for rs in tmap.users.values() for r in rs)


async def test_refusals_and_store_failures_are_answered(relay: Relay, store: CountingStore) -> None:
    """not_member comes back as 99; a failed store call answers every frame 'internal'."""
    a, a_ws = await connect(relay, store, A)
    await relay.submit(a, message(7, "x", group=True, cid="g"))
    await wait_until(lambda: bool(a_ws.sent))
    assert a_ws.frames()[0]["code"] == "not_member"
    store.fail = True
    await relay.submit(a, message(B, "x", cid="f1"))
    await relay.submit(a, message(B, "y", cid="f2"))
    await wait_until(lambda: len(a_ws.sent) == 3)
    assert [(f["id"], f["code"]) for f in a_ws.frames()[1:]] == [
        ("f1", "internal"),
        ("f2", "internal"),
    ]


async def test_a_full_link_buffer_does_not_lose_the_ack(
    store: CountingStore,
) -> None:
    """When the link refuses a map, the sender is still acked (the inbox holds the message)."""
    link = FakeLink(accept=False)
    relay = Relay(gateway_id=ME, store=store, link=link)
    await relay.start()
    try:
        await store.refresh(GatewayId("gw-2"), [B])
        a, a_ws = await connect(relay, store, A)
        await relay.submit(a, message(B, "x"))
        await wait_until(lambda: bool(a_ws.sent))
        assert a_ws.frames()[0]["type"] == 10
        assert (await store.read_inbox(B, "0", 10))[0].message.content == "x"
    finally:
        await relay.close()


async def test_hub_deliveries_reach_the_named_local_users(
    relay: Relay, store: CountingStore, link: FakeLink
) -> None:
    """A Delivered event writes the message to every local socket of the named users only."""
    _, b_ws = await connect(relay, store, B)
    _, b2_ws = await connect(relay, store, B)
    _, c_ws = await connect(relay, store, C)
    msg = Message(MessageId("m-9"), A, B, 1, 0, 123, "via hub")
    link.feed(Delivered((Delivery(msg, (Recipient(B, "5-0"),)),)))
    await wait_until(lambda: bool(b_ws.sent) and bool(b2_ws.sent))
    assert b_ws.frames()[0]["content"] == "via hub"
    assert b_ws.frames()[0]["seq"] == "5-0"
    assert c_ws.sent == []


async def test_not_attached_notices_clear_presence(
    relay: Relay, store: CountingStore, link: FakeLink
) -> None:
    """NOT_ATTACHED notices clear the named gateway's entries; QUEUE_FULL ones do not."""
    await store.refresh(GatewayId("gw-2"), [B, C])
    link.feed(
        NotDelivered(
            (
                Undeliverable(
                    GatewayId("gw-2"), (MessageId("m"),), (B,), UndeliverableReason.NOT_ATTACHED
                ),
                Undeliverable(
                    GatewayId("gw-2"), (MessageId("m"),), (C,), UndeliverableReason.QUEUE_FULL
                ),
            )
        )
    )
    await wait_until(lambda: bool(store.forgotten))
    assert store.forgotten == [("gw-2", {B})]
    assert await store.lookup([B, C]) == {C: ("gw-2",)}


async def test_link_up_makes_sessions_catch_up(
    relay: Relay, store: CountingStore, link: FakeLink
) -> None:
    """After LinkDown/LinkUp, a session gets what reached its inbox meanwhile."""
    b, b_ws = await connect(relay, store, B)
    link.feed(LinkDown("hub gone"))
    await store_message(store, A, B, "while the hub was away")
    link.feed(LinkUp("hub-2"))
    await wait_until(lambda: bool(b_ws.sent) and not b.replaying)
    assert [f["content"] for f in b_ws.frames()] == ["while the hub was away"]


async def test_close_answers_frames_still_queued(store: CountingStore, link: FakeLink) -> None:
    """Frames queued when the relay closes are answered 'internal' (the client resends)."""
    relay = Relay(gateway_id=ME, store=store, link=link)
    a, a_ws = await connect(relay, store, A)  # worker not started: frames stay queued
    await relay.submit(a, message(B, "x", cid="q"))
    await relay.close()
    await wait_until(lambda: bool(a_ws.sent))
    assert a_ws.frames()[0]["code"] == "internal"
    assert relay.connections == 1
    relay.discard(a)
    assert relay.connections == 0


async def test_while_traffic_flows_the_worker_lingers_so_frames_share_a_batch(
    store: CountingStore, link: FakeLink
) -> None:
    """A frame that arrives soon after a batch waits briefly; one arriving meanwhile joins it."""
    relay = Relay(gateway_id=ME, store=store, link=link, linger=0.05, busy_window=60.0)
    await relay.start()
    try:
        a, a_ws = await connect(relay, store, A)
        await relay.submit(a, message(B, "1", cid="c1"))
        await wait_until(lambda: len(a_ws.sent) == 1)
        await relay.submit(a, message(B, "2", cid="c2"))
        await wait_until(lambda: relay.queued == 0)  # the worker took it and lingers
        await relay.submit(a, message(B, "3", cid="c3"))
        await wait_until(lambda: len(a_ws.sent) == 3)
        assert store.submits == [1, 2]
        assert [f["id"] for f in a_ws.frames()] == ["c1", "c2", "c3"]
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await relay.close()


async def test_a_batch_is_retried_once_after_a_store_error(
    relay: Relay, store: CountingStore
) -> None:
    """One failed submit (a dead pooled connection) is retried: the client is acked once."""
    a, a_ws = await connect(relay, store, A)
    store.fail_once = True
    await relay.submit(a, message(B, "x", cid="r1"))
    await wait_until(lambda: bool(a_ws.sent))
    assert [(f["type"], f["id"]) for f in a_ws.frames()] == [(10, "r1")]
    assert store.submits == [1]


class GatedStore(CountingStore):
    """Holds every submit until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        await self.gate.wait()
        return await super().submit(batch)


async def test_a_full_queue_refuses_nowait_and_makes_senders_wait(link: FakeLink) -> None:
    """Full policy: with the queue full, ``submit_nowait`` refuses (nothing queued), the
    session's data-callback path declines the frame (it goes to the reader, which waits),
    and every frame is stored once the store answers again: none is lost."""
    store = GatedStore()
    relay = Relay(gateway_id=ME, store=store, link=link, queue_size=2, batch_size=1)
    await relay.start()
    try:
        store.gate.set()
        a, a_ws = await connect(relay, store, A)
        store.gate.clear()
        assert relay.submit_nowait(a, message(B, "m0", cid="c0"))  # the worker takes it
        await wait_until(lambda: relay.queued == 0)
        assert relay.submit_nowait(a, message(B, "m1", cid="c1"))
        assert relay.submit_nowait(a, message(B, "m2", cid="c2"))
        assert relay.busy
        assert not relay.submit_nowait(a, message(B, "m3", cid="c3"))
        frame = {"type": 1, "id": "c3", "to": int(B), "contentType": 0, "content": "m3"}
        assert not a.receive_now(json.dumps(frame))
        waiting = asyncio.create_task(relay.submit(a, message(B, "m3", cid="c3")))
        await asyncio.sleep(0)  # one loop turn: the task runs up to its wait, not past it
        assert not waiting.done()
        store.gate.set()
        await asyncio.wait_for(waiting, 10)
        await wait_until(lambda: len(a_ws.sent) == 4)
        assert [f["id"] for f in a_ws.frames()] == ["c0", "c1", "c2", "c3"]
        assert set(types(a_ws)) == {10}
        assert a.receive_now(json.dumps(frame | {"id": "c4"}))  # room again: handled at once
        await wait_until(lambda: len(a_ws.sent) == 5)
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await relay.close()
