"""Contract tests for large groups (stored once, in the group's own stream), on the
memory store, one Redis and a Redis Cluster alike (the fixtures of test_contract)."""

from __future__ import annotations

import pytest

from im_gateway.store import Accepted, GroupStream, Joined, Refusal, Refused, Store, Submission
from tests.im_gateway.store.test_contract import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    GW1,
    GW2,
    Backend,
    accepted,
    backend,  # noqa: F401 (a fixture)
    entries,
    msg,
    sub,
)
from transmit_hub.types import MESSAGE_GROUP, UserId

G = 70
EVE = UserId(5)


def post(sender: int, content: str = "hi", group: int = G):  # type: ignore[no-untyped-def]
    return msg(sender, group, type=MESSAGE_GROUP, content=content)


async def stream_of(store: Store, user: UserId, group: int = G) -> GroupStream | None:
    found = [
        s for s in await store.streams(user, 100) if isinstance(s, GroupStream) and s.group == group
    ]
    return found[0] if found else None


@pytest.fixture
def small(backend: Backend) -> Store:  # noqa: F811
    """Groups above 2 members are stored once."""
    return backend.make(large_group=2)


async def test_a_group_above_the_bound_is_stored_once(small: Store) -> None:
    """Past the bound, a post is one append to the group's stream: no inbox gets it, its
    seq is g<group>:<position>, and the positions count 1, 2, 3."""
    for user in (ALICE, BOB):
        await small.join(G, user)
    assert not await small.is_large(G)
    await small.join(G, CAROL)
    assert await small.is_large(G)
    results = await small.submit([sub(f"c{i}", post(ALICE, f"n{i}")) for i in range(3)])
    posts = [accepted(r).post for r in results]
    assert [(p.group, p.position, p.seq) for p in posts if p] == [
        (G, 1, f"g{G}:1"),
        (G, 2, f"g{G}:2"),
        (G, 3, f"g{G}:3"),
    ]
    assert all(accepted(r).recipients == () for r in results)
    for user in (ALICE, BOB, CAROL):
        assert await entries(small, user) == []
    page = await small.read_group(G, 1, 10)
    assert [(e.position, e.seq, e.message.content) for e in page.entries] == [
        (2, f"g{G}:2", "n1"),
        (3, f"g{G}:3", "n2"),
    ]
    assert page.last == 3


async def test_a_group_that_became_large_is_to_regroup_until_told_so(small: Store) -> None:
    """Becoming large (by a join or a bulk add) marks the group to regroup, until a
    gateway says its members follow; falling back to the bound forgets the mark."""
    for user in (ALICE, BOB):
        await small.join(G, user)
    assert not await small.to_regroup(G)
    await small.join(G, CAROL)
    assert await small.to_regroup(G)
    await small.join(G, DAVE)  # large already: still to regroup, nobody said otherwise
    assert await small.to_regroup(G)
    await small.regrouped(G)
    assert not await small.to_regroup(G)
    await small.leave(G, DAVE)
    await small.leave(G, CAROL)  # two members: in each inbox again
    assert not await small.is_large(G)
    assert await small.add_members(G, [CAROL]) == [Joined.ADDED]
    assert await small.to_regroup(G)
    await small.remove_members(G, [CAROL])
    assert not await small.to_regroup(G)


async def test_a_non_member_is_refused_in_a_large_group(small: Store) -> None:
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    [result] = await small.submit([sub("x", post(DAVE))])
    assert isinstance(result, Refused)
    assert result.why == Refusal.NOT_MEMBER
    assert (await small.read_group(G, 0, 10)).entries == []


async def test_a_post_names_the_gateways_watching_the_group(small: Store) -> None:
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    await small.watch(GW1, [G])
    await small.watch(GW2, [G, G + 1])
    a = accepted((await small.submit([sub("c", post(ALICE))]))[0])
    assert a.post is not None
    assert sorted(a.post.gateways) == [GW1, GW2]
    await small.unwatch(GW1, [G])
    b = accepted((await small.submit([sub("d", post(ALICE))]))[0])
    assert b.post is not None
    assert b.post.gateways == (GW2,)


async def test_a_duplicate_post_answers_the_first_position(small: Store) -> None:
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    first = accepted((await small.submit([sub("c", post(ALICE, "one"))]))[0])
    again = accepted((await small.submit([sub("c", post(ALICE, "other text"))]))[0])
    assert again.duplicate
    assert again.message == first.message
    assert again.post is not None
    assert first.post is not None
    assert again.post.position == first.post.position
    assert len((await small.read_group(G, 0, 10)).entries) == 1


async def test_members_start_where_they_joined_and_leavers_stop(small: Store) -> None:
    """A member reads what came after their join (never before); a leaver has no stream."""
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    await small.submit([sub("1", post(ALICE, "before dave"))])
    await small.join(G, DAVE)
    await small.submit([sub("2", post(ALICE, "after dave"))])
    dave = await stream_of(small, DAVE)
    assert dave is not None
    assert dave.position == 1
    assert [e.message.content for e in dave.page.entries] == ["after dave"]
    bob = await stream_of(small, BOB)
    assert bob is not None
    assert bob.position == 0
    assert [e.message.content for e in bob.page.entries] == ["before dave", "after dave"]
    assert bob.page.last == 2
    await small.leave(G, BOB)
    assert await stream_of(small, BOB) is None
    assert await stream_of(small, EVE) is None


