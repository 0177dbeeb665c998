"""After a time attached to no hub, the catch-up also makes every local connection read
its user's large groups again: a join's notice sent meanwhile was dropped; and so does the
later sweep after any lost link: a notice the hub wrote into that stream was lost. Only
connections with something to read do: their user is in a group, or they follow one (the
store says which users are in one, 1,000 at a time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from im_gateway.catch_up import SWEEP_BATCH, CatchUp, Reader
from im_gateway.errors import StoreError
from im_gateway.store import GroupStream, MemoryStore, Unread
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeLink
from tests.im_gateway.wiring import connect, wire
from transmit_hub.types import GatewayId, UserId

GROUP = 7


class Connection:
    """A local connection that counts the regroups asked of it."""

    def __init__(self, *, follows_groups: bool = False) -> None:
        self.regroups = 0
        self.follows_groups = follows_groups

    def catch_up(self, end: int | None = None) -> None:
        pass

    def regroup(self, left: int | None = None) -> None:
        self.regroups += 1


async def in_a_group(*users: int) -> MemoryStore:
    """A store where these users are in group ``GROUP``."""
    store = MemoryStore()
    for user in users:
        await store.join(GROUP, UserId(user))
    return store


class CountingStore(MemoryStore):
    """Counts its calls of :meth:`in_groups`."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []

    async def in_groups(self, users: Sequence[UserId]) -> list[bool | None]:
        self.asked.append(len(users))
        return await super().in_groups(users)


class FailingStore(MemoryStore):
    """Cannot say who is in a group: raises (one Redis down), or answers unknown (a Redis
    Cluster node holding those users' keys is silent)."""

    def __init__(self, *, raises: bool) -> None:
        super().__init__()
        self.raises = raises

    async def in_groups(self, users: Sequence[UserId]) -> list[bool | None]:
        if self.raises:
            raise StoreError("Redis is down")
        return [None] * len(users)


async def test_only_a_link_up_after_no_link_at_all_regroups_every_connection() -> None:
    a, b, c = Connection(), Connection(), Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a, b], UserId(2): [c]}
    catch_up = CatchUp(sessions, store=await in_a_group(1, 2), resync_after=60.0)
    try:
        catch_up.linked()  # the first link: nothing was missed
        catch_up.lost()  # one hub of several: its later sweep regroups (not within 60 s)
        catch_up.linked()
        await catch_up.regrouped()
        assert [a.regroups, b.regroups, c.regroups] == [0, 0, 0]
        catch_up.lost(everywhere=True)
        catch_up.lost()
        catch_up.linked()
        await catch_up.regrouped()
        assert [a.regroups, b.regroups, c.regroups] == [1, 1, 1]
        catch_up.linked()  # once per outage
        await catch_up.regrouped()
        assert [a.regroups, b.regroups, c.regroups] == [1, 1, 1]
    finally:
        await catch_up.close()


async def test_the_later_sweep_after_a_lost_link_regroups_every_connection_once() -> None:
    """A link lost while another hub still serves (a one-sided cut): the notice of a join
    the hub wrote into it is gone, so the later sweep regroups every connection; losses
    close together share one (old code: ``assert [0, 0] == [1, 1]``)."""
    a, b = Connection(), Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a], UserId(2): [b]}
    catch_up = CatchUp(sessions, store=await in_a_group(1, 2), resync_after=0.2)
    try:
        catch_up.lost()
        catch_up.lost()
        assert [a.regroups, b.regroups] == [0, 0]  # not the immediate sweep
        await wait_until(lambda: not catch_up.scheduled, what="the later sweep")
        await catch_up.regrouped()
        assert [a.regroups, b.regroups] == [1, 1]
        catch_up.linked()
        await catch_up.regrouped()
        assert [a.regroups, b.regroups] == [1, 1]
    finally:
        await catch_up.close()


async def test_a_link_up_after_no_link_at_all_regroups_once_not_again_at_the_later_sweep() -> None:
    """After a time with no link, the link-up's regroup reads every user's groups as they
    are then, which covers whatever the lost streams swallowed: the later sweep does not
    read them all again (old code: ``[2] == [1]``)."""
    a = Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a]}
    catch_up = CatchUp(sessions, store=await in_a_group(1), resync_after=0.2)
    try:
        catch_up.lost(everywhere=True)
        catch_up.linked()
        await catch_up.regrouped()
        assert a.regroups == 1
        await wait_until(lambda: not catch_up.scheduled, what="the later sweep")
        await catch_up.regrouped()
        assert [a.regroups] == [1]
        catch_up.lost()  # a loss after the link-up: its later sweep regroups
        await wait_until(lambda: not catch_up.scheduled, what="the next later sweep")
        await catch_up.regrouped()
        assert [a.regroups] == [2]
    finally:
        await catch_up.close()


