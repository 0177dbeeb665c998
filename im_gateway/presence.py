"""This gateway's presence in the store: which local users hold at least one socket.

The first socket of a user attaches it (``user -> this gateway``), the last one closing
detaches it; other gateways' entries for the same user are never touched. Changes are
written by one worker in order, batched (one ``refresh`` for every attach and one
``forget`` for every detach in a batch), so a user who reconnects quickly never ends up
detached by an older write. A refresher extends every local entry's TTL every
``ttl / 3`` seconds, so a crashed gateway's entries expire. Each of these store calls
is a round trip per ``--redis-keys-per-call`` users (256), one after the other: one
call over 18,000 users held Redis, and every other client, for 150 ms.

A watcher checks the gateway's beacon in the store every ``watch_interval`` seconds
(one small round trip): when the store has lost it (a Redis restarted without
persistence, or flushed), every local entry is re-asserted at once, so pushes to this
gateway's users resume within a second of Redis answering again instead of after the
next refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from transmit_hub.types import GatewayId, UserId

from .store import Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)
_write_failed = Throttled(logger, "presence updates failed %d times")
_refresh_failed = Throttled(logger, "presence refreshes failed %d times")
_watch_failed = Throttled(logger, "the store did not answer the presence watcher %d times")


class Presence:
    """Counts local sockets per user and keeps the store's presence entries in step."""

    def __init__(
        self,
        store: Store,
        gateway_id: GatewayId,
        *,
        ttl: float,
        watch_interval: float = 0.25,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """``on_lost`` is called when the store's epoch changes while the gateway runs: the
        store lost its data and inbox positions start again (sessions should rebase)."""
        self._watch_interval = watch_interval
        self._on_lost = on_lost
        self._epoch: str | None = None
        self._store = store
        self._gateway_id = gateway_id
        self._ttl = ttl
        self._counts: dict[UserId, int] = {}
        self._dirty: dict[UserId, None] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def users(self) -> list[UserId]:
        """The users holding at least one socket here."""
        return list(self._counts)

    async def start(self) -> None:
        """Set the beacon, start the writer, the refresher and the watcher."""
        if self._watch_interval > 0:
            self._epoch = (await self._store.beacon(self._gateway_id, self._ttl)).epoch
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="presence-writer"),
            asyncio.create_task(self._refresh_loop(), name="presence-refresher"),
        ]
        if self._watch_interval > 0:
            self._tasks.append(asyncio.create_task(self._watch_loop(), name="presence-watcher"))

    async def add(self, user: UserId) -> None:
        """A socket of ``user`` opened; returns once the store shows the user here."""
        count = self._counts.get(user, 0) + 1
        self._counts[user] = count
        if count > 1 or self._closed:
            return
        self._dirty[user] = None
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await waiter

    def remove(self, user: UserId) -> None:
        """A socket of ``user`` closed; the last one detaches the user (in the background)."""
        count = self._counts.get(user, 0) - 1
        if count > 0:
            self._counts[user] = count
            return
        self._counts.pop(user, None)
        if not self._closed:
            self._dirty[user] = None
            self._wake.set()

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            waiters, self._waiters = self._waiters, []
            try:
                await self._write(dirty)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _write_failed.hit(exc=exc)
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _write(self, users: Iterable[UserId]) -> None:
        attach = [u for u in users if u in self._counts]
        detach = [u for u in users if u not in self._counts]
        if attach:
            await self._store.refresh(self._gateway_id, attach)
        if detach:
            await self._store.forget(self._gateway_id, detach)

    async def refresh_now(self) -> None:
        """Re-assert every local entry at once (after a hub reconnect: another gateway may
        have cleared them on a "not attached" notice while this one was away)."""
        users = list(self._counts)
        if users and not self._closed:
            await self._store.refresh(self._gateway_id, users)

    async def _refresh_loop(self) -> None:
        interval = max(self._ttl / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            users = list(self._counts)
            if not users:
                continue
            try:
                await self._store.refresh(self._gateway_id, users)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _refresh_failed.hit(exc=exc)

    async def _watch_loop(self) -> None:
        down = False
        while True:
            await asyncio.sleep(self._watch_interval)
            try:
                beacon = await self._store.beacon(self._gateway_id, self._ttl)
                if beacon.epoch != self._epoch:
                    if self._epoch is not None:
                        logger.warning(
                            "the store lost its data (a new epoch): sessions read their inboxes "
                            "from the start"
                        )
                        if self._on_lost is not None:
                            self._on_lost()
                    self._epoch = beacon.epoch
                lost = beacon.missing
                if lost or down:
                    users = list(self._counts)
                    await self.refresh_now()
                    if users and (lost or down):
                        logger.info(
                            "store %s: re-asserted presence of %d local users",
                            "lost this gateway's presence" if lost else "answers again",
                            len(users),
                        )
                down = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                down = True
                _watch_failed.hit(exc=exc)

    async def close(self, *, detach: bool = True) -> None:
        """Stop writing; with ``detach``, remove every local entry (one ``forget``)."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(*self._tasks)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        users = list(self._counts) + list(self._dirty)
        if detach and users:
            try:
                await self._store.forget(self._gateway_id, users)
            except Exception:
                logger.exception("removing presence of %d users failed", len(users))
