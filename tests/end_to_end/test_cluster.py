"""The whole path on a real Redis Cluster (3 primaries, 3 replicas): two gateways, one hub.

Private and group messages (members in many slots), multi-device, dedupe, replay and ack;
and a failover: SIGKILL of the primary holding a receiver's inbox while messages flow,
with ``--redis-wait-replicas 1``: nothing acknowledged is lost and the gateways carry on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.crc import key_slot

from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from im_gateway.store import ClusterStore
from tests.cluster import RedisClusterProcesses
from tests.end_to_end.harness import SECRET, Client
from tests.helpers import wait_until
from transmit_hub.server import HubServer
from transmit_hub.types import UserId


def users_in_many_slots(n: int, start: int) -> list[int]:
    """``n`` user ids whose keys sit in ``n`` different slots."""
    seen: set[int] = set()
    out = []
    for u in itertools.count(start):
        slot = key_slot(f"im:{{u:{u}}}:inbox".encode())
        if slot not in seen:
            seen.add(slot)
            out.append(u)
        if len(out) == n:
            return out
    raise AssertionError


class Gateways:
    """Gateways in this process, on the hub and a cluster; all closed at the end."""

    def __init__(self, hub: HubServer, url: str) -> None:
        self.hub, self.url = hub, url
        self.started: list[Gateway] = []
        self.clients: list[Client] = []

    async def start(self, gateway_id: str, **options: Any) -> Gateway:
        gw = Gateway(
            GatewayConfig(
                listen="127.0.0.1:0",
                gateway_id=gateway_id,
                jwt_secret=SECRET,
                hub=self.hub.address,
                redis_url=self.url,
                group_join="open",
                **options,
            )
        )
        await gw.start()
        self.started.append(gw)
        await gw.wait_linked(10.0)
        return gw

    async def client(self, gw: Gateway, user: int) -> Client:
        c = await Client.open(gw.port, user)
        self.clients.append(c)
        await c.wait_for(lambda f: f["type"] == 14, what="the replay end marker")
        return c

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        for gw in reversed(self.started):
            await gw.close()


@pytest.fixture
async def gateways(hub: HubServer, redis_cluster_url: str) -> AsyncIterator[Gateways]:
    g = Gateways(hub, redis_cluster_url)
    try:
        yield g
    finally:
        await g.close()


async def test_messages_groups_dedupe_and_replay_on_the_cluster(gateways: Gateways) -> None:
    """Two gateways on the cluster: a private message reaches both of the receiver's
    devices, a group message every member (in many slots) once, a resend is the same
    message, and an offline member gets a replay that an ack shortens."""
    gw1 = await gateways.start("gw-1")
    gw2 = await gateways.start("gw-2")
    a, b, *members = users_in_many_slots(10, 3000)
    ca = await gateways.client(gw1, a)
    cb1 = await gateways.client(gw2, b)
    cb2 = await gateways.client(gw1, b)
    ack = await ca.say(b, "hello")
    assert ack["type"] == 10
    for c in (cb1, cb2):
        await c.wait_contents(["hello"])

    online = [await gateways.client(gw1 if i % 2 else gw2, u) for i, u in enumerate(members[:6])]
    for c in (ca, *online):
        await c.send({"type": 12, "id": "join", "to": 77})
        await c.wait_for(lambda f: f.get("id") == "join" and f["type"] == 10)
    offline = members[6:]
    for u in offline:  # join, then go offline
        c = await gateways.client(gw2, u)
        await c.send({"type": 12, "id": "join", "to": 77})
        await c.wait_for(lambda f: f.get("id") == "join" and f["type"] == 10)
        await c.close()
    g1 = await ca.say(77, "to all", group=True, cid="g-1")
    assert g1["type"] == 10
    again = await ca.say(77, "to all, resent", group=True, cid="g-1")
    assert again["msgId"] == g1["msgId"]
    g2 = await ca.say(77, "second", group=True)
    for c in online:
        await c.wait_contents(["to all", "second"])
        assert [f["id"] for f in c.messages()] == [g1["msgId"], g2["msgId"]]

    late = await gateways.client(gw1, offline[0])
    assert late.contents() == ["to all", "second"]
    await late.send({"type": 11, "seq": late.messages()[0]["seq"]})
    await late.close()
    store = gw1.store
    await wait_until(
        lambda: _acked(store, offline[0], int(late.messages()[0]["seq"])),
        timeout=5,
        what="the ack to land",
    )
    later = await gateways.client(gw2, offline[0])
    assert later.contents() == ["second"]


async def _acked(store: Any, user: int, seq: int) -> bool:
    return bool(await store.acked(UserId(user)) >= seq)


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterProcesses]:
    """A cluster of its own (this test kills and restarts a primary)."""
    cluster = RedisClusterProcesses()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _send_until_acked(client: Client, to: int, text: str, cid: str) -> dict[str, Any]:
    """Send, and resend with the same client id while the answer is ``internal``."""
    deadline = time.monotonic() + 60
    while True:
        seen = len(client.frames)
        await client.send({"type": 1, "id": cid, "to": to, "contentType": 0, "content": text})

        def answers(seen: int = seen) -> list[dict[str, Any]]:
            new = client.frames[seen:]
            return [f for f in new if f.get("id") == cid and f["type"] in (10, 99)]

        await wait_until(lambda: bool(answers()), timeout=10, what=f"the answer to {cid}")
        answer = answers()[0]
        if answer["type"] == 10:
            return answer
        assert answer["code"] == "internal", answer
        assert time.monotonic() < deadline, f"{cid} never acknowledged"


async def test_a_primary_killed_under_traffic_loses_nothing_acknowledged(
    hub: HubServer, own_cluster: RedisClusterProcesses
) -> None:
    """SIGKILL of the primary that holds the receiver's inbox while messages flow, with
    --redis-wait-replicas 1: /healthz says 503 while its slots have no primary, the
    gateways carry on by themselves after the failover, and every acknowledged message
    is in the receiver's inbox, once."""
    gateways = Gateways(hub, own_cluster.url)
    try:
        gw1 = await gateways.start("gw-1", redis_wait_replicas=1, redis_wait_timeout=0.5)
        gw2 = await gateways.start("gw-2", redis_wait_replicas=1, redis_wait_timeout=0.5)
        b = 5002
        victim = own_cluster.owner(f"im:{{u:{b}}}:inbox")
        # The sender's keys on another primary: its claims survive the kill.
        a = next(
            u for u in range(5003, 6000) if own_cluster.owner(f"im:{{u:{u}}}:inbox") is not victim
        )
        ca = await gateways.client(gw1, a)
        await gateways.client(gw2, b)
        acked: list[str] = []
        unhealthy: list[int] = []

        async def healthy() -> bool:
            ok, _ = await gw2.health()
            return ok

        async def watch() -> None:
            async def down() -> bool:
                return not await healthy()

            await wait_until(down, timeout=120, what="/healthz 503 during the failover")
            unhealthy.append(1)

        async def bring_back() -> None:
            """Once a replica took over the victim's slots, start it again: it rejoins
            as a replica, so WAIT 1 can succeed again."""
            await wait_until(
                lambda: own_cluster.moved_from(f"im:{{u:{b}}}:inbox", victim),
                timeout=30,
                what="the failover",
            )
            await asyncio.to_thread(victim.restart)

        watcher = asyncio.create_task(watch())
        restarter: asyncio.Task[None] | None = None
        try:
            for i in range(120):
                if i == 30:
                    victim.kill()
                    restarter = asyncio.create_task(bring_back())
                answer = await _send_until_acked(ca, b, f"m{i}", f"c{i}")
                acked.append(answer["msgId"])
        finally:
            watcher.cancel()
        assert restarter is not None
        await restarter
        assert victim.port not in [n.port for n in own_cluster.primaries()]
        assert unhealthy, "/healthz never said 503 while the slots had no primary"
        await wait_until(healthy, timeout=20, what="gw-2 healthy again")
        async with ClusterStore(own_cluster.url) as store:
            page = await store.read_inbox(UserId(b), 0, 1000)
        stored = [e.message.id for e in page.entries]
        assert stored == acked
    finally:
        await gateways.close()
