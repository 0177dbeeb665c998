"""The cluster client the store makes sends a call at most twice: a silent node costs a
read about two --redis-timeout, not redis-py's 11 attempts with backoff between."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from im_gateway.store import ClusterStore, Opening
from im_gateway.store.cluster import ATTEMPTS, cluster_options
from tests.cluster import RedisClusterProcesses
from tests.helpers import wait_until
from transmit_hub.types import GatewayId, UserId

TIMEOUT = 0.3
GW = GatewayId("gw-1")


def test_the_options_send_a_call_twice_with_a_short_backoff() -> None:
    """Two attempts, each within the store's timeout (connecting too, up to 5 s), a
    backoff of at most 0.1 s before the second."""
    assert ATTEMPTS == 2
    for timeout, connect in ((0.5, 0.5), (5.0, 5.0), (30.0, 5.0)):
        options = cluster_options(timeout)
        assert options["socket_timeout"] == timeout
        assert options["socket_connect_timeout"] == connect
        retry = options["retry"]
        assert retry.get_retries() == ATTEMPTS - 1
        # Before the second attempt: a random delay up to 2 x base, 0.1 s.
        assert retry == Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 1)


async def test_the_client_made_from_a_url_takes_them() -> None:
    """A ``redis+cluster://`` URL's client counts its retries as the options say (redis-py
    reads ``retry`` once per command and pipeline: ``retry.get_retries()``), and a lent
    client keeps its own."""
    store = ClusterStore("redis+cluster://127.0.0.1:1", socket_timeout=TIMEOUT)
    try:
        assert store.client.retry.get_retries() == ATTEMPTS - 1
        assert store.client.connection_kwargs["socket_timeout"] == TIMEOUT
    finally:
        await store.close()
    lent = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", 1)])
    store = ClusterStore(lent)
    try:
        assert store.client.retry.get_retries() == 10  # redis-py's default
    finally:
        await store.close()
        await lent.aclose()


@pytest.mark.slow
async def test_reads_on_a_silent_primary_fail_within_about_two_timeouts() -> None:
    """A primary SIGSTOPped with no failover coming: every store call that goes through
    the cluster client (inbox and acked reads, the connect's opening, a user's groups,
    group members, presence removal) fails within two timeouts and a refresh of the slot
    map, not after 11 (before: 6 to 8 s each with a 0.3 s timeout); the same calls for
    a user on another primary answer meanwhile, also when their openings are read
    together with the frozen node's user's; and once the node runs again they answer."""
    cluster = RedisClusterProcesses()  # of its own: one of its primaries is frozen
    try:
        for node in cluster.nodes:
            node.client().config_set("cluster-replica-no-failover", "yes")
            node.client().config_set("cluster-require-full-coverage", "no")
        async with ClusterStore(cluster.url, socket_timeout=TIMEOUT) as store:
            victim = cluster.owner("im:{u:1}:inbox")
            frozen, healthy = UserId(1), UserId(2)
            while cluster.owner(f"im:{{u:{healthy}}}:inbox") is victim:
                healthy = UserId(healthy + 1)
            group = 1
            while cluster.owner(f"im:{{g:{group}}}:members") is not victim:
                group += 1

            def calls(user: UserId) -> list[Callable[[], Awaitable[Any]]]:
                return [
                    lambda: store.read_inbox(user, 0, 10),
                    lambda: store.acked(user),
                    lambda: store.opening(user),
                    lambda: store.streams(user, 10),
                    lambda: store.forget(GW, [user]),
                ]

            def members() -> Awaitable[Any]:
                return store.members(group)

            for call in [*calls(frozen), *calls(healthy), members]:
                await call()  # the client knows every node, its connections open

            async def timed(call: Callable[[], Awaitable[Any]]) -> float | RedisError:
                start = time.monotonic()
                try:
                    await call()
                except RedisError:
                    return time.monotonic() - start
                return RedisError("answered")

            os.kill(victim.pid, signal.SIGSTOP)
            try:
                on_frozen = [*calls(frozen), members]
                spans = await asyncio.gather(*(timed(c) for c in on_frozen))
                for call in calls(healthy):
                    await call()
                # Two connects in one loop turn share one read of their openings: the
                # healthy user's is answered, only the frozen node's user's fails (before,
                # the whole batch failed).
                both = await asyncio.gather(
                    store.opening(frozen), store.opening(healthy), return_exceptions=True
                )
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            assert isinstance(both[0], RedisError), both
            assert isinstance(both[1], Opening), both
            print("failed after", [f"{s:.2f}s" if isinstance(s, float) else s for s in spans])
            for span in spans:
                assert isinstance(span, float), span
                # At least one timeout (the opening read goes on the store's own
                # connections, which send nothing again to a silent node), at most two
                # and a refresh of the map.
                assert TIMEOUT - 0.05 < span < (ATTEMPTS + 1) * TIMEOUT + 0.5

            async def answers() -> bool:
                try:
                    for call in calls(frozen):
                        await call()
                except RedisError:
                    return False
                return True

            await wait_until(answers, timeout=20, what="the thawed node answering")
    finally:
        cluster.stop()
