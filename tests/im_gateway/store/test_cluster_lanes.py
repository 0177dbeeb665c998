"""On Redis Cluster the store's calls go on its own connection per node (``lane.py``),
not through redis-py's cluster pipeline, and still follow the cluster when a slot moves:
a real 3-primary cluster, a slot migrated under a running store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from im_gateway.store import ClusterStore
from im_gateway.store.contract import Accepted
from im_gateway.store.lane import Lane
from tests.cluster import ClusterNode as NodeProcess
from tests.cluster import RedisClusterProcesses
from tests.helpers import wait_until, wait_until_sync
from tests.im_gateway.store.test_cluster import msg, users_in_many_slots
from tests.im_gateway.store.test_contract import sub
from transmit_hub.types import GatewayId

GW = GatewayId("gw-1")


@pytest.fixture
async def store(redis_cluster_url: str) -> AsyncIterator[ClusterStore]:
    async with ClusterStore(redis_cluster_url) as s:
        yield s


@pytest.fixture
def no_redis_py_pipeline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every redis-py cluster pipeline the test's store sends (by node)."""
    sent: list[str] = []
    real = ClusterNode.execute_pipeline

    async def recording(node: ClusterNode, commands: Any) -> Any:
        sent.append(node.name)
        return await real(node, commands)

    monkeypatch.setattr(ClusterNode, "execute_pipeline", recording)
    return sent


async def test_presence_and_messages_go_on_the_stores_lanes(
    store: ClusterStore, no_redis_py_pipeline: list[str]
) -> None:
    """A refresh and a look-up of 300 users, and a batch of private messages, take no
    redis-py pipeline: each node's calls go on the store's lane to it (one per node)."""
    users = users_in_many_slots(300)
    lanes: list[str] = []
    real = Lane.pipeline

    async def counting(lane: Lane, commands: Any) -> Any:
        lanes.append(lane.name)
        return await real(lane, commands)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Lane, "pipeline", counting)
        await store.refresh(GW, users)
        found = await store.lookup(users)
        results = await store.submit(
            [sub(f"c{u}", msg(int(u), int(users[0]))) for u in users[1:50]]
        )
    assert found == {u: (GW,) for u in users}
    assert all(isinstance(r, Accepted) for r in results)
    assert no_redis_py_pipeline == []
    primaries = {n.name for n in store.client.get_primaries()}
    assert set(lanes) == primaries


async def test_a_store_given_a_client_uses_its_pipelines(
    redis_cluster_url: str, no_redis_py_pipeline: list[str]
) -> None:
    """A store handed a client it does not own sends through that client, as the store
    on one Redis does (a caller's client may be configured in ways a lane is not)."""
    nodes = [
        ClusterNode(h, int(p))
        for h, p in (a.rsplit(":", 1) for a in redis_cluster_url.split("//")[1].split(","))
    ]
    client = RedisCluster(startup_nodes=nodes, socket_timeout=5)
    try:
        async with ClusterStore(client) as store:
            await store.refresh(GW, users_in_many_slots(10))
        assert no_redis_py_pipeline
    finally:
        await client.aclose()


def _node_id(node: NodeProcess) -> str:
    reply = node.client().execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _owner_port(node: NodeProcess, slot: int) -> int | None:
    """The port of the primary that ``node`` says holds ``slot``."""
    for row in node.client().execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
        if int(row[0]) <= slot <= int(row[1]):
            return int(row[2][1])
    return None


def _move_slot(
    cluster: RedisClusterProcesses, slot: int, source: NodeProcess, target: NodeProcess
) -> None:
    """Migrate ``slot`` and its keys from ``source`` to ``target`` (as redis-cli's
    reshard does), and tell every primary."""
    src, dst = source.client(), target.client()
    src_id, dst_id = _node_id(source), _node_id(target)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)  # type: ignore[no-untyped-call]
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)  # type: ignore[no-untyped-call]
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):  # type: ignore[no-untyped-call]
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)  # type: ignore[no-untyped-call]
    for node in cluster.primaries():
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)  # type: ignore[no-untyped-call]

    def everyone_agrees() -> bool:
        return all(_owner_port(n, slot) == target.port for n in cluster.primaries())

    wait_until_sync(everyone_agrees, timeout=10, what=f"every primary to see slot {slot} moved")


async def test_a_slot_moved_under_the_store_is_followed(
    store: ClusterStore, redis_cluster: RedisClusterProcesses
) -> None:
    """A slot holding presence keys moves to another primary while the store's map still
    has the old owner: the refresh on the old node's lane is redirected (MOVED) and goes
    through the cluster client, every user stays found, and once the map is read anew
    the calls go on the new owner's lane again."""
    users = users_in_many_slots(50)
    await store.refresh(GW, users)
    key = f"im:{{u:{users[0]}}}:presence"
    slot = key_slot(key.encode())
    source = redis_cluster.owner(key)
    target = next(n for n in redis_cluster.primaries() if n is not source)
    _move_slot(redis_cluster, slot, source, target)
    try:
        await store.refresh(GW, users)  # the store's map still says source
        assert await store.lookup(users) == {u: (GW,) for u in users}
        assert target.client().exists(key) == 1
        sent_alone: list[Any] = []
        real = store.client.execute_command

        async def recording(*args: Any, **kwargs: Any) -> Any:
            sent_alone.append(args[:1])
            return await real(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(store.client, "execute_command", recording)
            await store.refresh(GW, users)
        assert sent_alone == []  # the map is current again: nothing redirected
        ttl = target.client().pttl(key)
        assert isinstance(ttl, int)
        assert ttl > 0
    finally:
        _move_slot(redis_cluster, slot, target, source)


async def test_a_primary_frozen_mid_refresh_ends_it_in_bounded_time_and_loses_no_one() -> None:
    """A silent cut: one primary stopped (SIGSTOP) while a refresh of 300 users spread
    over every slot's node is under way. Its lane's calls time out and go through the
    cluster client, which tries again until its replica has taken over or its tries are
    spent: the refresh ends (landed, or failed with redis-py's error) in bounded time,
    never hanging, and once the node runs again a refresh lands every user."""
    cluster = RedisClusterProcesses()  # of its own: the frozen primary may be failed over
    try:
        async with ClusterStore(cluster.url, socket_timeout=0.3) as store:
            users = users_in_many_slots(300)
            await store.refresh(GW, users)
            victim = cluster.owner(f"im:{{u:{users[0]}}}:presence")
            loop = asyncio.get_running_loop()
            os.kill(victim.proc.pid, signal.SIGSTOP)
            try:
                started = loop.time()
                async with asyncio.timeout(10):  # 2.6-4.0 s seen: a failover, or the tries spent
                    with contextlib.suppress(RedisError):
                        await store.refresh(GW, users)
                elapsed = loop.time() - started
            finally:
                os.kill(victim.proc.pid, signal.SIGCONT)
            assert elapsed > 0.3  # it did meet the frozen node

            async def lands() -> bool:
                try:
                    await store.refresh(GW, users)
                    return await store.lookup(users) == {u: (GW,) for u in users}
                except RedisError:
                    return False

            await wait_until(lands, timeout=30, what="a refresh landing every user")
    finally:
        cluster.stop()
