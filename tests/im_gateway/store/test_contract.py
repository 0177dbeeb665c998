"""Contract tests for the gateway's Store: the same tests against MemoryStore, RedisStore
and ClusterStore.

The Redis variant runs against a real redis-server process (the ``redis_url`` fixture), the
cluster variant against a real local Redis Cluster (``redis_cluster_url``).
Tests that need time to pass move the memory store's injected clock and, for Redis, use
short TTLs and wait on the condition.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from im_gateway.errors import GroupLimitError, StoreError
from im_gateway.positions import MAX_POSITION, position
from im_gateway.store import (
    Accepted,
    Beacon,
    ClusterStore,
    InboxEntry,
    InboxPage,
    MemoryStore,
    Opening,
    RedisStore,
    Refusal,
    Refused,
    Store,
    Submission,
    open_store,
)
from tests.helpers import wait_until
from transmit_hub.types import (
    MESSAGE_GROUP,
    MESSAGE_PRIVATE,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    UserId,
)

GW1 = GatewayId("gw-1")
GW2 = GatewayId("gw-2")
ALICE, BOB, CAROL, DAVE = UserId(1), UserId(2), UserId(3), UserId(4)

_ids = itertools.count(1)


def msg(
    sender: int,
    to: int,
    *,
    type: int = MESSAGE_PRIVATE,
    content: str = "hi",
    time: int = 1_700_000_000_000,
) -> Message:
    """A message with a fresh id."""
    return Message(MessageId(f"m-{next(_ids)}"), UserId(sender), to, type, 0, time, content)


def sub(client_id: str, message: Message) -> Submission:
    return Submission(client_id, message)


def accepted(result: Accepted | Refused) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


async def entries(
    store: Store, user: UserId, after: int = 0, *, limit: int = 100
) -> list[InboxEntry]:
    """The entries of one read of ``user``'s inbox after ``after``."""
    return (await store.read_inbox(user, after, limit)).entries


def positions_of(result: Accepted | Refused) -> dict[UserId, int]:
    """Each recipient's inbox position, as the store answered it."""
    return {r.user_id: position(r.seq) for r in accepted(result).recipients}


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Backend:
    """Makes stores of one kind and lets their TTLs run out."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.clock = FakeClock()
        self.stores: list[Store] = []

    def make(self, **options: Any) -> Store:
        store: Store
        if self.kind == "memory":
            store = MemoryStore(clock=self.clock, **options)
        elif self.kind == "cluster":
            assert self.redis_url is not None
            store = ClusterStore(self.redis_url, **options)
        else:
            assert self.redis_url is not None
            store = RedisStore(self.redis_url, **options)
        self.stores.append(store)
        return store

    async def after(
        self, seconds: float, condition: Callable[[], Awaitable[bool]], what: str
    ) -> None:
        """Let ``seconds`` pass (fake clock, or real time for Redis) until ``condition``."""
        if self.kind == "memory":
            self.clock.advance(seconds)
            assert await condition(), what
        else:
            await wait_until(condition, timeout=seconds + 10, what=what)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = {"memory": None, "redis": "redis_url", "cluster": "redis_cluster_url"}[request.param]
    if url is not None:
        url = request.getfixturevalue(url)
    backend = Backend(request.param, url)
    try:
        yield backend
    finally:
        for store in backend.stores:
            await store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.make()


# -- private messages ---------------------------------------------------------------------


async def test_private_message_lands_in_recipient_and_sender_inboxes(store: Store) -> None:
    """A private message is stored for `to` and the sender, at positions 1, 2, 3 in each."""
    messages = [msg(ALICE, BOB, content=f"n{i}") for i in range(3)]
    results = await store.submit([sub(f"c{i}", m) for i, m in enumerate(messages)])
    seqs: dict[UserId, list[str]] = {ALICE: [], BOB: []}
    for m, result in zip(messages, results, strict=True):
        a = accepted(result)
        assert not a.duplicate
        assert a.message == m
        assert [r.user_id for r in a.recipients] == [BOB, ALICE]
        for r in a.recipients:
            seqs[r.user_id].append(r.seq)
    for user in (ALICE, BOB):
        assert seqs[user] == ["1", "2", "3"]
        inbox = await entries(store, user, limit=10)
        assert [e.message for e in inbox] == messages
        assert [e.seq for e in inbox] == seqs[user]
        assert [e.position for e in inbox] == [1, 2, 3]


async def test_positions_count_up_by_one_per_user(store: Store) -> None:
    """Each inbox numbers its messages 1, 2, 3, ... on its own, across batches and senders."""
    first = await store.submit([sub("a1", msg(ALICE, BOB)), sub("a2", msg(ALICE, BOB))])
    assert [positions_of(r) for r in first] == [{BOB: 1, ALICE: 1}, {BOB: 2, ALICE: 2}]
    [carol] = await store.submit([sub("c1", msg(CAROL, BOB))])
    assert positions_of(carol) == {BOB: 3, CAROL: 1}
    [self_note] = await store.submit([sub("a3", msg(ALICE, ALICE))])
    assert positions_of(self_note) == {ALICE: 3}
    assert [e.position for e in await entries(store, BOB)] == [1, 2, 3]
    assert [e.position for e in await entries(store, ALICE)] == [1, 2, 3]


async def test_read_inbox_says_where_the_inbox_ends(store: Store) -> None:
    """read_inbox returns `last`, the newest position, whatever the page holds."""
    assert await store.read_inbox(BOB, 0, 10) == InboxPage([], 0)
    await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(5)])
    page = await store.read_inbox(BOB, 0, 2)
    assert ([e.position for e in page.entries], page.last) == ([1, 2], 5)
    page = await store.read_inbox(BOB, 5, 10)
    assert (page.entries, page.last) == ([], 5)
    page = await store.read_inbox(BOB, 3, 0)
    assert (page.entries, page.last) == ([], 5)
    page = await store.read_inbox(BOB, 10**6, 10)
    assert (page.entries, page.last) == ([], 5)
    page = await store.read_inbox(BOB, MAX_POSITION, 10)
    assert (page.entries, page.last) == ([], 5)


async def test_submit_returns_presence_of_recipients(store: Store) -> None:
    """submit reports the live gateways of each recipient, sender included."""
    await store.attach(BOB, GW2)
    await store.attach(ALICE, GW1)
    await store.attach(CAROL, GW1)
    a = accepted((await store.submit([sub("c1", msg(ALICE, BOB))]))[0])
    assert a.presence == {BOB: (GW2,), ALICE: (GW1,)}
    b = accepted((await store.submit([sub("c2", msg(DAVE, BOB))]))[0])
    assert b.presence == {BOB: (GW2,)}


async def test_message_to_self_is_stored_once(store: Store) -> None:
    """A message to oneself appears once in one's own inbox."""
    a = accepted((await store.submit([sub("c1", msg(ALICE, ALICE))]))[0])
    assert [r.user_id for r in a.recipients] == [ALICE]
    assert len(await entries(store, ALICE, limit=10)) == 1


