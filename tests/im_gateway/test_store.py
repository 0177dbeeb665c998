"""Contract tests for the gateway's Store: the same tests against MemoryStore and RedisStore.

The Redis variant runs against a real redis-server process (the ``redis_url`` fixture).
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

from im_gateway.errors import GroupLimitError
from im_gateway.store import START, Accepted, Refused, Store, Submission, seq_key
from im_gateway.store_memory import MemoryStore
from im_gateway.store_redis import RedisStore, open_store
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


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
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
    """A private message is stored for `to` and the sender, with increasing seqs per inbox."""
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
        assert sorted(seqs[user], key=seq_key) == seqs[user]
        assert len(set(seqs[user])) == 3
        inbox = await store.read_inbox(user, START, 10)
        assert [e.message for e in inbox] == messages
        assert [e.seq for e in inbox] == seqs[user]


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
    assert len(await store.read_inbox(ALICE, START, 10)) == 1


async def test_content_and_big_ids_round_trip(store: Store) -> None:
    """Unicode, quotes, NULs, long text and uint64 ids come back from the inbox unchanged."""
    big = UserId(2**64 - 1)
    text = 'h\u00e9llo "w\u00f6rld" \\ \x00 \U0001f600 \n' + "x" * 70_000
    m = Message(MessageId("id \u00e9 1"), big, 2**64 - 2, MESSAGE_PRIVATE, 2**31 - 1, 1, text)
    a = accepted((await store.submit([sub("\u00e9 c1", m)]))[0])
    assert {r.user_id for r in a.recipients} == {big, 2**64 - 2}
    [entry] = await store.read_inbox(big, START, 10)
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
    assert results[1].code == "bad_request"
    assert not accepted(results[0]).duplicate
    assert not accepted(results[2]).duplicate
    assert len(await store.read_inbox(BOB, START, 10)) == 2


async def test_empty_batch(store: Store) -> None:
    """An empty batch is an empty answer."""
    assert await store.submit([]) == []


# -- dedupe -------------------------------------------------------------------------------


async def test_duplicate_client_id_returns_first_message_and_stores_nothing(store: Store) -> None:
    """Resending a client id gets the first message id and time back and stores nothing."""
    first = msg(ALICE, BOB, time=1000)
    a = accepted((await store.submit([sub("c1", first)]))[0])
    again = msg(ALICE, BOB, time=2000, content="again")
    d = accepted((await store.submit([sub("c1", again)]))[0])
    assert d.duplicate
    assert (d.message.id, d.message.time) == (first.id, 1000)
    assert d.recipients == ()
    assert dict(d.presence) == {}
    assert not a.duplicate
    assert [e.message for e in await store.read_inbox(BOB, START, 10)] == [first]
    assert len(await store.read_inbox(ALICE, START, 10)) == 1


async def test_duplicate_within_one_batch(store: Store) -> None:
    """Two submissions with one client id in a batch: the second is the duplicate."""
    first, second = msg(ALICE, BOB), msg(ALICE, BOB)
    results = await store.submit([sub("c1", first), sub("c1", second)])
    assert not accepted(results[0]).duplicate
    assert accepted(results[1]).duplicate
    assert accepted(results[1]).message.id == first.id
    assert len(await store.read_inbox(BOB, START, 10)) == 1


async def test_client_ids_are_per_sender(store: Store) -> None:
    """The same client id from two different users is two messages."""
    results = await store.submit([sub("c1", msg(ALICE, CAROL)), sub("c1", msg(BOB, CAROL))])
    assert not any(accepted(r).duplicate for r in results)
    assert len(await store.read_inbox(CAROL, START, 10)) == 2


async def test_empty_client_id_is_never_a_duplicate(store: Store) -> None:
    """Without a client id there is nothing to dedupe on: every submission is stored."""
    results = await store.submit([sub("", msg(ALICE, BOB)), sub("", msg(ALICE, BOB))])
    assert not any(accepted(r).duplicate for r in results)
    assert len(await store.read_inbox(BOB, START, 10)) == 2


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
        assert [e.message for e in await store.read_inbox(user, START, 10)] == [m]
    assert await store.read_inbox(DAVE, START, 10) == []


async def test_non_member_is_refused_and_not_deduped(store: Store) -> None:
    """A non-member's group post is refused not_member, stores nothing, and burns no client id."""
    await store.join(7, ALICE)
    [result] = await store.submit([sub("g1", msg(BOB, 7, type=MESSAGE_GROUP))])
    assert isinstance(result, Refused)
    assert (result.client_id, result.code) == ("g1", "not_member")
    assert await store.read_inbox(ALICE, START, 10) == []
    await store.join(7, BOB)
    again = accepted((await store.submit([sub("g1", msg(BOB, 7, type=MESSAGE_GROUP))]))[0])
    assert not again.duplicate
    assert len(await store.read_inbox(ALICE, START, 10)) == 1


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


