"""After a time attached to no hub, the catch-up also makes every local connection read
its user's large groups again: a join's notice sent meanwhile was dropped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from im_gateway.catch_up import CatchUp, Reader
from im_gateway.store import MemoryStore
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
        catch_up.lost()  # one hub of several: the others carried the notices
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