async def test_content_and_big_ids_round_trip(store: Store) -> None:
    """Unicode, quotes, NULs, long text and uint64 ids come back from the inbox unchanged."""
    big = UserId(2**64 - 1)
    text = 'h\u00e9llo "w\u00f6rld" \\ \x00 \U0001f600 \n' + "x" * 70_000
    m = Message(MessageId("id \u00e9 1"), big, 2**64 - 2, MESSAGE_PRIVATE, 2**31 - 1, 1, text)
    a = accepted((await store.submit([sub("\u00e9 c1", m)]))[0])
    assert {r.user_id for r in a.recipients} == {big, 2**64 - 2}
    [entry] = await entries(store, big, limit=10)
    assert entry.message == m
    again = accepted((await store.submit([sub("\u00e9 c1", msg(big, 5))]))[0])
    assert again.duplicate
    assert again.message.id == m.id


async def test_text_that_is_not_unicode_is_refused_alone(store: Store) -> None:
    """A lone surrogate in the content refuses that submission only, as bad_request."""
    results = await store.submit(
        [
            sub("c1", msg(ALICE, BOB)),
            sub("c2", msg(ALICE, BOB, content="\ud800")),
            sub("c3", msg(ALICE, BOB)),
        ]
    )
    assert isinstance(results[1], Refused)
    assert results[1].why is Refusal.UNENCODABLE
    assert not accepted(results[0]).duplicate
    assert not accepted(results[2]).duplicate
    assert len(await entries(store, BOB, limit=10)) == 2


async def test_empty_batch(store: Store) -> None:
    """An empty batch is an empty answer."""
    assert await store.submit([]) == []


# -- dedupe -------------------------------------------------------------------------------


async def test_duplicate_client_id_returns_first_message_and_stores_nothing(store: Store) -> None:
    """Resending a client id gets the first message id, time and recipients back, and
    stores nothing."""
    first = msg(ALICE, BOB, time=1000)
    a = accepted((await store.submit([sub("c1", first)]))[0])
    again = msg(ALICE, BOB, time=2000, content="again")
    d = accepted((await store.submit([sub("c1", again)]))[0])
    assert d.duplicate
    assert (d.message.id, d.message.time) == (first.id, 1000)
    assert d.recipients == a.recipients
    assert dict(d.presence) == {}
    assert not a.duplicate
    assert [e.message for e in await entries(store, BOB, limit=10)] == [first]
    assert len(await entries(store, ALICE, limit=10)) == 1


async def test_a_duplicate_carries_the_first_positions_and_current_presence(
    store: Store,
) -> None:
    """A duplicate answers the first submission's recipients with their positions, and the
    recipients' presence looked up now, so the message can be pushed again."""
    await store.join(7, ALICE)
    await store.join(7, BOB)
    await store.join(7, CAROL)
    await store.submit([sub("p1", msg(CAROL, BOB))])  # BOB at 1, CAROL at 1
    first = accepted((await store.submit([sub("g1", msg(ALICE, 7, type=MESSAGE_GROUP))]))[0])
    assert positions_of(first) == {ALICE: 1, BOB: 2, CAROL: 2}
    assert dict(first.presence) == {}
    await store.submit([sub("p2", msg(CAROL, BOB))])  # later messages do not change it
    await store.attach(BOB, GW2)
    await store.attach(ALICE, GW1)
    resend = msg(ALICE, 7, type=MESSAGE_GROUP, content="resent")
    [dup] = await store.submit([sub("g1", resend)])
    d = accepted(dup)
    assert d.duplicate
    assert d.message.id == first.message.id
    assert set(d.recipients) == set(first.recipients)
    assert positions_of(d) == {ALICE: 1, BOB: 2, CAROL: 2}
    assert dict(d.presence) == {BOB: (GW2,), ALICE: (GW1,)}
    assert [e.position for e in await entries(store, BOB)] == [1, 2, 3]


async def test_duplicate_within_one_batch(store: Store) -> None:
    """Two submissions with one client id in a batch: the second is the duplicate."""
    first, second = msg(ALICE, BOB), msg(ALICE, BOB)
    results = await store.submit([sub("c1", first), sub("c1", second)])
    assert not accepted(results[0]).duplicate
    assert accepted(results[1]).duplicate
    assert accepted(results[1]).message.id == first.id
    assert accepted(results[1]).recipients == accepted(results[0]).recipients
    assert len(await entries(store, BOB, limit=10)) == 1


async def test_client_ids_are_per_sender(store: Store) -> None:
    """The same client id from two different users is two messages."""
    results = await store.submit([sub("c1", msg(ALICE, CAROL)), sub("c1", msg(BOB, CAROL))])
    assert not any(accepted(r).duplicate for r in results)
    assert len(await entries(store, CAROL, limit=10)) == 2


async def test_empty_client_id_is_never_a_duplicate(store: Store) -> None:
    """Without a client id there is nothing to dedupe on: every submission is stored."""
    results = await store.submit([sub("", msg(ALICE, BOB)), sub("", msg(ALICE, BOB))])
    assert not any(accepted(r).duplicate for r in results)
    assert len(await entries(store, BOB, limit=10)) == 2


async def test_dedupe_forgets_after_the_window(backend: Backend) -> None:
    """After the dedupe window the same client id is a new message."""
    store = backend.make(dedupe_window=1)
    await store.submit([sub("c1", msg(ALICE, BOB))])

    async def stored_again() -> bool:
        result = accepted((await store.submit([sub("c1", msg(ALICE, BOB))]))[0])
        return not result.duplicate

    await backend.after(1.5, stored_again, "the client id to be forgotten")


# -- groups -------------------------------------------------------------------------------


