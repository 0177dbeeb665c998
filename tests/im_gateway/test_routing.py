"""The pipeline and the fan-out with the in-memory store, a fake hub link and sessions on
fake sockets (wired as the gateway wires them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from im_gateway import frames
from im_gateway.fanout import Fanout
from im_gateway.faults import Faults
from im_gateway.store import Accepted, MemoryStore, Refused, Submission
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeLink, FakeWebSocket, store_message
from tests.im_gateway.wiring import Wired, connect, submit, submit_nowait, wire
from transmit_hub.link import Delivered, LinkDown, LinkLost, LinkUp, NotDelivered
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
    """Counts submit round trips and presence clears; can be told to fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.submits: list[int] = []
        self.fail = False
        self.fail_once = False
        self.lose_reply_once = False
        """Store the next batch, then fail as if its reply were lost (a Redis timeout)."""
        self.forgotten: list[tuple[GatewayId, set[UserId]]] = []
        self.fail_forget = False
        self.forget_failures = 0

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        if self.fail or self.fail_once:
            self.fail_once = False
            raise ConnectionError("redis went away")
        self.submits.append(len(batch))
        results = await super().submit(batch)
        if self.lose_reply_once:
            self.lose_reply_once = False
            raise TimeoutError("stored, but the reply was lost")
        return results

    async def forget(self, gateway: GatewayId, users: object) -> None:
        if self.fail_forget:
            self.forget_failures += 1
            raise ConnectionError("redis went away")
        self.forgotten.append((gateway, set(users)))  # type: ignore[call-overload]
        await super().forget(gateway, users)  # type: ignore[arg-type]


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
async def wired(store: CountingStore, link: FakeLink) -> AsyncIterator[Wired]:
    r = wire(ME, store, link, batch_size=64, forget_grace=0)
    await r.start()
    try:
        yield r
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await r.close()


def message(to: int, content: str, *, group: bool = False, cid: str = "c") -> frames.SendMessage:
    return frames.SendMessage(
        type=2 if group else 1, id=cid, to=to, content_type=0, content=content
    )


def types(ws: FakeWebSocket) -> list[int]:
    return [f["type"] for f in ws.frames()]


async def test_frames_queued_together_share_one_store_round_trip(
    wired: Wired, store: CountingStore
) -> None:
    """Fifty frames queued before the worker runs are stored with a single submit call."""
    a, a_ws = await connect(wired, store, A)
    for i in range(50):
        await submit(wired, a, message(B, f"m{i}", cid=f"c{i}"))
    await wait_until(lambda: len(a_ws.sent) == 50)
    assert store.submits == [50]
    assert [f["id"] for f in a_ws.frames()] == [f"c{i}" for i in range(50)]
    assert set(types(a_ws)) == {10}


async def test_local_and_remote_routing(wired: Wired, store: CountingStore, link: FakeLink) -> None:
    """Local sockets get the message directly, other gateways get one map, the sender an ack."""
    await store.refresh(GatewayId("gw-2"), [B])
    await store.refresh(GatewayId("gw-3"), [A, B])
    a, a_ws = await connect(wired, store, A)
    _, a2_ws = await connect(wired, store, A)
    _, b_ws = await connect(wired, store, B)
    await submit(wired, a, message(B, "hi"))
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


async def test_refusals_and_store_failures_are_answered(wired: Wired, store: CountingStore) -> None:
    """not_member comes back as 99; a failed store call answers every frame 'internal'."""
    a, a_ws = await connect(wired, store, A)
    await submit(wired, a, message(7, "x", group=True, cid="g"))
    await wait_until(lambda: bool(a_ws.sent))
    assert a_ws.frames()[0]["code"] == "not_member"
    store.fail = True
    await submit(wired, a, message(B, "x", cid="f1"))
    await submit(wired, a, message(B, "y", cid="f2"))
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
    wired = wire(ME, store, link)
    await wired.start()
    try:
        await store.refresh(GatewayId("gw-2"), [B])
        a, a_ws = await connect(wired, store, A)
        await submit(wired, a, message(B, "x"))
        await wait_until(lambda: bool(a_ws.sent))
        assert a_ws.frames()[0]["type"] == 10
        assert (await store.read_inbox(B, 0, 10)).entries[0].message.content == "x"
    finally:
        await wired.close()


