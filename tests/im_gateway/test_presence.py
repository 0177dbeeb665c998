"""Presence: first socket attaches, last one detaches, refreshes keep entries alive."""

from __future__ import annotations

from im_gateway.presence import Presence
from im_gateway.store import Beacon, MemoryStore, RedisStore
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


class BeaconCounting(RedisStore):
    """A Redis store that counts beacon calls."""

    beacons = 0

    async def beacon(self, gateway: GatewayId, ttl: float) -> Beacon:
        self.beacons += 1
        return await super().beacon(gateway, ttl)


async def test_presence_is_reasserted_when_redis_loses_it(redis_url: str) -> None:
    """After a FLUSHALL (a Redis restarted without persistence) the watcher sees the beacon
    gone and re-asserts every local entry at once, long before the next refresh, and says
    once that the store lost its data (a new epoch)."""
    lost: list[str] = []
    async with BeaconCounting(redis_url) as store:
        presence = Presence(
            store, GW, ttl=300, watch_interval=0.02, on_lost=lambda: lost.append("lost")
        )
        await presence.start()
        try:
            await presence.add(U)
            assert await store.lookup([U]) == {U: (GW,)}
            await store.client.delete("im:gateway:gw-1")  # the mark alone: same data
            await store.forget(GW, [U])

            async def back() -> bool:
                return await store.lookup([U]) == {U: (GW,)}

            await wait_until(back, timeout=5, what="presence to be re-asserted")
            assert lost == []
            await store.client.flushall()
            assert await store.lookup([U]) == {}
            await wait_until(back, timeout=5, what="presence to be re-asserted after FLUSHALL")
            assert lost == ["lost"]
            seen = store.beacons
            await wait_until(lambda: store.beacons >= seen + 3)  # the watcher runs on
            assert lost == ["lost"]  # no second report for the same loss
        finally:
            await presence.close()


class FlakyStore(MemoryStore):
    """A memory store that can be made not to answer."""

    down = False
    refused = 0

    async def beacon(self, gateway: GatewayId, ttl: float) -> Beacon:
        if self.down:
            self.refused += 1
            raise ConnectionError("connection refused")
        return await super().beacon(gateway, ttl)


async def test_presence_is_reasserted_when_the_store_answers_again() -> None:
    """A store that stopped answering is sent every local entry as soon as it answers again,
    even when its beacon survived (entries may have been lost meanwhile)."""
    store = FlakyStore(presence_ttl=300)
    presence = Presence(store, GW, ttl=300, watch_interval=0.02)
    await presence.start()
    try:
        await presence.add(U)
        await wait_until(lambda: bool(store._beacons), what="the first beacon")
        store.down = True
        await store.forget(GW, [U])  # lost while the store was away
        await wait_until(lambda: store.refused > 0, what="the watcher to find the store down")
        store.down = False

        async def back() -> bool:
            return await store.lookup([U]) == {U: (GW,)}

        await wait_until(back, timeout=5, what="presence to be re-asserted")
    finally:
        await presence.close()