async def test_group_message_reaches_every_member_once(store: Store) -> None:
    """A group message is stored once for every member, the sender included."""
    for user in (ALICE, BOB, CAROL):
        await store.join(7, user)
    await store.join(7, BOB)  # joining twice changes nothing
    await store.join(8, DAVE)
    await store.attach(CAROL, GW2)
    m = msg(ALICE, 7, type=MESSAGE_GROUP)
    a = accepted((await store.submit([sub("g1", m)]))[0])
    assert sorted(r.user_id for r in a.recipients) == [ALICE, BOB, CAROL]
    assert a.presence == {CAROL: (GW2,)}
    for user in (ALICE, BOB, CAROL):
        assert [e.message for e in await entries(store, user, limit=10)] == [m]
    assert await entries(store, DAVE, limit=10) == []


async def test_a_group_message_takes_each_members_next_position(store: Store) -> None:
    """Every member's inbox gives a group message its own next position."""
    for user in (ALICE, BOB, CAROL):
        await store.join(7, user)
    await store.submit([sub("p1", msg(DAVE, BOB)), sub("p2", msg(DAVE, BOB))])
    await store.submit([sub("p3", msg(DAVE, CAROL))])
    a = accepted((await store.submit([sub("g1", msg(ALICE, 7, type=MESSAGE_GROUP))]))[0])
    assert positions_of(a) == {ALICE: 1, BOB: 3, CAROL: 2}
    b = accepted((await store.submit([sub("g2", msg(BOB, 7, type=MESSAGE_GROUP))]))[0])
    assert positions_of(b) == {ALICE: 2, BOB: 4, CAROL: 3}
    for user, last in ((ALICE, 2), (BOB, 4), (CAROL, 3)):
        page = await store.read_inbox(user, 0, 10)
        assert [e.position for e in page.entries] == list(range(1, last + 1))
        assert page.last == last


async def test_non_member_is_refused_and_not_deduped(store: Store) -> None:
    """A non-member's group post is refused not_member, stores nothing, and burns no client id."""
    await store.join(7, ALICE)
    [result] = await store.submit([sub("g1", msg(BOB, 7, type=MESSAGE_GROUP))])
    assert isinstance(result, Refused)
    assert (result.client_id, result.why) == ("g1", Refusal.NOT_MEMBER)
    assert await entries(store, ALICE, limit=10) == []
    await store.join(7, BOB)
    again = accepted((await store.submit([sub("g1", msg(BOB, 7, type=MESSAGE_GROUP))]))[0])
    assert not again.duplicate
    assert len(await entries(store, ALICE, limit=10)) == 1


async def test_join_leave_is_member(store: Store) -> None:
    """Membership follows join and leave; leaving twice is harmless."""
    assert not await store.is_member(7, ALICE)
    await store.join(7, ALICE)
    assert await store.is_member(7, ALICE)
    assert not await store.is_member(8, ALICE)
    await store.leave(7, ALICE)
    await store.leave(7, ALICE)
    assert not await store.is_member(7, ALICE)
    [result] = await store.submit([sub("g", msg(ALICE, 7, type=MESSAGE_GROUP))])
    assert isinstance(result, Refused)


async def test_are_members_answers_each_user_in_order(store: Store) -> None:
    """One call says which of several users are in a group now (a leaver no more)."""
    await store.join(7, ALICE)
    await store.join(7, CAROL)
    assert await store.are_members(7, [CAROL, BOB, ALICE]) == [True, False, True]
    assert await store.are_members(7, []) == []
    await store.leave(7, CAROL)
    assert await store.are_members(7, [ALICE, CAROL]) == [True, False]
    assert await store.are_members(8, [ALICE]) == [False]


async def test_join_refuses_beyond_groups_per_user(backend: Backend) -> None:
    """A user in max_groups_per_user groups cannot join another (GroupLimitError saying
    the user is full, with the bound) until leaving one; rejoining a group it is in still
    succeeds."""
    store = backend.make(max_groups_per_user=2)
    await store.join(1, ALICE)
    await store.join(2, ALICE)
    await store.join(2, ALICE)  # already in it: no change, no refusal
    with pytest.raises(GroupLimitError) as refused:
        await store.join(3, ALICE)
    assert (refused.value.user_full, refused.value.group, refused.value.limit) == (True, 3, 2)
    assert not await store.is_member(3, ALICE)
    await store.join(3, BOB)  # the bound is per user
    await store.leave(1, ALICE)
    await store.join(3, ALICE)
    assert await store.is_member(3, ALICE)


async def test_join_refuses_beyond_group_members(backend: Backend) -> None:
    """A group with max_group_members members takes no one else until one leaves."""
    store = backend.make(max_group_members=2)
    await store.join(7, ALICE)
    await store.join(7, BOB)
    with pytest.raises(GroupLimitError, match="group 7 is full") as refused:
        await store.join(7, CAROL)
    assert (refused.value.user_full, refused.value.group, refused.value.limit) == (False, 7, 2)
    assert not await store.is_member(7, CAROL)
    await store.leave(7, ALICE)
    await store.join(7, CAROL)
    assert await store.is_member(7, CAROL)


async def test_concurrent_joins_cannot_overshoot_a_bound(backend: Backend) -> None:
    """Many joins at once into a group with room for 5: exactly 5 succeed."""
    store = backend.make(max_group_members=5)
    results = await asyncio.gather(
        *(store.join(9, UserId(100 + i)) for i in range(40)), return_exceptions=True
    )
    assert sum(r is True for r in results) == 5
    assert all(r is True or isinstance(r, GroupLimitError) for r in results)
    members = [u for u in range(100, 140) if await store.is_member(9, UserId(u))]
    assert len(members) == 5


async def test_mixed_batch_keeps_order(store: Store) -> None:
    """Results come back in the batch's order across kinds of outcome."""
    await store.join(7, ALICE)
    batch = [
        sub("a", msg(ALICE, BOB)),
        sub("b", msg(BOB, 7, type=MESSAGE_GROUP)),
        sub("c", msg(ALICE, 7, type=MESSAGE_GROUP)),
        sub("a", msg(ALICE, BOB)),
    ]
    results = await store.submit(batch)
    assert [r.client_id for r in results] == ["a", "b", "c", "a"]
    assert [type(r) for r in results] == [Accepted, Refused, Accepted, Accepted]
    assert accepted(results[3]).duplicate


# -- presence -----------------------------------------------------------------------------


async def test_second_attach_on_another_gateway_keeps_the_first(store: Store) -> None:
    """A user's second login (another gateway) never erases the first one's presence."""
    await store.attach(ALICE, GW1)
    await store.attach(ALICE, GW2)
    await store.attach(ALICE, GW1)
    found = await store.lookup([ALICE, BOB])
    assert set(found) == {ALICE}
    assert sorted(found[ALICE]) == [GW1, GW2]