async def test_group_acks_move_forward_within_the_stream_for_members(small: Store) -> None:
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    await small.submit([sub(f"c{i}", post(ALICE)) for i in range(3)])
    await small.ack_group(BOB, G, 2)
    await small.ack_group(BOB, G, 1)  # never back
    bob = await stream_of(small, BOB)
    assert bob is not None
    assert bob.position == 2
    assert [e.position for e in bob.page.entries] == [3]
    await small.ack_group(BOB, G, 99)  # never past the stream's end
    bob = await stream_of(small, BOB)
    assert bob is not None
    assert bob.position == 3
    await small.ack_group(DAVE, G, 3)  # not a member: nothing kept
    await small.join(G, DAVE)
    dave = await stream_of(small, DAVE)
    assert dave is not None
    assert dave.position == 3


async def test_crossing_the_bound_both_ways_loses_and_repeats_nothing(small: Store) -> None:
    """Small, then large, then small again: each member has every message exactly once,
    in their inbox or in the stream, and the stream's remainder is still read."""
    await small.join(G, ALICE)
    await small.join(G, BOB)
    await small.submit([sub("1", post(ALICE, "small 1"))])
    await small.join(G, CAROL)  # large now
    await small.submit([sub("2", post(ALICE, "large 2"))])
    await small.leave(G, CAROL)  # small again
    assert not await small.is_large(G)
    await small.submit([sub("3", post(BOB, "small 3"))])
    for user in (ALICE, BOB):
        inbox = [e.message.content for e in await entries(small, user)]
        s = await stream_of(small, user)
        assert s is not None  # the stream still holds a message for them
        seen = inbox + [e.message.content for e in s.page.entries]
        assert sorted(seen) == ["large 2", "small 1", "small 3"], (user, seen)
    carol = [e.message.content for e in await entries(small, CAROL)]
    assert carol == []  # joined after "small 1", left before "small 3"; "large 2" went


async def test_a_server_post_from_a_non_member_to_a_large_group(small: Store) -> None:
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    m = post(0, "system")
    [result] = await small.submit([type(sub("", m))("", m, check_member=False)])
    assert isinstance(result, Accepted)
    assert result.post is not None
    assert [e.message.content for e in (await small.read_group(G, 0, 5)).entries] == ["system"]


async def test_a_server_post_as_a_non_member_copies_it_to_the_senders_inbox(
    small: Store,
) -> None:
    """As in a small group, the server API posting as a user who is not a member puts a
    copy in that user's inbox (their devices get it, with their live gateways); a member
    or the system (0) gets none. A resend answers the same stream position and the same
    copy, with the gateways live now, so it can be pushed again wherever the first was."""
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    await small.attach(DAVE, GW1)
    as_dave = post(DAVE, "from the backend")
    first = accepted((await small.submit([Submission("k1", as_dave, check_member=False)]))[0])
    assert first.post is not None
    assert first.post.position == 1
    assert [(r.user_id, r.seq) for r in first.recipients] == [(DAVE, "1")]
    assert first.presence == {DAVE: (GW1,)}
    assert [e.message.content for e in await entries(small, DAVE)] == ["from the backend"]
    await small.attach(DAVE, GW2)
    await small.watch(GW2, [G])
    again = accepted((await small.submit([Submission("k1", as_dave, check_member=False)]))[0])
    assert again.duplicate
    assert again.message == first.message
    assert again.post is not None
    assert (again.post.position, again.post.gateways) == (1, (GW2,))
    assert [(r.user_id, r.seq) for r in again.recipients] == [(DAVE, "1")]
    assert sorted(again.presence[DAVE]) == [GW1, GW2]
    assert len(await entries(small, DAVE)) == 1
    as_alice = post(ALICE, "a member")
    mine = accepted((await small.submit([Submission("k2", as_alice, check_member=False)]))[0])
    assert mine.post is not None
    assert mine.recipients == ()
    assert await entries(small, ALICE) == []


async def test_add_and_remove_many_members_in_one_call(backend: Backend) -> None:  # noqa: F811
    """Bulk adds keep both bounds per user and say what happened to each; the group
    changes form once; bulk removes drop leavers' positions."""
    store = backend.make(large_group=3, max_group_members=5, max_groups_per_user=2)
    await store.join(1, EVE)
    await store.join(2, EVE)  # EVE is in 2 groups: full
    users = [ALICE, BOB, ALICE, EVE, CAROL, DAVE, UserId(6), UserId(7)]
    got = await store.add_members(G, users)
    assert got == [
        Joined.ADDED,
        Joined.ADDED,
        Joined.MEMBER,
        Joined.USER_FULL,
        Joined.ADDED,
        Joined.ADDED,
        Joined.ADDED,
        Joined.GROUP_FULL,
    ]
    assert await store.members(G) == [ALICE, BOB, CAROL, DAVE, UserId(6)]
    assert await store.is_large(G)
    await store.join(3, UserId(7))  # not left half-added in the full group: 2 free places
    await store.join(4, UserId(7))
    await store.submit([sub("x", post(ALICE))])
    assert await store.remove_members(G, [BOB, EVE, CAROL]) == [True, False, True]
    assert not await store.is_large(G)
    assert await stream_of(store, BOB) is None
    dave = await stream_of(store, DAVE)
    assert dave is not None
    assert [e.message.content for e in dave.page.entries] == ["hi"]


