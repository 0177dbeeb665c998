"""Large-group following: which local connections follow which large groups here, and
the store's marks of which gateways follow a group.

Which gateways follow a group is kept in the store (:meth:`~im_gateway.store.Store.watch`,
written when a gateway's first follower of a group arrives and refreshed every third of
the presence TTL, all groups in one call per slot), so a post costs one look-up in the
group's slot whatever the group's size. A mark the store failed to write is written again
by the next follow of its group (the failed replay's retry, a second later), not left to
the refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Generic, TypeVar

from transmit_hub.types import GatewayId

from .store import Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

C = TypeVar("C")


class Following(Generic[C]):
    """The fan-out's followers of large groups: ``groups`` maps a group to its local
    followers; the store names this gateway for each group it follows."""

    def __init__(self, gateway_id: GatewayId, *, store: Store, watch_ttl: float = 30.0) -> None:
        """``watch_ttl``: the store's TTL of a gateway's mark on a group it follows (the
        presence TTL); refreshed every third of it."""
        self.gateway_id = gateway_id
        self._store = store
        self.groups: dict[int, list[C]] = {}
        """Large group -> the local connections that follow it."""
        self._follows: dict[C, set[int]] = {}
        self._watch_ttl = watch_ttl
        self._watcher: asyncio.Task[None] | None = None
        self._unwatching: set[asyncio.Task[None]] = set()
        self._unmarked: set[int] = set()
        """Followed groups whose mark the store failed to write: the next follow of any
        of them writes it again (the refresh would, but only a third of the TTL later)."""
        self._watch_failed = Throttled(
            logger, "marking followed groups in the store failed %d times"
        )

    async def follow(self, connection: C, groups: Collection[int]) -> None:
        """Live posts of these large groups go to ``connection`` from now on; returns
        once the store names this gateway for each of them."""
        mine = self._follows.setdefault(connection, set())
        new = []
        for group in groups:
            if group in self._unmarked:  # followed here already (so not new below)
                new.append(group)
            if group in mine:
                continue
            mine.add(group)
            followers = self.groups.get(group)
            if followers is None:
                followers = self.groups[group] = []
                new.append(group)
            followers.append(connection)
        if new:
            try:
                await self._store.watch(self.gateway_id, new)
            except BaseException:
                self._unmarked.update(g for g in new if g in self.groups)
                raise
            self._unmarked.difference_update(new)

    def unfollow(self, connection: C, groups: Collection[int]) -> None:
        """No more live posts of these groups to ``connection``."""
        mine = self._follows.get(connection)
        if mine is None:
            return
        unwatched = []
        for group in groups:
            if group not in mine:
                continue
            mine.discard(group)
            followers = self.groups.get(group)
            if followers is not None:
                with contextlib.suppress(ValueError):
                    followers.remove(connection)
                if not followers:
                    del self.groups[group]
                    self._unmarked.discard(group)
                    unwatched.append(group)
        if not mine:
            del self._follows[connection]
        if unwatched:
            task = asyncio.get_running_loop().create_task(self._unwatch(unwatched))
            self._unwatching.add(task)
            task.add_done_callback(self._unwatching.discard)

    async def _unwatch(self, groups: list[int]) -> None:
        try:
            await self._store.unwatch(self.gateway_id, [g for g in groups if g not in self.groups])
        except Exception as exc:  # the mark expires by itself
            self._watch_failed.hit(exc=exc)

    async def _watch_loop(self) -> None:
        """Refresh this gateway's marks on the groups it follows, all in one call per slot."""
        interval = max(self._watch_ttl / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            if not self.groups:
                continue
            marked = list(self.groups)
            try:
                await self._store.watch(self.gateway_id, marked)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._watch_failed.hit(exc=exc)
            else:
                self._unmarked.difference_update(marked)

    def followers(self, group: int) -> list[C]:
        """The local connections that follow large group ``group``."""
        return list(self.groups.get(group, ()))

    def discard(self, connection: C) -> None:
        """``connection`` is gone: it follows nothing from now on."""
        followed = self._follows.get(connection)
        if followed:
            self.unfollow(connection, list(followed))

    def start(self) -> None:
        """Start refreshing the store's marks."""
        self._watcher = asyncio.create_task(self._watch_loop(), name="fanout-group-marks")

    async def close(self) -> None:
        """Stop refreshing and unmarking; idempotent (the marks expire by themselves)."""
        await cancel_and_wait(self._watcher, *self._unwatching)
        self._watcher = None