async def test_join_refuses_beyond_groups_per_user(backend: Backend) -> None:
    """A user in max_groups_per_user groups cannot join another (GroupLimitError naming the
    flag) until leaving one; rejoining a group it is in still succeeds."""
    store = backend.make(max_groups_per_user=2)
    await store.join(1, ALICE)
    await store.join(2, ALICE)
    await store.join(2, ALICE)  # already in it: no change, no refusal
    with pytest.raises(GroupLimitError, match="max-groups-per-user"):
        await store.join(3, ALICE)
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
    with pytest.raises(GroupLimitError, match="group 7 is full"):
        await store.join(7, CAROL)
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
    assert sum(r is None for r in results) == 5
    assert all(r is None or isinstance(r, GroupLimitError) for r in results)
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


async def test_read_inbox_after_a_position_with_limit(store: Store) -> None:
    """read_inbox returns entries strictly after a position, oldest first, up to limit."""
    messages = [msg(ALICE, BOB, content=str(i)) for i in range(5)]
    await store.submit([sub(f"c{i}", m) for i, m in enumerate(messages)])
    everything = await store.read_inbox(BOB, START, 100)
    assert [e.message for e in everything] == messages
    seqs = [e.seq for e in everything]
    assert [e.seq for e in await store.read_inbox(BOB, START, 2)] == seqs[:2]
    assert [e.seq for e in await store.read_inbox(BOB, "", 2)] == seqs[:2]
    assert [e.seq for e in await store.read_inbox(BOB, seqs[1], 100)] == seqs[2:]
    assert [e.seq for e in await store.read_inbox(BOB, seqs[1], 2)] == seqs[2:4]
    assert await store.read_inbox(BOB, seqs[-1], 100) == []
    assert await store.read_inbox(BOB, seqs[0], 0) == []
    assert await store.read_inbox(CAROL, START, 100) == []
    ms = seq_key(seqs[0])[0]
    assert [e.seq for e in await store.read_inbox(BOB, str(ms - 1), 100)] == seqs
    with pytest.raises(ValueError, match="bad inbox position"):
        await store.read_inbox(BOB, "nope", 10)


async def test_concurrent_acks_share_one_redis_round_trip(redis_url: str) -> None:
    """Acks of many users asked for at once are written by one script call, each forward only."""
    async with RedisStore(redis_url) as store:
        await store.ack(ALICE, "9-0")
        stats: Any = await store.client.info("commandstats")
        before = stats.get("cmdstat_evalsha", {}).get("calls", 0)
        users = [UserId(100 + i) for i in range(20)]
        await asyncio.gather(
            *(store.ack(u, f"{i + 1}-0") for i, u in enumerate(users)),
            store.ack(ALICE, "5-0"),
            store.ack(ALICE, "10-1"),
            store.ack(ALICE, "10-0"),
        )
        stats = await store.client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] - before == 1
        assert [await store.acked(u) for u in users] == [f"{i + 1}-0" for i in range(20)]
        assert await store.acked(ALICE) == "10-1"


async def test_ack_only_moves_forward(store: Store) -> None:
    """The acknowledged position starts at START and never moves back."""
    assert await store.acked(ALICE) == START
    await store.ack(ALICE, START)
    assert await store.acked(ALICE) == START
    await store.ack(ALICE, "5-1")
    assert await store.acked(ALICE) == "5-1"
    await store.ack(ALICE, "5-0")
    await store.ack(ALICE, "4-9")
    assert await store.acked(ALICE) == "5-1"
    await store.ack(ALICE, "5-2")
    await store.ack(ALICE, "6")
    assert await store.acked(ALICE) == "6-0"
    assert await store.acked(BOB) == START
    with pytest.raises(ValueError, match="bad inbox position"):
        await store.ack(ALICE, "x-1")
    assert await store.acked(ALICE) == "6-0"