# -- membership at a post's position ------------------------------------------------------


async def test_memberships_keep_where_each_membership_began_and_ended(small: Store) -> None:
    """A member who leaves and rejoins: their current membership begins at the rejoin's
    position and the ended one keeps its join and leave positions, so a post stored while
    they were out is not theirs and one stored just before they left is."""
    for user in (ALICE, BOB, CAROL):
        await small.join(G, user)
    positions = {}
    await small.submit([sub("1", post(ALICE, "before dave"))])
    await small.join(G, DAVE)
    await small.submit([sub("2", post(ALICE, "while dave is in"))])
    assert await small.leave(G, DAVE)
    await small.submit([sub("3", post(ALICE, "while dave is out"))])
    await small.join(G, DAVE)
    await small.submit([sub("4", post(ALICE, "after dave is back"))])
    for e in (await small.read_group(G, 0, 10)).entries:
        positions[e.message.content] = e.position
    [dave, alice, eve] = await small.memberships([(G, DAVE), (G, ALICE), (G, EVE)])
    assert (dave.joined, dave.past) == (3, (1, 2))
    assert dave.member
    assert [dave.covers(positions[c]) for c in positions] == [False, True, False, True]
    assert (alice.joined, alice.past) == (0, None)
    assert all(alice.covers(p) for p in positions.values())
    assert (eve.joined, eve.past, eve.member) == (None, None, False)
    assert not any(eve.covers(p) for p in positions.values())
    # Asked for the posts after a position only: the same answer for each of them.
    users = [DAVE, ALICE, EVE]
    exact = await small.memberships([(G, u) for u in users])
    for since in range(5):
        cheap = await small.memberships([(G, u) for u in users], since=since)
        for u, a, b in zip(users, exact, cheap, strict=True):
            assert a.member == b.member
            for p in range(since + 1, 6):
                assert a.covers(p) == b.covers(p), (u, since, p)
    assert await small.remove_members(G, [DAVE]) == [True]
    [gone] = await small.memberships([(G, DAVE)])
    assert (gone.joined, gone.past) == (None, (3, 4))
    assert [gone.covers(positions[c]) for c in positions] == [False, False, False, True]


async def test_memberships_of_many_groups_and_users_in_one_call(backend: Backend) -> None:  # noqa: F811
    """Pairs over several groups (several slots on a cluster) answer in the order asked;
    a member of a group that was never large has been one from the start."""
    store = backend.make(large_group=1)
    groups = [G, G + 1, G + 2, G + 3, 900, 901]
    for g in groups:
        await store.join(g, ALICE)  # one member: stored in inboxes
    for g in groups[:3]:
        await store.join(g, BOB)  # large now
        await store.submit([sub(f"p{g}", post(ALICE, group=g))])
        await store.leave(g, BOB)
    pairs = [(g, u) for g in groups for u in (ALICE, BOB)]
    found = await store.memberships(pairs)
    assert [(m.joined, m.past) for m in found] == [
        *[(0, None), (None, (0, 1))] * 3,
        *[(0, None), (None, None)] * 3,
    ]
    assert await store.memberships([]) == []


async def test_leavers_kept_are_bounded_by_the_group_size_bound(backend: Backend) -> None:  # noqa: F811
    """At most ``max_group_members`` ended memberships are kept per group: the latest;
    the oldest leavers are forgotten first (they then count as never members)."""
    store = backend.make(large_group=1, max_group_members=3)
    await store.add_members(G, [UserId(10), UserId(11)])
    transient = [UserId(u) for u in range(12, 17)]
    for i, user in enumerate(transient):
        await store.join(G, user)
        await store.submit([sub(f"p{i}", post(10, group=G))])
        assert await store.leave(G, user)
    found = await store.memberships([(G, u) for u in transient])
    assert [m.past for m in found] == [None, None, (2, 3), (3, 4), (4, 5)]


async def test_memberships_of_more_users_than_one_read_takes(backend: Backend) -> None:  # noqa: F811
    """1,500 users of one group (two bulk reads), exact and from a position on."""
    store = backend.make(large_group=1)
    users = [UserId(1000 + i) for i in range(1500)]
    await store.add_members(G, users[::2])
    await store.submit([sub("p1", post(1000)), sub("p2", post(1000))])
    for since in (0, 1):
        found = await store.memberships([(G, u) for u in users], since=since)
        assert [m.member for m in found] == [i % 2 == 0 for i in range(1500)]
        assert all(m.covers(2) == m.member for m in found)