async def test_detach_removes_only_that_gateway(store: Store) -> None:
    """detach drops one gateway's entry; the user's other gateway stays."""
    await store.attach(ALICE, GW1)
    await store.attach(ALICE, GW2)
    await store.detach(ALICE, GW1)
    assert await store.lookup([ALICE]) == {ALICE: (GW2,)}
    await store.detach(ALICE, GW2)
    await store.detach(ALICE, GW2)
    assert await store.lookup([ALICE]) == {}


async def test_presence_expires_unless_refreshed(backend: Backend) -> None:
    """Unrefreshed presence expires after the TTL; a refreshed entry stays alive."""
    store = backend.make(presence_ttl=1)
    await store.attach(ALICE, GW1)
    await store.attach(BOB, GW1)
    await store.attach(BOB, GW2)
    assert set(await store.lookup([ALICE, BOB])) == {ALICE, BOB}

    async def only_alice_on_gw1_left() -> bool:
        await store.refresh(GW1, [ALICE])
        return await store.lookup([ALICE, BOB]) == {ALICE: (GW1,)}

    if isinstance(store, MemoryStore):
        backend.clock.advance(0.6)
        await store.refresh(GW1, [ALICE])
    await backend.after(0.6, only_alice_on_gw1_left, "bob's presence to expire")
    assert await store.lookup([ALICE]) == {ALICE: (GW1,)}


async def test_refresh_restores_a_forgotten_entry(store: Store) -> None:
    """refresh upserts: an entry removed by forget comes back on the next refresh."""
    await store.attach(ALICE, GW1)
    await store.forget(GW1, [ALICE])
    assert await store.lookup([ALICE]) == {}
    await store.refresh(GW1, [ALICE, BOB])
    assert await store.lookup([ALICE, BOB]) == {ALICE: (GW1,), BOB: (GW1,)}


async def test_forget_drops_a_gateway_for_many_users(store: Store) -> None:
    """forget removes the named gateway's entries of many users, and nothing else."""
    users = [UserId(u) for u in range(100, 150)]
    await store.refresh(GW1, users)
    await store.refresh(GW2, users[:10])
    await store.forget(GW1, users)
    await store.forget(GW1, [])
    assert await store.lookup(users) == {u: (GW2,) for u in users[:10]}
    assert await store.lookup([]) == {}


# -- inbox and ack ------------------------------------------------------------------------


async def test_inbox_ends_are_the_newest_positions_of_many_users_at_once(store: Store) -> None:
    """inbox_ends gives each user's newest position (0: no inbox), in the order asked,
    users on every cluster slot alike, as read_inbox's `last` says."""
    assert await store.inbox_ends([]) == []
    await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
    await store.submit([sub("d", msg(CAROL, BOB))])
    many = [UserId(1000 + i) for i in range(50)]
    ends = await store.inbox_ends([BOB, DAVE, ALICE, CAROL, *many, BOB])
    assert ends == [4, 0, 3, 1, *([0] * 50), 4]
    assert ends[0] == (await store.read_inbox(BOB, 0, 0)).last


async def test_in_groups_says_which_of_many_users_are_in_a_group_at_once(
    backend: Backend,
) -> None:
    """in_groups says, per user in the order asked, whether the user is in any group (the
    set streams() reads: small and large groups alike), users on every cluster slot
    alike; a user it calls False has no large group to read (streams() is empty)."""
    store = backend.make(large_group=2)
    assert await store.in_groups([]) == []
    many = [UserId(1000 + i) for i in range(50)]
    await store.join(7, ALICE)  # a small group
    for user in (CAROL, DAVE, many[-1]):
        await store.join(8, user)  # a large one
    assert await store.is_large(8)
    asked = [ALICE, BOB, CAROL, *many, ALICE]
    found = await store.in_groups(asked)
    assert found == [True, False, True, *([False] * 49), True, True]
    for user, grouped in zip(asked, found, strict=True):
        if grouped is False:
            assert await store.streams(user, 0) == []
    await store.leave(7, ALICE)
    await store.leave(8, CAROL)
    assert await store.in_groups([ALICE, CAROL, DAVE]) == [False, False, True]
    assert [await store.streams(u, 0) for u in (ALICE, CAROL)] == [[], []]


async def test_read_inbox_after_a_position_with_limit(store: Store) -> None:
    """read_inbox returns entries strictly after a position, oldest first, up to limit."""
    messages = [msg(ALICE, BOB, content=str(i)) for i in range(5)]
    await store.submit([sub(f"c{i}", m) for i, m in enumerate(messages)])
    everything = await entries(store, BOB, limit=100)
    assert [e.message for e in everything] == messages
    seqs = [e.seq for e in everything]
    assert seqs == ["1", "2", "3", "4", "5"]
    assert [e.seq for e in await entries(store, BOB, limit=2)] == seqs[:2]
    assert [e.seq for e in await entries(store, BOB, 2, limit=100)] == seqs[2:]
    assert [e.seq for e in await entries(store, BOB, 2, limit=2)] == seqs[2:4]
    assert await entries(store, BOB, 5, limit=100) == []
    assert await entries(store, BOB, 1, limit=0) == []
    assert await entries(store, CAROL, limit=100) == []


async def test_concurrent_acks_share_one_redis_round_trip(redis_url: str) -> None:
    """Acks of many users asked for at once are written by one script call, each forward only."""
    async with RedisStore(redis_url) as store:
        users = [UserId(100 + i) for i in range(20)]
        await store.submit(
            [sub(f"u{i}-{j}", msg(DAVE, u)) for i, u in enumerate(users) for j in range(i + 1)]
        )
        await store.submit([sub(f"a{j}", msg(DAVE, ALICE)) for j in range(10)])
        await store.ack(ALICE, 9)
        stats: Any = await store.client.info("commandstats")
        before = stats.get("cmdstat_evalsha", {}).get("calls", 0)
        await asyncio.gather(
            *(store.ack(u, i + 1) for i, u in enumerate(users)),
            store.ack(ALICE, 5),
            store.ack(ALICE, 10),
            store.ack(ALICE, 8),
        )
        stats = await store.client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] - before == 1
        assert [await store.acked(u) for u in users] == [i + 1 for i in range(20)]
        assert await store.acked(ALICE) == 10