async def test_inbox_is_trimmed_by_length(backend: Backend) -> None:
    """An inbox keeps its newest entries, about inbox_max_len of them (Redis: whole nodes)."""
    store = backend.make(inbox_max_len=10)
    messages = [msg(ALICE, BOB, content=str(i)) for i in range(300)]
    for start in range(0, 300, 50):
        await store.submit(
            [sub(f"c{start + i}", m) for i, m in enumerate(messages[start : start + 50])]
        )
    kept = [e.message for e in await store.read_inbox(BOB, START, 1000)]
    slack = 0 if backend.kind == "memory" else 100  # Redis stream-node-max-entries
    assert 10 <= len(kept) <= 10 + slack
    assert kept == messages[-len(kept) :]


async def test_inbox_is_trimmed_by_age_and_expires() -> None:
    """Memory store: entries older than inbox_max_age go, and an idle inbox expires."""
    clock = FakeClock()
    store = MemoryStore(inbox_max_age=100, clock=clock)
    old = msg(ALICE, BOB)
    await store.submit([sub("c1", old)])
    clock.advance(60)
    new = msg(ALICE, BOB)
    await store.submit([sub("c2", new)])
    await store.ack(BOB, "1-0")
    clock.advance(60)
    await store.submit([sub("c3", msg(ALICE, CAROL))])
    assert [e.message for e in await store.read_inbox(BOB, START, 10)] == [old, new]
    await store.submit([sub("c4", msg(CAROL, BOB))])
    assert (await store.read_inbox(BOB, START, 10))[0].message.id == new.id
    clock.advance(101)
    assert await store.read_inbox(BOB, START, 10) == []
    assert await store.acked(BOB) == START


async def test_seqs_increase_even_when_the_clock_stands_still() -> None:
    """Memory store: seqs in one millisecond count up in the second part, like Redis."""
    store = MemoryStore(clock=FakeClock())
    results = await store.submit([sub(f"c{i}", msg(ALICE, BOB)) for i in range(3)])
    seqs = [accepted(r).recipients[0].seq for r in results]
    assert [s.split("-")[1] for s in seqs] == ["0", "1", "2"]


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
    with pytest.raises(RuntimeError, match="closed"):
        await store.ping()
    with pytest.raises(RuntimeError, match="closed"):
        await store.submit([sub("c", msg(ALICE, BOB))])
    with pytest.raises(RuntimeError, match="closed"):
        await store.lookup([ALICE])


def test_bad_options_are_refused() -> None:
    """Non-positive limits and TTLs are rejected at construction."""
    with pytest.raises(ValueError, match="positive"):
        MemoryStore(presence_ttl=0)
    with pytest.raises(ValueError, match="positive"):
        RedisStore("redis://127.0.0.1:1/0", inbox_max_len=0)


# -- open_store ---------------------------------------------------------------------------


async def test_open_store_by_url(redis_url: str) -> None:
    """open_store picks the implementation from the URL scheme and passes options on."""
    memory = await open_store("memory://", presence_ttl=5)
    assert isinstance(memory, MemoryStore)
    assert memory.presence_ttl == 5
    redis_store = await open_store(redis_url, prefix="x:", inbox_max_len=7)
    try:
        assert isinstance(redis_store, RedisStore)
        assert (redis_store.prefix, redis_store.inbox_max_len) == ("x:", 7)
    finally:
        await redis_store.close()
    with pytest.raises(ValueError, match="memory://"):
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
    """Every key is under the prefix, and every key but group membership (bounded by
    join) has a TTL."""
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
        await store.ack(BOB, "1-1")
        await store.detach(ALICE, GW1)
    keys = sorted([k.decode() async for k in redis_client.scan_iter(match="*")])
    ours = [k for k in keys if k != "outside"]
    assert all(k.startswith("t:") for k in ours), ours
    kinds = {k.split(":")[1] for k in ours}
    assert kinds == {"group", "memberships", "presence", "inbox", "acked", "dedupe"}
    for key in ours:
        ttl = await redis_client.pttl(key)
        if key.startswith(("t:group:", "t:memberships:")):  # bounded instead
            assert ttl == -1, key
        else:
            assert ttl > 0, key


