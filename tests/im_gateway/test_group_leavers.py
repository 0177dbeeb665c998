"""A leaver of a large group sees none of its posts stored after the leave, whatever the
order in which the leave's notice (a control share) and the post arrive: with several
hubs they may come through different ones, and the post first."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from im_gateway.fanout import CONTROL_REGROUP
from im_gateway.store import Accepted, MemoryStore, RedisStore, Store, Submission
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeLink, FakeWebSocket
from tests.im_gateway.wiring import Wired, connect, wire
from transmit_hub.link import Delivered
from transmit_hub.types import (
    MESSAGE_GROUP,
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    UserId,
)

ME = GatewayId("gw-1")
A, B, C, D = UserId(1), UserId(2), UserId(3), UserId(4)
GROUP = 70


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """The in-memory store, and a real Redis."""
    s: Store
    if request.param == "memory":
        s = MemoryStore(large_group=2)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), large_group=2)
    try:
        for user in (A, B, C, D):  # large, and still after one leaves
            await s.join(GROUP, user)
        assert await s.is_large(GROUP)
        yield s
    finally:
        await s.close()


@pytest.fixture
async def wired(store: Store) -> AsyncIterator[tuple[Wired, FakeLink]]:
    link = FakeLink()
    r = wire(ME, store, link, batch_size=64, forget_grace=0)
    await r.start()
    try:
        yield r, link
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await r.close()


_n = 0


async def store_post(store: Store, content: str) -> Accepted:
    """A post by A to the group, stored."""
    global _n
    _n += 1
    message = Message(MessageId(f"p-{_n}"), A, GROUP, MESSAGE_GROUP, 0, 1_000 + _n, content)
    (result,) = await store.submit([Submission(client_id=f"c-{_n}", message=message)])
    assert isinstance(result, Accepted)
    assert result.post is not None
    return result


async def post(store: Store, content: str) -> tuple[Message, str]:
    """A post by A stored by another gateway: the message and its group seq."""
    result = await store_post(store, content)
    assert result.post is not None
    return result.message, result.post.seq


def contents(ws: FakeWebSocket) -> list[str]:
    return [f["content"] for f in ws.frames() if f.get("type") == 2]


async def test_a_post_that_arrives_before_the_leave_notice_does_not_reach_the_leaver(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    r, link = wired
    _, b_ws = await connect(r, store, B)
    _, c_ws = await connect(r, store, C)
    assert await store.leave(GROUP, B)  # on another gateway; its notice is still on its way
    message, seq = await post(store, "after B left")
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))  # the post comes first
    await wait_until(lambda: contents(c_ws) == ["after B left"])
    message, seq = await post(store, "and the next")
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(c_ws) == ["after B left", "and the next"])
    assert contents(b_ws) == []
    assert [s.user for s in r.fanout.following.followers(GROUP)] == [C]  # B's connection stopped


async def test_a_post_stored_here_after_the_leave_does_not_reach_the_leaver(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """Stored by this gateway: its followers are checked the same way."""
    r, _ = wired
    _, b_ws = await connect(r, store, B)
    _, c_ws = await connect(r, store, C)
    a, _ = await connect(r, store, A)
    assert await store.leave(GROUP, B)
    r.fanout.route(await store_post(store, "from A here"), a)
    await wait_until(lambda: contents(c_ws) == ["from A here"])
    assert contents(b_ws) == []


async def test_hole_fills_and_the_connect_replay_hold_nothing_after_the_leave(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    r, _ = wired
    b, b_ws = await connect(r, store, B)
    c, c_ws = await connect(r, store, C)
    assert await store.leave(GROUP, B)
    await post(store, "missed push")  # no push: the sessions read the stream to its end
    b.catch_up()
    c.catch_up()
    await wait_until(lambda: contents(c_ws) == ["missed push"])
    await wait_until(lambda: not b.replaying)
    assert contents(b_ws) == []
    _, again = await connect(r, store, B)  # B's next connection replays nothing of it
    assert contents(again) == []


# -- membership at the post's position: the order of events driven explicitly -----------


async def test_a_post_stored_while_a_member_was_out_is_not_shown_after_they_rejoin(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """B leaves, a post is stored, B joins again, and only then the post arrives: B is a
    member at the check, but was not when the post was stored, so B is not shown it
    (nor by the hole fill it leaves); what is posted after B came back is shown."""
    r, link = wired
    _, b_ws = await connect(r, store, B)
    _, c_ws = await connect(r, store, C)
    assert await store.leave(GROUP, B)  # the notices of both are still on their way
    message, seq = await post(store, "while B was out")
    assert await store.join(GROUP, B)
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(c_ws) == ["while B was out"])
    message, seq = await post(store, "after B came back")
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(c_ws) == ["while B was out", "after B came back"])
    await wait_until(lambda: contents(b_ws) == ["after B came back"])
    assert contents(b_ws) == ["after B came back"]


async def test_a_post_stored_just_before_the_leave_still_reaches_the_leaver(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """A post is stored while B is a member, B leaves, and only then the post arrives: B
    is no member at the check but was when it was stored, so B is shown it; then B's
    connection stops following the group, and a post after the leave reaches only C."""
    r, link = wired
    _, b_ws = await connect(r, store, B)
    _, c_ws = await connect(r, store, C)
    message, seq = await post(store, "just before B left")
    assert await store.leave(GROUP, B)
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(b_ws) == ["just before B left"])
    await wait_until(lambda: contents(c_ws) == ["just before B left"])
    await wait_until(lambda: [s.user for s in r.fanout.following.followers(GROUP)] == [C])
    message, seq = await post(store, "after B left")
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(c_ws) == ["just before B left", "after B left"])
    assert contents(b_ws) == ["just before B left"]


async def test_a_leave_notice_before_the_push_still_shows_what_came_before_the_leave(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """A post is stored while B is a member; B leaves on another gateway and its notice
    (a control share) arrives before the post's push: B's connection reads the stream up
    to the leave before it stops following, so B is shown the post once; the push that
    comes later reaches C and is not shown to B again."""
    r, link = wired
    _, b_ws = await connect(r, store, B)
    _, c_ws = await connect(r, store, C)
    message, seq = await post(store, "just before B left")
    assert await store.leave(GROUP, B)
    notice = Message(MessageId("ctl-1"), UserId(0), 0, CONTROL_REGROUP, 0, 9, str(GROUP))
    link.feed(Delivered((Delivery(notice, (Recipient(B, ""),)),)))
    await wait_until(lambda: [s.user for s in r.fanout.following.followers(GROUP)] == [C])
    assert contents(b_ws) == ["just before B left"]
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(c_ws) == ["just before B left"])
    message, seq = await post(store, "after B left")
    link.feed(Delivered((Delivery(message, (_share(seq),)),)))
    await wait_until(lambda: contents(c_ws) == ["just before B left", "after B left"])
    assert contents(b_ws) == ["just before B left"]


async def test_a_hole_fill_after_the_leave_reads_up_to_it(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """Two posts stored, their pushes lost; B leaves; a third post. B's connection reads
    the stream: the two from before the leave are shown, the third is not."""
    r, _ = wired
    b, b_ws = await connect(r, store, B)
    c, c_ws = await connect(r, store, C)
    await post(store, "one")
    await post(store, "two")
    assert await store.leave(GROUP, B)
    await post(store, "three")
    b.catch_up()
    c.catch_up()
    await wait_until(lambda: contents(c_ws) == ["one", "two", "three"])
    await wait_until(lambda: contents(b_ws) == ["one", "two"])
    await wait_until(lambda: not b.replaying)
    assert contents(b_ws) == ["one", "two"]


async def test_a_replay_asked_from_before_the_join_starts_at_the_join(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """E joins after two posts and asks for the group's stream from its start (type 14
    ``g70:0``): only what was posted after the join comes, then the end marker."""
    r, _ = wired
    e = UserId(5)
    await post(store, "before E joined")
    await post(store, "before E joined too")
    assert await store.join(GROUP, e)
    await post(store, "after E joined")
    e_session, e_ws = await connect(r, store, e)
    assert contents(e_ws) == []  # the connect replay: e's position was the join
    reader = asyncio.create_task(e_session.run())
    e_ws.incoming.put_nowait(json.dumps({"type": 14, "seq": f"g{GROUP}:0"}))
    try:
        await wait_until(lambda: any(f.get("type") in (14, 99) for f in e_ws.frames()))
    finally:
        reader.cancel()
    assert contents(e_ws) == ["after E joined"]
    [end] = [f for f in e_ws.frames() if f.get("type") == 14]
    assert end["seq"] == f"g{GROUP}:3"


# -- the server API posting as a user who is not a member -----------------------------


async def test_a_server_post_as_a_non_member_and_its_resend_reach_the_same_gateways(
    wired: tuple[Wired, FakeLink], store: Store
) -> None:
    """The server API posts to the group as E, who is not a member: E's local device gets
    the copy from E's inbox, the group's other gateways the post and E's other gateway
    the copy. The resend (same id) is pushed to every one of those gateways again (the
    first push may have died with a gateway), and E's device is not shown it twice."""
    r, link = wired
    e = UserId(5)
    gw2, gw3 = GatewayId("gw-2"), GatewayId("gw-3")
    await store.watch(gw2, [GROUP])
    await store.attach(e, gw3)
    _, e_ws = await connect(r, store, e)
    message = Message(MessageId("api-1"), e, GROUP, MESSAGE_GROUP, 0, 5_000, "as E")
    submission = Submission("api:k", message, check_member=False)
    for attempt in ("first", "resend"):
        link.sent.clear()
        (result,) = await store.submit([submission])
        assert isinstance(result, Accepted)
        assert result.duplicate == (attempt == "resend")
        r.fanout.route(result, None)
        await wait_until(lambda: contents(e_ws) == ["as E"])
        targets = {gw: [u.seq for u in us] for tmap in link.sent for gw, us in tmap.users.items()}
        assert targets == {gw2: [f"g{GROUP}:1"], gw3: ["1"]}, attempt
    assert contents(e_ws) == ["as E"]
    assert [f["seq"] for f in e_ws.frames() if f.get("type") == 2] == ["1"]


def _share(seq: str) -> Recipient:
    return Recipient(UserId(0), seq)