async def test_ack_only_moves_forward(store: Store) -> None:
    """The acknowledged position starts at 0 and never moves back."""
    await store.submit([sub(f"c{i}", msg(BOB, ALICE)) for i in range(8)])
    assert await store.acked(ALICE) == 0
    await store.ack(ALICE, 0)
    assert await store.acked(ALICE) == 0
    await store.ack(ALICE, 5)
    assert await store.acked(ALICE) == 5
    await store.ack(ALICE, 4)
    await store.ack(ALICE, 0)
    assert await store.acked(ALICE) == 5
    await store.ack(ALICE, 6)
    assert await store.acked(ALICE) == 6
    await store.ack(ALICE, 6)
    assert await store.acked(ALICE) == 6
    assert await store.acked(CAROL) == 0


async def test_ack_is_clamped_to_the_end_of_the_inbox(store: Store) -> None:
    """An ack beyond the newest position stores the newest position (2**64 - 1 included)."""
    await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
    await store.ack(BOB, 10**6)
    assert await store.acked(BOB) == 3
    await store.ack(ALICE, MAX_POSITION)
    assert await store.acked(ALICE) == 3
    await store.ack(CAROL, 5)  # no inbox at all: nothing to acknowledge
    assert await store.acked(CAROL) == 0
    await store.submit([sub(f"d{i}", msg(ALICE, BOB)) for i in range(2)])
    await store.ack(BOB, 2)  # never back
    assert await store.acked(BOB) == 3
    await store.ack(BOB, MAX_POSITION)
    assert await store.acked(BOB) == 5
    # The clamp is what makes a replay after the acked position find the next message.
    [nxt] = await store.submit([sub("e", msg(ALICE, BOB, content="next"))])
    assert [e.message.content for e in await entries(store, BOB, await store.acked(BOB))] == [
        "next"
    ]
    assert positions_of(nxt)[BOB] == 6


async def test_inbox_is_trimmed_by_length(backend: Backend) -> None:
    """An inbox keeps its newest entries, about inbox_max_len of them (Redis: whole nodes)."""
    store = backend.make(inbox_max_len=10)
    messages = [msg(ALICE, BOB, content=str(i)) for i in range(300)]
    for start in range(0, 300, 50):
        await store.submit(
            [sub(f"c{start + i}", m) for i, m in enumerate(messages[start : start + 50])]
        )
    kept = [e.message for e in await entries(store, BOB, limit=1000)]
    slack = 0 if backend.kind == "memory" else 100  # Redis stream-node-max-entries
    assert 10 <= len(kept) <= 10 + slack
    assert kept == messages[-len(kept) :]


async def test_a_trimmed_head_is_a_gap_the_reader_can_see(backend: Backend) -> None:
    """After trimming by length the kept positions are consecutive and end at `last`; the
    first one is beyond the reader's position + 1, so the reader knows what it lost."""
    store = backend.make(inbox_max_len=10)
    for start in range(0, 300, 50):
        await store.submit([sub(f"c{start + i}", msg(ALICE, BOB)) for i in range(50)])
    page = await store.read_inbox(BOB, 0, 1000)
    got = [e.position for e in page.entries]
    assert page.last == 300
    assert got == list(range(got[0], 301))
    assert got[0] > 1  # positions 1 .. got[0] - 1 were trimmed: a gap at the head
    assert 10 <= len(got) <= (10 if backend.kind == "memory" else 110)
    # Reading after a trimmed position starts at the oldest kept entry.
    page = await store.read_inbox(BOB, 5, 3)
    assert [e.position for e in page.entries] == got[:3]
    assert page.last == 300
    # The sender's inbox was trimmed the same way, by its own positions.
    alice = await store.read_inbox(ALICE, 0, 1000)
    assert alice.last == 300
    assert alice.entries[-1].position == 300


async def test_inbox_is_trimmed_by_age_and_expires() -> None:
    """Memory store: entries older than inbox_max_age go, and an idle inbox expires."""
    clock = FakeClock()
    store = MemoryStore(inbox_max_age=100, clock=clock)
    old = msg(ALICE, BOB)
    await store.submit([sub("c1", old)])
    clock.advance(60)
    new = msg(ALICE, BOB)
    await store.submit([sub("c2", new)])
    await store.ack(BOB, 1)
    clock.advance(60)
    await store.submit([sub("c3", msg(ALICE, CAROL))])
    assert [e.message for e in await entries(store, BOB, limit=10)] == [old, new]
    await store.submit([sub("c4", msg(CAROL, BOB))])
    page = await store.read_inbox(BOB, 0, 10)
    assert page.entries[0].message.id == new.id
    assert ([e.position for e in page.entries], page.last) == ([2, 3], 3)
    clock.advance(101)
    assert await store.read_inbox(BOB, 0, 10) == InboxPage([], 0)
    assert await store.acked(BOB) == 0


async def test_positions_do_not_depend_on_the_clock() -> None:
    """Memory store: with the clock standing still, positions still count 1, 2, 3."""
    store = MemoryStore(clock=FakeClock())
    results = await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
    assert [accepted(r).recipients[0].seq for r in results] == ["1", "2", "3"]


async def test_an_acknowledged_position_never_hides_a_later_message(backend: Backend) -> None:
    """Once the inbox has expired, a new message still lands after the acknowledged position
    (positions must not restart below what the user acknowledged)."""
    ttl = 100.0 if backend.kind == "memory" else 1.0
    store = backend.make(inbox_max_age=ttl)
    await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(5)])
    if isinstance(store, RedisStore | ClusterStore):
        pos_key = f"im:{{u:{BOB}}}:pos"
        await wait_until(
            lambda: _pttl_below(store, pos_key, ttl * 500), what="half the inbox TTL to pass"
        )
    else:
        backend.clock.advance(ttl / 2)
    await store.ack(BOB, 5)  # the user acknowledges late: its ack outlives the inbox
    assert await store.acked(BOB) == 5

    async def inbox_gone() -> bool:
        return (await store.read_inbox(BOB, 0, 10)).last == 0

    await backend.after(ttl * 0.6, inbox_gone, "the inbox to expire")
    [later] = await store.submit([sub("late", msg(CAROL, BOB, content="later"))])
    acked = await store.acked(BOB)
    assert positions_of(later)[BOB] > acked, (acked, positions_of(later))
    assert [e.message.content for e in await entries(store, BOB, acked)] == ["later"]


async def _pttl_below(store: RedisStore | ClusterStore, key: str, ms: float) -> bool:
    ttl = await store.client.pttl(key)
    return 0 < ttl < ms


# -- beacon -------------------------------------------------------------------------------


