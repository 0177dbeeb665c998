"""After a time attached to no hub, the catch-up also makes every local connection read
its user's large groups again: a join's notice sent meanwhile was dropped; and so does the
later sweep after any lost link: a notice the hub wrote into that stream was lost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from im_gateway.catch_up import CatchUp, Reader
from im_gateway.store import MemoryStore
from tests.helpers import wait_until
from transmit_hub.types import UserId


class Connection:
    def __init__(self) -> None:
        self.regroups = 0

    def catch_up(self, end: int | None = None) -> None:
        pass

    def regroup(self, left: int | None = None) -> None:
        self.regroups += 1


async def test_only_a_link_up_after_no_link_at_all_regroups_every_connection() -> None:
    a, b, c = Connection(), Connection(), Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a, b], UserId(2): [c]}
    catch_up = CatchUp(sessions, store=MemoryStore(), resync_after=60.0)
    try:
        catch_up.linked()  # the first link: nothing was missed
        catch_up.lost()  # one hub of several: its later sweep regroups (not within 60 s)
        catch_up.linked()
        assert [a.regroups, b.regroups, c.regroups] == [0, 0, 0]
        catch_up.lost(everywhere=True)
        catch_up.lost()
        catch_up.linked()
        assert [a.regroups, b.regroups, c.regroups] == [1, 1, 1]
        catch_up.linked()  # once per outage
        assert [a.regroups, b.regroups, c.regroups] == [1, 1, 1]
    finally:
        await catch_up.close()


async def test_the_later_sweep_after_a_lost_link_regroups_every_connection_once() -> None:
    """A link lost while another hub still serves (a one-sided cut): the notice of a join
    the hub wrote into it is gone, so the later sweep regroups every connection; losses
    close together share one (old code: ``assert [0, 0] == [1, 1]``)."""
    a, b = Connection(), Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a], UserId(2): [b]}
    catch_up = CatchUp(sessions, store=MemoryStore(), resync_after=0.2)
    try:
        catch_up.lost()
        catch_up.lost()
        assert [a.regroups, b.regroups] == [0, 0]  # not the immediate sweep
        await wait_until(lambda: not catch_up.scheduled, what="the later sweep")
        assert [a.regroups, b.regroups] == [1, 1]
        catch_up.linked()
        assert [a.regroups, b.regroups] == [1, 1]
    finally:
        await catch_up.close()


async def test_a_link_up_after_no_link_at_all_regroups_once_not_again_at_the_later_sweep() -> None:
    """After a time with no link, the link-up's regroup reads every user's groups as they
    are then, which covers whatever the lost streams swallowed: the later sweep does not
    read them all again (old code: ``[2] == [1]``)."""
    a = Connection()
    sessions: Mapping[UserId, Sequence[Reader]] = {UserId(1): [a]}
    catch_up = CatchUp(sessions, store=MemoryStore(), resync_after=0.2)
    try:
        catch_up.lost(everywhere=True)
        catch_up.linked()
        assert a.regroups == 1
        await wait_until(lambda: not catch_up.scheduled, what="the later sweep")
        assert [a.regroups] == [1]
        catch_up.lost()  # a loss after the link-up: its later sweep regroups
        await wait_until(lambda: not catch_up.scheduled, what="the next later sweep")
        assert [a.regroups] == [2]
    finally:
        await catch_up.close()