@pytest.mark.parametrize("everywhere", [False, True], ids=["later-sweep", "link-up"])
async def test_connections_of_users_in_no_group_that_follow_none_are_not_asked(
    everywhere: bool,
) -> None:
    """The later sweep after a lost link, and the link-up after no link at all, regroup
    the connections of users in a group (both of a user's), and those following a group
    whose user is in none now (a lost leave's notice); not those of a user in no group
    following none, which would read nothing (old code: ``assert 1 == 0``, every
    connection was asked)."""
    joined, joined_too = Connection(), Connection()
    left, left_too = Connection(follows_groups=True), Connection(follows_groups=True)
    idle, idle_too = Connection(), Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {
        UserId(1): [joined, joined_too],
        UserId(2): [left],
        UserId(3): [idle],
        UserId(4): [idle_too, left_too],
    }
    catch_up = CatchUp(sessions, store=await in_a_group(1), resync_after=0.2)
    try:
        catch_up.lost(everywhere=everywhere)
        if everywhere:
            catch_up.linked()
        asked = [joined, joined_too, left, left_too]
        # (One batch: its connections are all asked, or not, in one go.)
        await wait_until(lambda: all(c.regroups == 1 for c in asked), what="the regroups")
        assert idle.regroups == 0
        assert idle_too.regroups == 0
    finally:
        await catch_up.close()


@pytest.mark.parametrize("raises", [True, False], ids=["store-down", "unknown"])
async def test_a_store_that_cannot_say_who_is_in_a_group_regroups_every_connection(
    raises: bool,
) -> None:
    """When the store cannot say (it fails, or answers unknown for some users: a silent
    Redis Cluster node), those users' connections regroup as before."""
    a, b = Connection(), Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a], UserId(2): [b]}
    catch_up = CatchUp(sessions, store=FailingStore(raises=raises), resync_after=60.0)
    try:
        catch_up.lost(everywhere=True)
        catch_up.linked()
        await catch_up.regrouped()
        assert [a.regroups, b.regroups] == [1, 1]
    finally:
        await catch_up.close()


async def test_the_store_is_asked_for_sweep_batch_users_at_a_time() -> None:
    """One store call per ``SWEEP_BATCH`` users, not one per connection; of those users,
    only the one in a group regroups."""
    store = CountingStore()
    users = [UserId(u) for u in range(1, 2 * SWEEP_BATCH + 2)]
    await store.join(GROUP, users[-1])
    sessions = {u: [Connection()] for u in users}
    catch_up = CatchUp(sessions, store=store, resync_after=60.0)
    try:
        catch_up.lost(everywhere=True)
        catch_up.linked()
        await catch_up.regrouped()
        assert store.asked == [SWEEP_BATCH, SWEEP_BATCH, 1]
        assert [u for u, [c] in sessions.items() if c.regroups] == [users[-1]]
    finally:
        await catch_up.close()


class StreamsCountingStore(MemoryStore):
    """Counts the reads of a user's large groups (:meth:`streams`), by user."""

    def __init__(self) -> None:
        super().__init__(large_group=1)
        self.read_by: list[UserId] = []

    async def streams(self, user: UserId, limit: int) -> list[GroupStream | Unread]:
        self.read_by.append(user)
        return await super().streams(user, limit)


async def test_real_sessions_read_their_groups_only_when_they_may_have_missed_a_change() -> None:
    """Sessions as the gateway wires them, after a time with no link: the store changed
    meanwhile with no notice (d joined the large group, c left it); a (in it), c (still
    following it) and d read their groups, and d follows it now, c no more; b, in no
    group and following none, reads nothing (old code: b read its groups too)."""
    a, b, c, d = UserId(1), UserId(2), UserId(3), UserId(4)
    store = StreamsCountingStore()
    for user in (a, c):
        await store.join(GROUP, user)
    wired = wire(GatewayId("gw-1"), store, FakeLink())
    sessions = {user: (await connect(wired, store, user))[0] for user in (a, b, c, d)}
    try:
        assert [sessions[u].follows_groups for u in (a, b, c, d)] == [True, False, True, False]
        await store.join(GROUP, d)  # their notices were lost
        await store.leave(GROUP, c)
        store.read_by.clear()
        wired.fanout.catch_up.lost(everywhere=True)
        wired.fanout.catch_up.linked()
        await wired.fanout.catch_up.regrouped()
        await wait_until(lambda: not any(s.replaying for s in sessions.values()))
        assert sorted(store.read_by) == [a, c, d]
        assert [sessions[u].follows_groups for u in (a, b, c, d)] == [True, False, False, True]
    finally:
        for session in sessions.values():
            await session.close()
        await wired.close()