async def test_beacon_says_when_the_mark_was_missing(backend: Backend) -> None:
    """beacon is missing the first time, not while the mark lives, missing once it is gone;
    the epoch stays the same throughout."""
    store = backend.make()
    first = await store.beacon(GW1, 30)
    assert first.missing
    assert first.epoch
    assert await store.beacon(GW1, 30) == Beacon(False, first.epoch)
    assert not (await store.beacon(GW1, 30)).missing
    assert await store.beacon(GW2, 30) == Beacon(True, first.epoch)  # per gateway
    assert not (await store.beacon(GW1, 0.5)).missing

    async def expired() -> bool:  # without calling beacon, which would renew the mark
        if isinstance(store, RedisStore | ClusterStore):
            return not await store.client.exists("im:gateway:gw-1")
        return True

    await backend.after(0.6, expired, "the beacon to expire")
    assert await store.beacon(GW1, 30) == Beacon(True, first.epoch)
    assert await store.beacon(GW1, 30) == Beacon(False, first.epoch)


async def test_redis_beacon_notices_lost_data(redis_url: str, redis_client: aioredis.Redis) -> None:
    """Redis: a deleted beacon key makes the mark missing (same epoch); a FLUSHALL (a
    restart without persistence) makes it missing with a new epoch, exactly once."""
    async with (
        RedisStore(redis_url, prefix="b:") as store,
        RedisStore(redis_url, prefix="b:") as other,
    ):
        first = await store.beacon(GW1, 30)
        assert first.missing
        assert await store.beacon(GW1, 30) == Beacon(False, first.epoch)
        assert (await other.beacon(GW2, 30)).epoch == first.epoch  # one epoch per Redis
        assert 0 < await redis_client.pttl("b:gateway:gw-1") <= 30_000
        assert await redis_client.pttl("b:epoch") == -1
        await redis_client.delete("b:gateway:gw-1")
        assert await store.beacon(GW1, 30) == Beacon(True, first.epoch)
        assert await store.beacon(GW1, 30) == Beacon(False, first.epoch)
        await redis_client.flushall()
        after = await store.beacon(GW1, 30)
        assert after.missing
        assert after.epoch != first.epoch
        assert await store.beacon(GW1, 30) == Beacon(False, after.epoch)
        assert (await other.beacon(GW2, 30)).epoch == after.epoch


# -- lifecycle ----------------------------------------------------------------------------


async def test_ping_and_idempotent_close(backend: Backend) -> None:
    """ping answers on an open store; close twice is fine."""
    store = backend.make()
    await store.ping()
    async with store:  # type: ignore[attr-defined]
        pass
    await store.close()


async def test_closed_store_refuses_use(backend: Backend) -> None:
    """A closed store fails loudly instead of answering."""
    store = backend.make()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.ping()
    with pytest.raises(StoreError, match="closed"):
        await store.submit([sub("c", msg(ALICE, BOB))])
    with pytest.raises(StoreError, match="closed"):
        await store.lookup([ALICE])


def test_bad_options_are_refused() -> None:
    """Non-positive limits and TTLs, and a prefix with hash-tag braces, are rejected at
    construction."""
    with pytest.raises(StoreError, match="positive"):
        MemoryStore(presence_ttl=0)
    with pytest.raises(StoreError, match="positive"):
        RedisStore("redis://127.0.0.1:1/0", inbox_max_len=0)
    with pytest.raises(StoreError, match="braces"):
        RedisStore("redis://127.0.0.1:1/0", prefix="a{b}:")


# -- open_store ---------------------------------------------------------------------------


async def test_open_store_by_url(redis_url: str) -> None:
    """open_store picks the implementation from the URL scheme and passes options on."""
    memory = await open_store("memory://", presence_ttl=5)
    assert isinstance(memory, MemoryStore)
    assert memory.presence_ttl == 5
    redis_store = await open_store(redis_url, prefix="x:", inbox_max_len=7)
    try:
        assert isinstance(redis_store, RedisStore)
        assert (redis_store.settings.prefix, redis_store.settings.inbox_max_len) == ("x:", 7)
    finally:
        await redis_store.close()
    with pytest.raises(StoreError, match="memory://"):
        await open_store("http://127.0.0.1/")


async def test_open_store_fails_on_unreachable_redis() -> None:
    """open_store pings Redis, so a dead address fails at once."""
    from tests.helpers import free_port

    with pytest.raises(aioredis.ConnectionError):
        await open_store(f"redis://127.0.0.1:{free_port()}/0")


# -- Redis specifics ----------------------------------------------------------------------


