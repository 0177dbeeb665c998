"""A silent Redis Cluster primary fails only the reads of the keys it holds: the catch-up
sweeps' inbox ends and users' groups, a connection's page of its large groups' streams
and the list of its large groups answer the healthy nodes' users and groups within the
bound, the silent node's as unknown (read again later), as the connect's openings do."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from redis.exceptions import RedisError

from im_gateway.store import ClusterStore, GroupStream, InboxPage, Submission, Unread
from im_gateway.store.cluster import ATTEMPTS
from tests.cluster import ClusterNode, RedisClusterProcesses
from tests.im_gateway.store.test_contract import msg
from transmit_hub.types import MESSAGE_GROUP, UserId

TIMEOUT = 0.3
BOUND = (ATTEMPTS + 1) * TIMEOUT + 0.5
"""A read with keys on a silent node: two timeouts and a refresh of the slot map, with
slack (the same bound as test_cluster_retries')."""


def on(cluster: RedisClusterProcesses, node: ClusterNode, key: str, start: int) -> int:
    """The first id from ``start`` whose ``key`` (formatted with it) ``node`` holds."""
    n = start
    while cluster.owner(key.format(n)) is not node:
        n += 1
    return n


def off(cluster: RedisClusterProcesses, node: ClusterNode, key: str, start: int) -> int:
    """The first id from ``start`` whose ``key`` a primary other than ``node`` holds."""
    n = start
    while cluster.owner(key.format(n)) is node:
        n += 1
    return n


@pytest.mark.slow
async def test_reads_of_many_users_or_groups_fail_only_the_silent_nodes_share() -> None:
    """A primary SIGSTOPped with no failover coming: inbox_ends and in_groups of a batch
    of users, read_groups of a user's large groups and streams() answer the users and
    groups of the healthy primaries within the bound (their ends, pages and positions),
    and those of the silent node as unknown (None, its error, Unread). Before, each failed
    whole after the client's attempts: one silent node held every user of a sweep batch,
    and every large group of a user, until a failover."""
    cluster = RedisClusterProcesses()  # of its own: one of its primaries is frozen
    try:
        for node in cluster.nodes:
            node.client().config_set("cluster-replica-no-failover", "yes")
            node.client().config_set("cluster-require-full-coverage", "no")
        async with ClusterStore(cluster.url, socket_timeout=TIMEOUT, large_group=1) as store:
            victim = cluster.owner("im:{u:1}:inbox")
            frozen = UserId(on(cluster, victim, "im:{{u:{}}}:inbox", 1))
            alice = UserId(off(cluster, victim, "im:{{u:{}}}:inbox", 100))
            bob = UserId(off(cluster, victim, "im:{{u:{}}}:inbox", alice + 1))
            carol = UserId(off(cluster, victim, "im:{{u:{}}}:inbox", bob + 1))  # in no group
            cold = on(cluster, victim, "im:{{g:{}}}:members", 1)  # its node goes silent
            warm = off(cluster, victim, "im:{{g:{}}}:members", 1)
            for group in (cold, warm):
                for user in (alice, bob):
                    await store.join(group, user)
                assert await store.is_large(group)
            posts = [
                Submission(f"c{group}", msg(alice, group, type=MESSAGE_GROUP, content=f"{group}"))
                for group in (cold, warm)
            ]
            await store.submit(posts)
            await store.submit(
                [Submission("p1", msg(alice, bob)), Submission("p2", msg(bob, frozen))]
            )
            assert await store.inbox_ends([frozen, bob, alice]) == [1, 2, 1]
            assert await store.in_groups([frozen, bob, carol]) == [False, True, False]

            # (streams() was not called before: its script is loaded while the node is
            # silent, on the healthy nodes only.)
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                spans = [time.monotonic()]
                ends = await store.inbox_ends([frozen, bob, alice])
                spans.append(time.monotonic())
                grouped = await store.in_groups([frozen, bob, carol])
                spans.append(time.monotonic())
                pages = await store.read_groups({cold: 0, warm: 0}, 10)
                spans.append(time.monotonic())
                streams = await store.streams(bob, 10)
                spans.append(time.monotonic())
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            took = [b - a for a, b in itertools.pairwise(spans)]
            print("answered with a silent node's share in", [f"{t:.2f}s" for t in took])
            assert all(t < BOUND for t in took), took
            assert ends == [None, 2, 1]
            assert grouped == [None, True, False]
            assert isinstance(pages[cold], RedisError), pages
            page = pages[warm]
            assert isinstance(page, InboxPage)
            assert [e.message.content for e in page.entries] == [f"{warm}"]
            assert page.last == 1
            [unread] = [s for s in streams if isinstance(s, Unread)]
            [healthy] = [s for s in streams if isinstance(s, GroupStream)]
            assert unread.group == cold
            assert isinstance(unread.error, RedisError)
            assert healthy.group == warm
            assert [e.message.content for e in healthy.page.entries] == [f"{warm}"]

            # Thawed: the same reads answer every user and group again.
            assert await store.inbox_ends([frozen, bob, alice]) == [1, 2, 1]
            assert await store.in_groups([frozen, bob, carol]) == [False, True, False]
            again = await store.read_groups({cold: 0, warm: 0}, 10)
            assert all(isinstance(p, InboxPage) and p.last == 1 for p in again.values())
            assert sorted(
                s.group for s in await store.streams(bob, 10) if isinstance(s, GroupStream)
            ) == sorted((cold, warm))
    finally:
        cluster.stop()