async def test_hub_deliveries_reach_the_named_local_users(
    wired: Wired, store: CountingStore, link: FakeLink
) -> None:
    """A Delivered event writes the message to every local socket of the named users only."""
    _, b_ws = await connect(wired, store, B)
    _, b2_ws = await connect(wired, store, B)
    _, c_ws = await connect(wired, store, C)
    [pos, _] = await store_message(store, A, B, "via hub")  # stored by another gateway
    msg = Message(MessageId("m-9"), A, B, 1, 0, 123, "via hub")
    link.feed(Delivered((Delivery(msg, (Recipient(B, str(pos)),)),)))
    await wait_until(lambda: bool(b_ws.sent) and bool(b2_ws.sent))
    assert b_ws.frames()[0]["content"] == "via hub"
    assert b_ws.frames()[0]["seq"] == "1"
    assert b2_ws.frames() == b_ws.frames()
    assert c_ws.sent == []


async def test_bad_hub_deliveries_are_dropped_and_good_ones_delivered(
    store: CountingStore, link: FakeLink
) -> None:
    """In one Delivered event, deliveries breaking a limit (content over max_content, type
    99, a lone surrogate) and recipients with a seq that is no position ("x", "2**64", "0",
    "1-0") are dropped; the good delivery after them still reaches its user, at its seq."""
    wired = wire(ME, store, link, max_content=10, forget_grace=0)
    await wired.start()
    try:
        b, b_ws = await connect(wired, store, B)
        c, c_ws = await connect(wired, store, C)
        await store_message(store, A, B, "good")  # B's position 1
        await store_message(store, A, C, "for c")  # C's position 1

        def message(content: str, *, kind: int = 1, mid: str = "m") -> Message:
            return Message(MessageId(mid), A, B, kind, 0, 123, content)

        at_1 = (Recipient(B, "1"),)
        link.feed(
            Delivered(
                (
                    Delivery(message("x" * 11, mid="big"), at_1),
                    Delivery(message("typed", kind=99, mid="t99"), at_1),
                    Delivery(message("\ud800", mid="surrogate"), at_1),
                    Delivery(
                        message("bad seqs", mid="seqs"),
                        (
                            Recipient(B, "x"),
                            Recipient(B, str(2**64)),
                            Recipient(B, "0"),
                            Recipient(B, "1-0"),
                            Recipient(UserId(2**64), "1"),
                        ),
                    ),
                    Delivery(message("good", mid="ok"), at_1),
                    Delivery(
                        Message(MessageId("ok-c"), A, C, 1, 0, 123, "for c"),
                        (Recipient(C, "x"), Recipient(C, "1")),
                    ),
                )
            )
        )
        await wait_until(lambda: bool(b_ws.sent) and bool(c_ws.sent))
        assert [(f["id"], f["content"], f["seq"]) for f in b_ws.frames()] == [("ok", "good", "1")]
        assert [(f["id"], f["seq"]) for f in c_ws.frames()] == [("ok-c", "1")]
        assert (b.position, c.position) == (1, 1)
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


async def test_a_hub_delivery_with_a_lone_surrogate_id_is_dropped(
    store: CountingStore, link: FakeLink
) -> None:
    """A delivery whose message id is not valid Unicode is dropped even when its content is
    short ASCII; it must not take the position of the real message after it."""
    wired = wire(ME, store, link, forget_grace=0)
    await wired.start()
    try:
        _, b_ws = await connect(wired, store, B)
        await store_message(store, A, B, "real")
        at_1 = (Recipient(B, "1"),)
        link.feed(
            Delivered(
                (
                    Delivery(Message(MessageId("\ud800"), A, B, 1, 0, 1, "hi"), at_1),
                    Delivery(Message(MessageId("ok"), A, B, 1, 0, 1, "real"), at_1),
                )
            )
        )
        await wait_until(lambda: bool(b_ws.sent))
        assert [(f["id"], f["content"]) for f in b_ws.frames()] == [("ok", "real")]
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