async def test_redis_keys_live_under_the_prefix_and_expire(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Every key is under the prefix with its user's or group's hash tag, and every key but
    group membership (bounded by join) and the epoch has a TTL."""
    await redis_client.set("outside", "1")
    async with RedisStore(redis_url, prefix="t:") as store:
        await store.join(7, ALICE)
        await store.join(7, BOB)
        await store.attach(ALICE, GW1)
        await store.refresh(GW2, [BOB, CAROL])
        await store.submit(
            [
                sub("c1", msg(ALICE, BOB)),
                sub("c2", msg(ALICE, 7, type=MESSAGE_GROUP)),
                sub("c3", msg(CAROL, 7, type=MESSAGE_GROUP)),
            ]
        )
        await store.ack(BOB, 1)
        await store.detach(ALICE, GW1)
        await store.beacon(GW1, 30)
    keys = sorted([k.decode() async for k in redis_client.scan_iter(match="*")])
    ours = [k for k in keys if k != "outside"]
    assert all(k.startswith("t:") for k in ours), ours
    assert set(ours) == {
        "t:{g:7}:members",
        "t:{u:1}:groups",
        "t:{u:1}:inbox",
        "t:{u:1}:pos",
        "t:{u:1}:dedupe:c1",
        "t:{u:1}:dedupe:c2",
        "t:{u:2}:groups",
        "t:{u:2}:inbox",
        "t:{u:2}:pos",
        "t:{u:2}:acked",
        "t:{u:2}:presence",
        "t:{u:3}:presence",
        "t:gateway:gw-1",
        "t:epoch",
    }, ours
    for key in ours:
        ttl = await redis_client.pttl(key)
        if key.endswith((":members", ":groups")) or key == "t:epoch":  # bounded instead
            assert ttl == -1, key
        else:
            assert ttl > 0, key


async def test_redis_inbox_entries_are_position_dash_milliseconds(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Redis: inbox stream ids are `<position>-<ms>` (the Redis clock) and the pos key holds
    the newest position."""
    async with RedisStore(redis_url) as store:
        await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
        (seconds, micros) = await redis_client.time()
        now_ms = seconds * 1000 + micros // 1000
        rows: Any = await redis_client.xrange("im:{u:2}:inbox")
        ids = [eid.decode() for eid, _ in rows]
        assert [i.split("-")[0] for i in ids] == ["1", "2", "3"]
        assert all(abs(int(i.split("-")[1]) - now_ms) < 60_000 for i in ids), (ids, now_ms)
        assert await redis_client.get("im:{u:2}:pos") == b"3"


async def test_redis_positions_resume_after_a_lost_counter(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Redis: if the pos key is lost while the inbox lives, the next append continues after
    the inbox's newest entry (positions never repeat)."""
    async with RedisStore(redis_url) as store:
        await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
        await redis_client.delete("im:{u:2}:pos")
        [result] = await store.submit([sub("next", msg(ALICE, BOB))])
        assert positions_of(result)[BOB] == 4
        page = await store.read_inbox(BOB, 0, 10)
        assert ([e.position for e in page.entries], page.last) == ([1, 2, 3, 4], 4)


async def test_redis_an_ack_after_the_counter_lapsed_still_lands(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """Redis: the pos key's TTL is refreshed lazily; an ack while it is gone is clamped to
    the inbox's newest entry, not dropped (and the counter comes back)."""
    async with RedisStore(redis_url) as store:
        await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
        await redis_client.delete("im:{u:2}:pos")
        await store.ack(BOB, 10**6)
        assert await store.acked(BOB) == 3
        assert await redis_client.get("im:{u:2}:pos") == b"3"


async def test_redis_submit_is_one_round_trip_per_batch(
    redis_url: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 200 submissions (private and group) costs one EVALSHA, not one per message."""
    async with RedisStore(redis_url) as store:
        for user in range(1, 11):
            await store.join(7, UserId(user))
            await store.attach(UserId(user), GW1)
        batch = [
            sub(
                f"c{i}",
                msg(i % 10 + 1, 7, type=MESSAGE_GROUP) if i % 2 else msg(i % 10 + 1, 100 + i),
            )
            for i in range(200)
        ]
        await store.submit([sub("warm", msg(ALICE, BOB))])  # loads the script
        calls: list[object] = []
        real: Any = store.client.execute_command

        async def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[0])
            return await real(*args, **kwargs)

        monkeypatch.setattr(store.client, "execute_command", counting)
        # The batch scripts' own connection (store/lane.py), when the store has one.
        lane = store.lane
        if lane is not None:
            real_call: Any = lane.call

            async def counting_call(*args: Any) -> Any:
                calls.append(args[0])
                return await real_call(*args)

            monkeypatch.setattr(lane, "call", counting_call)
        before = await redis_client.info("commandstats")
        results = await store.submit(batch)
        after = await redis_client.info("commandstats")
    assert calls == ["EVALSHA"]

    def delta(cmd: str) -> int:
        return int(after.get(f"cmdstat_{cmd}", {}).get("calls", 0)) - int(
            before.get(f"cmdstat_{cmd}", {}).get("calls", 0)
        )

    assert delta("evalsha") == 1
    appends = sum(len(accepted(r).recipients) for r in results)
    assert appends == 100 * 2 + 100 * 10
    assert delta("xadd") == appends
    assert all(
        len(accepted(r).presence) == len(accepted(r).recipients) - (i % 2 == 0)
        for i, r in enumerate(results)
    )


async def test_redis_inbox_is_trimmed_by_age(redis_url: str) -> None:
    """Redis: entries older than inbox_max_age are trimmed from the head (a pass now and
    then, on append); what stays is consecutive up to `last`, so the gap is visible."""
    async with RedisStore(redis_url, inbox_max_age=1) as store:
        old = [msg(ALICE, BOB) for _ in range(150)]
        await store.submit([sub(f"o{i}", m) for i, m in enumerate(old)])

        async def oldest_trimmed() -> bool:
            await store.submit([sub("", msg(CAROL, BOB))])
            return (await entries(store, BOB, limit=1))[0].message.id != old[0].id

        await wait_until(oldest_trimmed, timeout=20, what="the oldest entries to be trimmed")
        page = await store.read_inbox(BOB, 0, 1000)
        inbox = page.entries
        assert inbox[-1].message.sender == CAROL
        kept = [e.message for e in inbox if e.message.sender == ALICE]
        assert len(kept) < len(old)
        assert kept == old[len(old) - len(kept) :]
        got = [e.position for e in inbox]
        assert got == list(range(got[0], page.last + 1))
        assert got[0] > 1


async def test_redis_survives_a_script_cache_flush(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """After SCRIPT FLUSH (a restart, a failover), the store reloads its scripts."""
    async with RedisStore(redis_url) as store:
        await store.submit([sub("c1", msg(ALICE, BOB))])
        await redis_client.script_flush()
        a = accepted((await store.submit([sub("c2", msg(ALICE, BOB))]))[0])
        assert len(a.recipients) == 2
        await redis_client.script_flush()
        await store.attach(ALICE, GW1)
        await redis_client.script_flush()
        assert await store.lookup([ALICE]) == {ALICE: (GW1,)}
        await redis_client.script_flush()
        await store.ack(ALICE, 2)
        assert await store.acked(ALICE) == 2


async def test_redis_store_leaves_a_borrowed_client_open(redis_client: aioredis.Redis) -> None:
    """A store given a client does not close it; a decode_responses client works too."""
    store = RedisStore(redis_client)
    await store.close()
    assert await redis_client.ping()
    pool = redis_client.connection_pool.connection_kwargs
    text_client = aioredis.Redis(host=pool["host"], port=pool["port"], decode_responses=True)
    try:
        text_store = RedisStore(text_client)
        await text_store.attach(ALICE, GW1)
        m = msg(ALICE, BOB)
        await text_store.submit([sub("c", m)])
        await text_store.ack(ALICE, 1)
        page = await text_store.read_inbox(BOB, 0, 5)
        assert ([e.message for e in page.entries], page.last) == ([m], 1)
        assert await text_store.lookup([ALICE]) == {ALICE: (GW1,)}
        assert await text_store.acked(ALICE) == 1
        assert (await text_store.beacon(GW1, 5)).missing
        d = accepted((await text_store.submit([sub("c", msg(ALICE, BOB))]))[0])
        assert d.duplicate
        assert positions_of(d) == {BOB: 1, ALICE: 1}
    finally:
        await text_client.aclose()


async def test_two_stores_share_state_through_redis(redis_url: str) -> None:
    """Two gateways' stores on one Redis see each other's presence, groups and inboxes."""
    async with RedisStore(redis_url) as one, RedisStore(redis_url) as two:
        await one.attach(ALICE, GW1)
        await two.attach(ALICE, GW2)
        await two.join(7, BOB)
        await one.join(7, ALICE)
        a = accepted((await two.submit([sub("c", msg(BOB, 7, type=MESSAGE_GROUP))]))[0])
        assert sorted(a.presence[ALICE]) == [GW1, GW2]
        assert len(await entries(one, ALICE, limit=10)) == 1
        assert Recipient(ALICE, (await entries(one, ALICE, limit=1))[0].seq) in a.recipients


# -- properties ---------------------------------------------------------------------------


@given(st.integers(0, MAX_POSITION))
def test_every_uint64_is_a_position_and_its_seq_round_trips(n: int) -> None:
    """position(str(n)) == n for every uint64, and InboxEntry.seq is that decimal."""
    assert position(str(n)) == n
    assert InboxEntry(n, msg(ALICE, BOB)).seq == str(n)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from("abcd")), max_size=30))
def test_dedupe_stores_each_client_id_once(frames: list[tuple[int, str]]) -> None:
    """Memory store: whatever the resends, each (sender, client id) is stored exactly once."""

    async def run() -> None:
        store = MemoryStore()
        batch = [sub(cid, msg(sender, 9)) for sender, cid in frames]
        results = await store.submit(batch[: len(batch) // 2])
        results += await store.submit(batch[len(batch) // 2 :])
        first: dict[tuple[int, str], MessageId] = {}
        for (sender, cid), s, r in zip(frames, batch, results, strict=True):
            a = accepted(r)
            assert a.duplicate == ((sender, cid) in first)
            first.setdefault((sender, cid), s.message.id)
            assert a.message.id == first[(sender, cid)]
        inbox = await entries(store, UserId(9), limit=100)
        assert sorted(e.message.id for e in inbox) == sorted(first.values())

    asyncio.run(run())


_users = st.sampled_from([1, 2, 3])
_groups = st.sampled_from([7, 8])
_frames = st.tuples(
    _users,
    st.booleans(),  # a group message?
    _users,
    _groups,
    st.sampled_from(["", "a", "b"]),
)
_ops = st.one_of(
    st.tuples(st.just("join"), _groups, _users),
    st.tuples(st.just("leave"), _groups, _users),
    st.tuples(st.just("submit"), st.lists(_frames, min_size=1, max_size=6)),
    st.tuples(st.just("ack"), _users, st.sampled_from([0, 1, 2, 5, 10**6, MAX_POSITION])),
    st.tuples(st.just("read"), _users, st.integers(0, 8), st.integers(0, 4)),
)


def _outcome(result: Accepted | Refused) -> tuple[object, ...]:
    if isinstance(result, Refused):
        return ("refused", result.client_id, result.why)
    users = sorted((r.user_id, r.seq) for r in result.recipients)
    return ("accepted", result.client_id, result.duplicate, result.message.id, tuple(users))


@settings(max_examples=25, deadline=None)
@given(st.lists(_ops, max_size=10))
def test_memory_and_redis_stores_agree(redis_server: Any, ops: list[tuple[Any, ...]]) -> None:
    """On random joins, leaves, batches, acks and reads, MemoryStore and RedisStore give
    the same answers, positions and acknowledged positions included."""

    async def run() -> None:
        prefix = f"h{next(_ids)}:"
        async with RedisStore(redis_server.url, prefix=prefix) as real:
            model = MemoryStore()
            for n, op in enumerate(ops):
                if op[0] == "submit":
                    batch = [
                        sub(
                            cid,
                            Message(
                                MessageId(f"m{n}-{j}"),
                                UserId(sender),
                                group if is_group else to,
                                MESSAGE_GROUP if is_group else MESSAGE_PRIVATE,
                                0,
                                1000 + n,
                                f"{n}/{j}",
                            ),
                        )
                        for j, (sender, is_group, to, group, cid) in enumerate(op[1])
                    ]
                    got = [_outcome(r) for r in await real.submit(batch)]
                    assert got == [_outcome(r) for r in await model.submit(batch)]
                elif op[0] == "ack":
                    for store in (real, model):
                        await store.ack(UserId(op[1]), op[2])
                    assert await real.acked(UserId(op[1])) == await model.acked(UserId(op[1]))
                elif op[0] == "read":
                    reader, after, limit = UserId(op[1]), op[2], op[3]
                    got_page = await real.read_inbox(reader, after, limit)
                    assert got_page == await model.read_inbox(reader, after, limit)
                else:
                    for store in (real, model):
                        await getattr(store, op[0])(op[1], UserId(op[2]))
            for user in (1, 2, 3):
                got_page = await real.read_inbox(UserId(user), 0, 100)
                assert got_page == await model.read_inbox(UserId(user), 0, 100)
                assert await real.acked(UserId(user)) == await model.acked(UserId(user))

    asyncio.run(run())


async def test_opening_reads_where_a_connect_replay_starts(store: Store) -> None:
    """``opening``: the acknowledged position, the inbox's end, and whether the user is in
    any group; zeros and False for a user with nothing."""
    assert await store.opening(ALICE) == Opening(0, 0, False)
    await store.submit([sub(f"c{i}", msg(BOB, ALICE)) for i in range(3)])
    await store.ack(ALICE, 2)
    assert await store.opening(ALICE) == Opening(2, 3, False)
    await store.join(7, ALICE)
    assert await store.opening(ALICE) == Opening(2, 3, True)
    assert await store.opening(CAROL) == Opening(0, 0, False)
    await store.leave(7, ALICE)
    assert (await store.opening(ALICE)).in_groups is False


async def test_openings_asked_for_together_each_get_their_own_user(store: Store) -> None:
    """Openings asked for at once (read in one batch by the Redis stores) answer each user
    with that user's positions, in any order and with repeats."""
    await store.submit([sub(f"c{i}", msg(BOB, ALICE)) for i in range(3)])
    await store.submit([sub("d0", msg(ALICE, CAROL))])
    await store.ack(ALICE, 2)
    await store.join(7, CAROL)
    users = [CAROL, ALICE, BOB, ALICE, CAROL]
    got = await asyncio.gather(*(store.opening(u) for u in users))
    want = {u: await store.opening(u) for u in (ALICE, BOB, CAROL)}  # one at a time
    assert len(set(want.values())) == 3
    assert want[ALICE].acked == 2
    assert want[CAROL].in_groups
    assert got == [want[u] for u in users]
