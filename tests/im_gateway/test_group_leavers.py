"""A leaver of a large group sees none of its posts stored after the leave, whatever the
order in which the leave's notice (a control share) and the post arrive: with several
hubs they may come through different ones, and the post first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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


def _share(seq: str) -> Recipient:
    return Recipient(UserId(0), seq)