async def test_a_hub_delivery_beyond_a_hole_is_filled_from_the_inbox(
    wired: Wired, store: CountingStore, link: FakeLink
) -> None:
    """When the hub's push of position 1 was lost, the push of 2 makes the session read
    the inbox: the client gets 1 then 2, on the same connection."""
    b, b_ws = await connect(wired, store, B)
    await store_message(store, A, B, "first, push lost")
    await store_message(store, A, B, "second")
    msg = Message(MessageId("m-2"), A, B, 1, 0, 123, "second")
    link.feed(Delivered((Delivery(msg, (Recipient(B, "2"),)),)))
    await wait_until(lambda: len(b_ws.sent) == 2, what="the hole to be filled")
    assert [(f["content"], f["seq"]) for f in b_ws.frames()] == [
        ("first, push lost", "1"),
        ("second", "2"),
    ]
    assert b.position == 2


async def test_the_drop_push_fault_hook_drops_one_map_only(
    store: CountingStore, link: FakeLink
) -> None:
    """With drop-push:1 the first map toward the hub is not sent, the sender is acked
    anyway, and later maps go out."""
    wired = wire(ME, store, link, faults=Faults(drop_push=1))
    await wired.start()
    try:
        await store.refresh(GatewayId("gw-2"), [B])
        a, a_ws = await connect(wired, store, A)
        await submit(wired, a, message(B, "dropped", cid="f1"))
        await submit(wired, a, message(B, "sent", cid="f2"))
        await wait_until(lambda: len(a_ws.sent) == 2)
        assert types(a_ws) == [10, 10]
        assert [m.message.content for m in link.sent] == ["sent"]
        assert link.sent[0].users == {"gw-2": (Recipient(B, "2"),)}
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


async def test_a_duplicate_is_routed_again(
    wired: Wired, store: CountingStore, link: FakeLink
) -> None:
    """A resend answered with the first msgId is pushed again, locally and to the hub, at
    the first positions; a receiver that has it already drops the repeat."""
    await store.refresh(GatewayId("gw-2"), [B])
    a, a_ws = await connect(wired, store, A)
    b, b_ws = await connect(wired, store, B)
    await submit(wired, a, message(B, "once", cid="d1"))
    await wait_until(lambda: bool(a_ws.sent) and bool(b_ws.sent) and len(link.sent) == 1)
    await submit(wired, a, message(B, "once, resent", cid="d1"))
    await wait_until(lambda: len(a_ws.sent) == 2 and len(link.sent) == 2)
    first, again = a_ws.frames()
    assert (first["type"], again["type"]) == (10, 10)
    assert again["msgId"] == first["msgId"]
    assert link.sent[1].message.id == first["msgId"]
    assert link.sent[1].users == link.sent[0].users == {"gw-2": (Recipient(B, "1"),)}
    assert [f["content"] for f in b_ws.frames()] == ["once"]
    assert b.position == 1


async def test_a_duplicate_pushes_the_stored_message_not_the_resend(
    wired: Wired, store: CountingStore, link: FakeLink
) -> None:
    """A resend whose frame differs from the first (same client id, other content or `to`)
    re-pushes what the inbox holds at those positions, not the resend's text."""
    await store.refresh(GatewayId("gw-2"), [B])
    a, _ = await connect(wired, store, A)
    await submit(wired, a, message(B, "stored", cid="d2"))
    await wait_until(lambda: len(link.sent) == 1)
    await submit(wired, a, message(C, "never stored", cid="d2"))
    await wait_until(lambda: len(link.sent) == 2)
    [entry] = (await store.read_inbox(B, 0, 10)).entries
    assert link.sent[1].users == {"gw-2": (Recipient(B, "1"),)}
    assert (link.sent[1].message.to, link.sent[1].message.content) == (B, "stored")
    assert link.sent[1].message == entry.message


