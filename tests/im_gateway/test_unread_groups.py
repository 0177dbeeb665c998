"""A large group the connect replay could not read (the Redis Cluster node holding it was
silent) is followed once a later read gets it, from the user's position, as the replay
would have: a client new at that connect has shown none of it, and from the user's join
it was shown again every post the user's earlier clients had acknowledged (the fault
soak on a cluster: 122 messages shown again by a restarted device). A group the user
joins while connected is still followed from the join (another device may have
acknowledged its first posts already)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from im_gateway.store import Accepted, GroupStream, MemoryStore, Submission, Unread
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeLink, FakeWebSocket
from tests.im_gateway.wiring import Wired, connect, wire
from transmit_hub.types import MESSAGE_GROUP, GatewayId, Message, MessageId, UserId

ME = GatewayId("gw-1")
A, B = UserId(1), UserId(2)
GROUP = 70


class SilentNodeStore(MemoryStore):
    """A store whose reads of the groups in ``silent`` fail as a silent cluster node's do."""

    def __init__(self) -> None:
        super().__init__(large_group=1)
        self.silent: set[int] = set()

    async def streams(self, user: UserId, limit: int) -> list[GroupStream | Unread]:
        listed = await super().streams(user, limit)
        return [
            Unread(s.group, ConnectionError("silent node")) if s.group in self.silent else s
            for s in listed
        ]


@pytest.fixture
async def store() -> AsyncIterator[SilentNodeStore]:
    s = SilentNodeStore()
    for user in (A, B):
        await s.join(GROUP, user)
    assert await s.is_large(GROUP)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def wired(store: SilentNodeStore) -> AsyncIterator[Wired]:
    link = FakeLink()
    r = wire(ME, store, link, batch_size=64, forget_grace=0)
    await r.start()
    try:
        yield r
    finally:
        link.feed(None)  # type: ignore[arg-type]
        await r.close()


async def posts(store: SilentNodeStore, *contents: str) -> list[str]:
    """Posts by A to the group, stored (by another gateway); their seqs."""
    seqs = []
    for content in contents:
        message = Message(MessageId(f"p-{content}"), A, GROUP, MESSAGE_GROUP, 0, 1_000, content)
        (result,) = await store.submit([Submission(client_id=f"c-{content}", message=message)])
        assert isinstance(result, Accepted)
        assert result.post is not None
        seqs.append(result.post.seq)
    return seqs


def shown(ws: FakeWebSocket) -> list[str]:
    return [f["content"] for f in ws.frames() if f.get("type") == 2]


async def test_a_group_unread_at_connect_starts_at_the_users_position_once_read(
    wired: Wired, store: SilentNodeStore
) -> None:
    """B's earlier client showed and acknowledged posts 1-3; B connects while the group's
    node is silent: the marker does not list it, and once the group is read, 4 and 5 go
    out, not 1-3 again (old code: ['1', '2', '3', '4', '5'])."""
    seqs = await posts(store, "1", "2", "3", "4", "5")
    await store.ack_group(B, GROUP, int(seqs[2].split(":")[1]))
    store.silent.add(GROUP)
    session, ws = await connect(wired, store, B)
    assert not session.follows_groups
    store.silent.clear()
    await wait_until(lambda: session.follows_groups and len(shown(ws)) >= 2, timeout=5)
    await wait_until(lambda: not session.replaying)
    assert shown(ws) == ["4", "5"]
    await session.close()


async def test_a_group_joined_while_connected_is_still_followed_from_the_join(
    wired: Wired, store: SilentNodeStore
) -> None:
    """The rule for a group the connect replay did read, or that the user joined later,
    is unchanged: a regroup follows it from the user's join, though another device
    acknowledged its first post already."""
    await store.leave(GROUP, B)
    session, ws = await connect(wired, store, B)
    await store.join(GROUP, B)  # on another gateway
    seqs = await posts(store, "x", "y")
    await store.ack_group(B, GROUP, int(seqs[0].split(":")[1]))  # B's other device
    session.regroup()
    await wait_until(lambda: shown(ws) == ["x", "y"], timeout=5)
    await session.close()
