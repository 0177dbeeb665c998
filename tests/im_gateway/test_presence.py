"""Presence: first socket attaches, last one detaches, refreshes keep entries alive."""

from __future__ import annotations

from im_gateway.presence import Presence
from im_gateway.store_memory import MemoryStore
from tests.helpers import wait_until
from transmit_hub.types import GatewayId, UserId

GW = GatewayId("gw-1")
U = UserId(7)


async def test_first_socket_attaches_last_socket_detaches() -> None:
    """A second device keeps the entry; only the last close removes it; other gateways stay."""
    store = MemoryStore(presence_ttl=30)
    await store.attach(U, GatewayId("gw-other"))
    presence = Presence(store, GW, ttl=30)
    await presence.start()
    try:
        await presence.add(U)
        assert set((await store.lookup([U]))[U]) == {"gw-1", "gw-other"}
        await presence.add(U)
        presence.remove(U)
        assert presence.users() == [U]
        presence.remove(U)
        assert presence.users() == []

        async def detached() -> bool:
            return (await store.lookup([U])).get(U) == ("gw-other",)

        await wait_until(detached)
    finally:
        await presence.close()


async def test_refresh_keeps_entries_alive_and_close_removes_them() -> None:
    """Entries outlive their TTL while refreshed; close() detaches every local user."""
    now = [1000.0]
    store = MemoryStore(presence_ttl=1, clock=lambda: now[0])
    presence = Presence(store, GW, ttl=0.15)
    await presence.start()
    try:
        await presence.add(U)
        now[0] += 0.9
        refreshed_at = now[0]

        async def refreshed() -> bool:
            # The refresher runs every ttl/3 seconds; after one run the entry outlives +1s.
            now[0] = refreshed_at + 0.5
            alive = U in await store.lookup([U])
            now[0] = refreshed_at
            return alive

        await wait_until(refreshed)
        await presence.refresh_now()
    finally:
        await presence.close()
    assert await store.lookup([U]) == {}