async def test_a_batch_whose_reply_was_lost_is_pushed_by_its_retry(
    wired: Wired, store: CountingStore, link: FakeLink
) -> None:
    """A batch stored but answered with an error (a timeout) is sent again; the retry's
    duplicates are pushed, so recipients get the message live, not only on replay."""
    await store.refresh(GatewayId("gw-2"), [B])
    a, a_ws = await connect(wired, store, A)
    _, a2_ws = await connect(wired, store, A)
    _, b_ws = await connect(wired, store, B)
    store.lose_reply_once = True
    await submit(wired, a, message(B, "lost reply", cid="r1"))
    await wait_until(lambda: bool(a_ws.sent) and bool(b_ws.sent) and bool(a2_ws.sent))
    assert store.submits == [1, 1]
    assert [(f["type"], f["id"]) for f in a_ws.frames()] == [(10, "r1")]
    assert [(f["content"], f["seq"]) for f in b_ws.frames()] == [("lost reply", "1")]
    assert [(f["content"], f["seq"]) for f in a2_ws.frames()] == [("lost reply", "1")]
    await wait_until(lambda: len(link.sent) == 1)
    assert link.sent[0].users == {"gw-2": (Recipient(B, "1"),)}


async def test_the_senders_own_connection_gets_its_position_not_the_frame(
    wired: Wired, store: CountingStore
) -> None:
    """The sending connection gets type 10 only, yet its position moves (own), so the next
    message to it is sent at once, without an inbox read; the sender's other device gets
    the message."""
    a, a_ws = await connect(wired, store, A)
    b, b_ws = await connect(wired, store, B)
    await submit(wired, a, message(B, "from a", cid="o1"))
    await wait_until(lambda: bool(a_ws.sent) and bool(b_ws.sent))
    assert types(a_ws) == [10]
    assert a.position == 1
    await submit(wired, a, message(A, "note to self", cid="o2"))
    await wait_until(lambda: len(a_ws.sent) == 2)
    assert types(a_ws) == [10, 10]
    assert a.position == 2
    a2, a2_ws = await connect(wired, store, A)
    assert a2.position == 2  # its connect replay sent both (it did not send them)
    await submit(wired, b, message(A, "from b", cid="o3"))
    await wait_until(lambda: len(a_ws.sent) == 3 and bool(a2_ws.sent))
    assert [(f["content"], f["seq"]) for f in a_ws.frames()[2:]] == [("from b", "3")]
    assert [(f["content"], f["seq"]) for f in a2_ws.frames()] == [("from b", "3")]
    assert (a.position, a2.position) == (3, 3)
    assert not a.replaying
    await submit(wired, a, message(B, "from a again", cid="o4"))
    await wait_until(lambda: len(a_ws.sent) == 4 and len(a2_ws.sent) == 2)
    assert types(a_ws)[-1] == 10
    assert a2_ws.frames()[-1]["content"] == "from a again"
    assert (a.position, a2.position) == (4, 4)


