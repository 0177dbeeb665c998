"""This gateway's presence in the store: which local users hold at least one socket.

The first socket of a user attaches it (``user -> this gateway``), the last one closing
detaches it; other gateways' entries for the same user are never touched. Changes are
written by one worker in order, batched (one ``refresh`` round trip for every attach
and one ``forget`` for every detach in a batch), so a user who reconnects quickly
never ends up detached by an older write. A refresher extends every local entry's TTL
every ``ttl / 3`` seconds in one round trip, so a crashed gateway's entries expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from transmit_hub.types import GatewayId, UserId

from .store import Store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)


class Presence:
    """Counts local sockets per user and keeps the store's presence entries in step."""

    def __init__(self, store: Store, gateway_id: GatewayId, *, ttl: float) -> None:
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
        """Start the writer and the refresher."""
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="presence-writer"),
            asyncio.create_task(self._refresh_loop(), name="presence-refresher"),
        ]

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
            except Exception:
                logger.exception("presence update for %d users failed", len(dirty))
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
            except Exception:
                logger.exception("presence refresh for %d users failed", len(users))

    async def close(self, *, detach: bool = True) -> None:
        """Stop writing; with ``detach``, remove every local entry (one round trip)."""
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