async def test_redis_submit_is_one_round_trip_per_batch(
    redis_url: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 200 submissions (private and group) costs one EVALSHA, not one per message."""
    async with RedisStore(redis_url) as store:
        for user in range(10):
            await store.join(7, UserId(user))
            await store.attach(UserId(user), GW1)
        batch = [
            sub(f"c{i}", msg(i % 10, 7, type=MESSAGE_GROUP) if i % 2 else msg(i % 10, 100 + i))
            for i in range(200)
        ]
        await store.submit([sub("warm", msg(ALICE, BOB))])  # loads the script
        calls: list[object] = []
        real: Any = store.client.execute_command

        async def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[0])
            return await real(*args, **kwargs)

        monkeypatch.setattr(store.client, "execute_command", counting)
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
    """Redis: once older than inbox_max_age, a whole stream node of entries is trimmed."""
    async with RedisStore(redis_url, inbox_max_age=1) as store:
        old = [msg(ALICE, BOB) for _ in range(150)]
        await store.submit([sub(f"o{i}", m) for i, m in enumerate(old)])

        async def oldest_trimmed() -> bool:
            await store.submit([sub("", msg(CAROL, BOB))])
            return (await store.read_inbox(BOB, START, 1))[0].message.id != old[0].id

        await wait_until(oldest_trimmed, timeout=20, what="the oldest entries to be trimmed")
        inbox = await store.read_inbox(BOB, START, 1000)
        assert inbox[-1].message.sender == CAROL
        kept = [e.message for e in inbox if e.message.sender == ALICE]
        assert len(kept) < len(old)
        assert kept == old[len(old) - len(kept) :]


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
        await store.ack(ALICE, "7-1")
        assert await store.acked(ALICE) == "7-1"


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
        await text_store.ack(ALICE, "3-4")
        m = msg(ALICE, BOB)
        await text_store.submit([sub("c", m)])
        assert [e.message for e in await text_store.read_inbox(BOB, START, 5)] == [m]
        assert await text_store.lookup([ALICE]) == {ALICE: (GW1,)}
        assert await text_store.acked(ALICE) == "3-4"
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
        assert len(await one.read_inbox(ALICE, START, 10)) == 1
        assert Recipient(ALICE, (await one.read_inbox(ALICE, START, 1))[0].seq) in a.recipients


# -- properties ---------------------------------------------------------------------------

positions = st.tuples(st.integers(0, 2**48), st.integers(0, 2**32))


@given(positions, positions)
def test_seq_key_orders_like_stream_ids(a: tuple[int, int], b: tuple[int, int]) -> None:
    """seq_key orders "<ms>-<n>" positions exactly as Redis orders stream ids."""
    sa, sb = f"{a[0]}-{a[1]}", f"{b[0]}-{b[1]}"
    assert (seq_key(sa) < seq_key(sb)) == (a < b)
    assert seq_key(sa) == a
    assert seq_key(str(a[0])) == (a[0], 0)


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
        inbox = await store.read_inbox(UserId(9), START, 100)
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
)


def _outcome(result: Accepted | Refused) -> tuple[object, ...]:
    if isinstance(result, Refused):
        return ("refused", result.client_id, result.code)
    users = sorted(r.user_id for r in result.recipients)
    return ("accepted", result.client_id, result.duplicate, result.message.id, tuple(users))


@settings(max_examples=25, deadline=None)
@given(st.lists(_ops, max_size=10))
def test_memory_and_redis_stores_agree(redis_server: Any, ops: list[tuple[Any, ...]]) -> None:
    """On random joins, leaves and batches, MemoryStore and RedisStore give the same answers."""

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
                else:
                    for store in (real, model):
                        await getattr(store, op[0])(op[1], UserId(op[2]))
            for user in (1, 2, 3):
                got_inbox = [e.message for e in await real.read_inbox(UserId(user), START, 100)]
                model_inbox = await model.read_inbox(UserId(user), START, 100)
                assert got_inbox == [e.message for e in model_inbox]

    asyncio.run(run())