async def test_not_attached_notices_clear_presence(
    wired: Wired, store: CountingStore, link: FakeLink
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


async def test_not_attached_notices_while_the_store_fails_are_one_counted_line(
    wired: Wired, store: CountingStore, link: FakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Clearing a gone gateway's presence fails (Redis down): one counted warning for
    all the notices, no traceback per notice; the events go on, and the next notice
    once the store answers clears the entries."""
    await store.refresh(GatewayId("gw-2"), [B])
    store.fail_forget = True

    def notice() -> NotDelivered:
        return NotDelivered(
            (
                Undeliverable(
                    GatewayId("gw-2"), (MessageId("m"),), (B,), UndeliverableReason.NOT_ATTACHED
                ),
            )
        )

    for _ in range(3):
        link.feed(notice())
    await wait_until(lambda: store.forget_failures == 3, what="three failed clears")
    failed = [r for r in caplog.records if "clearing the presence" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    store.fail_forget = False
    link.feed(notice())
    await wait_until(lambda: bool(store.forgotten), what="the entries cleared")
    assert await store.lookup([B]) == {}


async def test_link_up_makes_sessions_catch_up(
    wired: Wired, store: CountingStore, link: FakeLink
) -> None:
    """After LinkDown/LinkUp, a session gets what reached its inbox meanwhile."""
    b, b_ws = await connect(wired, store, B)
    link.feed(LinkDown("hub gone"))
    await store_message(store, A, B, "while the hub was away")
    link.feed(LinkUp("hub-2"))
    await wait_until(lambda: bool(b_ws.sent) and not b.replaying)
    assert [f["content"] for f in b_ws.frames()] == ["while the hub was away"]


async def test_a_lost_link_makes_sessions_catch_up_now_and_once_more_later(
    store: CountingStore, link: FakeLink
) -> None:
    """A hub link lost while others serve (LinkLost): a session reads what reached its inbox
    (a push swallowed by the dead stream) at once, and again ``resync_after`` s later (what
    the hub wrote into the dead stream until it noticed), with nothing else happening."""
    wired = wire(ME, store, link, forget_grace=0, resync_after=0.3)
    await wired.start()
    try:
        b, b_ws = await connect(wired, store, B)
        await store_message(store, A, B, "swallowed before the loss was noticed")
        link.feed(LinkLost("hub-1:50051", "keepalive timeout"))
        await wait_until(lambda: len(b_ws.frames()) == 1)
        await store_message(store, A, B, "swallowed before the hub noticed")
        await wait_until(lambda: len(b_ws.frames()) == 2, timeout=5)
        assert [f["content"] for f in b_ws.frames()] == [
            "swallowed before the loss was noticed",
            "swallowed before the hub noticed",
        ]
        assert not b.replaying
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


class ReadCountingStore(CountingStore):
    """Counts inbox reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read_inbox(self, user: UserId, after: int, limit: int) -> Any:
        self.reads += 1
        return await super().read_inbox(user, after, limit)


async def test_a_sweep_reads_only_the_inboxes_that_moved(link: FakeLink) -> None:
    """A catch-up sweep asks the store where the inboxes end: a session that has its
    inbox's end reads nothing; one behind reads and gets what it missed."""
    store = ReadCountingStore()
    wired = wire(ME, store, link, forget_grace=0)
    await wired.start()
    try:
        _, b_ws = await connect(wired, store, B)
        _, c_ws = await connect(wired, store, C)
        await store_message(store, A, B, "missed by b")
        reads = store.reads
        await wired.fanout.catch_up.wait()
        await wait_until(lambda: len(b_ws.frames()) == 1)
        assert store.reads == reads + 1  # b's read only
        assert c_ws.frames() == []
        await wired.fanout.catch_up.wait()  # nobody is behind now
        assert store.reads == reads + 1
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


class Counting:
    """A local connection that counts the catch-ups and regroups asked of it."""

    def __init__(self, user: UserId) -> None:
        self.user = user
        self.catch_ups = 0
        self.regroups = 0
        self.follows_groups = False

    def catch_up(self, end: int | None = None) -> None:
        self.catch_ups += 1

    def regroup(self, left: int | None = None) -> None:
        self.regroups += 1


async def test_losses_in_a_burst_cost_one_sweep_now_and_one_later(link: FakeLink) -> None:
    """Five hub links lost within a moment (a flapping hub): the sessions read their inboxes
    once at the first loss and once ``resync_after`` after the last, not ten times, and
    their large groups once, at the later sweep (the user is in a group)."""
    store = CountingStore()
    await store.join(7, B)
    fanout: Fanout[Any] = Fanout(gateway_id=ME, store=store, link=link, resync_after=0.5)
    session = Counting(B)
    fanout.add(session)
    await fanout.start()
    try:
        for i in range(5):
            link.feed(LinkLost(f"hub-{i}:1", "gone"))
        await wait_until(lambda: session.catch_ups == 1)
        await wait_until(lambda: session.catch_ups == 2, timeout=5)
        assert not fanout.catch_up.scheduled  # nothing more is scheduled
        await fanout.catch_up.regrouped()
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await fanout.close()
    assert session.catch_ups == 2
    assert session.regroups == 1


async def test_close_answers_frames_still_queued(store: CountingStore, link: FakeLink) -> None:
    """Frames queued when the wired closes are answered 'internal' (the client resends)."""
    wired = wire(ME, store, link)
    a, a_ws = await connect(wired, store, A)  # worker not started: frames stay queued
    await submit(wired, a, message(B, "x", cid="q"))
    await wired.close()
    await wait_until(lambda: bool(a_ws.sent))
    assert a_ws.frames()[0]["code"] == "internal"
    assert wired.fanout.connections == 1
    wired.fanout.discard(a)
    assert wired.fanout.connections == 0


async def test_while_traffic_flows_the_worker_lingers_so_frames_share_a_batch(
    store: CountingStore, link: FakeLink
) -> None:
    """A frame that arrives soon after a batch waits briefly; one arriving meanwhile joins it."""
    wired = wire(ME, store, link, linger=0.05, busy_window=60.0)
    await wired.start()
    try:
        a, a_ws = await connect(wired, store, A)
        await submit(wired, a, message(B, "1", cid="c1"))
        await wait_until(lambda: len(a_ws.sent) == 1)
        await submit(wired, a, message(B, "2", cid="c2"))
        await wait_until(lambda: wired.pipeline.queued == 0)  # the worker took it and lingers
        await submit(wired, a, message(B, "3", cid="c3"))
        await wait_until(lambda: len(a_ws.sent) == 3)
        assert store.submits == [1, 2]
        assert [f["id"] for f in a_ws.frames()] == ["c1", "c2", "c3"]
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


async def test_sparse_traffic_is_stored_at_once_without_the_linger(
    store: CountingStore, link: FakeLink
) -> None:
    """Messages further apart than the linger: waiting would gather nothing, so a message
    is stored at once and one arriving right after it goes in a batch of its own (with the
    old rule, any message within ``busy_window`` of the last batch waited, and the second
    joined it: [1, 2])."""
    wired = wire(ME, store, link, linger=0.05, busy_window=60.0)
    await wired.start()
    try:
        a, a_ws = await connect(wired, store, A)
        await submit(wired, a, message(B, "1", cid="c1"))
        await wait_until(lambda: len(a_ws.sent) == 1)
        await asyncio.sleep(0.2)  # the traffic's pace (not a wait for a condition)
        await submit(wired, a, message(B, "2", cid="c2"))
        await wait_until(lambda: wired.pipeline.queued == 0)  # the worker took it
        await submit(wired, a, message(B, "3", cid="c3"))
        await wait_until(lambda: len(a_ws.sent) == 3)
        assert store.submits == [1, 1, 1]
        assert [f["id"] for f in a_ws.frames()] == ["c1", "c2", "c3"]
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await wired.close()


async def test_a_batch_is_retried_once_after_a_store_error(
    wired: Wired, store: CountingStore
) -> None:
    """One failed submit (a dead pooled connection) is retried: the client is acked once."""
    a, a_ws = await connect(wired, store, A)
    store.fail_once = True
    await submit(wired, a, message(B, "x", cid="r1"))
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
    wired = wire(ME, store, link, queue_size=2, batch_size=1)
    await wired.start()
    try:
        store.gate.set()
        a, a_ws = await connect(wired, store, A)
        store.gate.clear()
        assert submit_nowait(wired, a, message(B, "m0", cid="c0"))  # the worker takes it
        await wait_until(lambda: wired.pipeline.queued == 0)
        assert submit_nowait(wired, a, message(B, "m1", cid="c1"))
        assert submit_nowait(wired, a, message(B, "m2", cid="c2"))
        assert wired.pipeline.busy
        assert not submit_nowait(wired, a, message(B, "m3", cid="c3"))
        frame = {"type": 1, "id": "c3", "to": int(B), "contentType": 0, "content": "m3"}
        assert not a.receive_now(json.dumps(frame))
        waiting = asyncio.create_task(submit(wired, a, message(B, "m3", cid="c3")))
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
        await wired.close()
