"""The gateway on a real Redis Cluster under the faults a SIGKILL does not cover: a primary
or a replica that goes silent (SIGSTOP), a slot that migrates under traffic, and a
large group's node frozen. Each send is answered within a bound, nothing acknowledged is
lost or shown twice, the logs are counted lines, and the gateway carries on by itself."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.crc import key_slot

from tests.cluster import ClusterNode, RedisClusterProcesses
from tests.end_to_end.harness import Client, change_group
from tests.end_to_end.test_cluster import Gateways
from tests.helpers import wait_until
from transmit_hub.server import HubServer

REDIS_TIMEOUT = 0.5
BOUND = REDIS_TIMEOUT * 4 + 1.0
"""The longest a send may wait for its answer (type 10 or 99) while a node is silent."""


@pytest.fixture
def cluster() -> Iterator[RedisClusterProcesses]:
    """A cluster of its own (these tests stop, freeze and move parts of it)."""
    cluster = RedisClusterProcesses()
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            if node.alive():
                os.kill(node.pid, signal.SIGCONT)
        cluster.stop()


def inbox(user: int) -> str:
    return f"im:{{u:{user}}}:inbox"


def holder(cluster: RedisClusterProcesses, key: str, ask: ClusterNode) -> int:
    """The port of the primary that holds ``key``'s slot, as the node ``ask`` sees it."""
    slot = key_slot(key.encode())
    rows = ask.client().execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    for row in rows:
        if int(row[0]) <= slot <= int(row[1]):
            return int(row[2][1])
    return 0


async def failed_over(cluster: RedisClusterProcesses, key: str, victim: ClusterNode) -> None:
    """Wait (off the loop, asking a node other than the silent ``victim``) until another
    primary holds ``key``'s slot."""
    ask = next(n for n in cluster.nodes if n is not victim)

    def moved() -> bool:
        return holder(cluster, key, ask) not in (0, victim.port)

    await wait_until(lambda: asyncio.to_thread(moved), timeout=30, interval=0.1, what="failover")


def users_on(cluster: RedisClusterProcesses, node: ClusterNode, n: int, start: int) -> list[int]:
    """``n`` users whose keys sit on the primary ``node``."""
    out: list[int] = []
    u = start
    while len(out) < n:
        if cluster.owner(inbox(u)) is node:
            out.append(u)
        u += 1
    return out


def users_off(cluster: RedisClusterProcesses, node: ClusterNode, n: int, start: int) -> list[int]:
    """``n`` users whose keys sit on a primary other than ``node``."""
    out: list[int] = []
    u = start
    while len(out) < n:
        if cluster.owner(inbox(u)) is not node:
            out.append(u)
        u += 1
    return out


@dataclass
class Sender:
    """One client sending numbered messages one at a time, each resent with the same id
    while the answer is ``internal``; it keeps how long each answer took."""

    client: Client
    to: int
    acked: list[str] = field(default_factory=list)
    waits: list[tuple[float, float, int]] = field(default_factory=list)
    """(when sent, seconds to its answer, type of the answer) of every attempt."""
    refused_since: float | None = None
    refused_spans: list[float] = field(default_factory=list)
    """How long each run of refusals lasted, from the first refused send to the ack."""

    async def send(self, i: int, *, group: bool = False) -> None:
        cid = f"{self.client.user}-{i}"
        while True:
            seen = len(self.client.frames)
            start = time.monotonic()
            await self.client.send(
                {"type": 2 if group else 1, "id": cid, "to": self.to, "content": f"m{i}"}
            )

            def answer(seen: int = seen) -> dict[str, Any] | None:
                for f in self.client.frames[seen:]:
                    if f.get("id") == cid and f["type"] in (10, 99):
                        return f
                return None

            await wait_until(
                lambda: answer() is not None, timeout=BOUND, what=f"{cid}'s answer within the bound"
            )
            got = answer()
            assert got is not None
            self.waits.append((start, time.monotonic() - start, got["type"]))
            if got["type"] == 10:
                self.acked.append(got["msgId"])
                if self.refused_since is not None:
                    self.refused_spans.append(time.monotonic() - self.refused_since)
                    self.refused_since = None
                return
            assert got["code"] == "internal", got
            if self.refused_since is None:
                self.refused_since = start

    def slowest(self) -> float:
        return max(w for _, w, _ in self.waits)


def shown(client: Client) -> list[str]:
    return [f["id"] for f in client.messages()]


async def every_ack_shown_once(sender: Sender, receiver: Client) -> None:
    """The receiver is shown every message the sender had acknowledged, once, in order
    (live, or replayed to fill a hole)."""
    await wait_until(
        lambda: set(sender.acked) <= set(shown(receiver)),
        timeout=10,
        what="every acknowledged message to be shown",
    )
    got = shown(receiver)
    assert len(got) == len(set(got)), "a message was shown twice"
    assert [m for m in got if m in sender.acked] == sender.acked


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_frozen_primary_is_answered_within_a_bound_and_failed_over(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary SIGSTOPped under traffic until its replica takes over, then SIGCONTed (it
    comes back as a replica), with --redis-wait-replicas 1: every send is answered within a
    bound, the gateway carries on without a restart, each receiver has every acknowledged
    message once and in order, and the logs are a few counted lines, no traceback. Sends
    between users on healthy primaries keep being acknowledged while the node is frozen."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    try:
        options: dict[str, Any] = {
            "redis_timeout": REDIS_TIMEOUT,
            "redis_wait_replicas": 1,
            "redis_wait_timeout": 0.5,
        }
        gw1 = await gateways.start("gw-1", **options)
        gw2 = await gateways.start("gw-2", **options)
        victim = cluster.owner(inbox(7001))
        [b] = users_on(cluster, victim, 1, 7001)
        a, c, d = users_off(cluster, victim, 3, 7100)
        sa = Sender(await gateways.client(gw1, a), b)
        sc = Sender(await gateways.client(gw1, c), d)
        rb = await gateways.client(gw2, b)
        rd = await gateways.client(gw2, d)
        frozen: list[float] = []

        async def traffic(s: Sender, n: int) -> None:
            for i in range(n):
                await s.send(i)
                if s is sa and i == 10:
                    os.kill(victim.pid, signal.SIGSTOP)
                    frozen.append(time.monotonic())

        async def fail_over() -> None:
            await wait_until(lambda: bool(frozen), timeout=30, what="the freeze")
            await failed_over(cluster, inbox(b), victim)
            frozen.append(time.monotonic())
            os.kill(victim.pid, signal.SIGCONT)

        await asyncio.gather(traffic(sa, 40), traffic(sc, 40), fail_over())
        print(
            f"froze for {frozen[1] - frozen[0]:.1f}s; slowest answer {sa.slowest():.2f}s "
            f"(to the frozen node's user), {sc.slowest():.2f}s (healthy); refused runs "
            f"{sa.refused_spans} / {sc.refused_spans}"
        )
        await wait_until(
            lambda: asyncio.to_thread(cluster.healthy),
            timeout=30,
            what="the node back as a replica",
        )
        assert victim.role() == "slave"
        await every_ack_shown_once(sa, rb)
        await every_ack_shown_once(sc, rd)
        assert not sc.refused_spans, sc.waits
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert len(warnings(caplog)) < 12, [r.getMessage() for r in warnings(caplog)]
    finally:
        await gateways.close()


async def freeze_while_sending(pid: int, to_it: Sender, healthy: Sender, sends: int) -> None:
    """``to_it`` sends ``sends`` messages to a user whose keys the node ``pid`` holds,
    stopping it (SIGSTOP) after the third, while ``healthy`` sends 30 between users it
    does not hold; once three of the first are refused and three of the others
    acknowledged while it was silent, it goes on (SIGCONT). The healthy sends are never
    refused."""
    frozen, thawed = asyncio.Event(), asyncio.Event()
    during: list[int] = []

    async def to_frozen() -> None:
        for i in range(sends):
            await to_it.send(i)
            if i == 2:
                os.kill(pid, signal.SIGSTOP)
                frozen.set()

    async def between_healthy() -> None:
        for i in range(30):
            await healthy.send(i)
            if frozen.is_set() and not thawed.is_set():
                during.append(i)  # acknowledged while the node was silent

    async def thaw() -> None:
        await wait_until(
            lambda: sum(k == 99 for _, _, k in to_it.waits) >= 3 and len(during) >= 3,
            timeout=30,
            what="three refused sends to the silent node, three healthy ones acked",
        )
        os.kill(pid, signal.SIGCONT)
        thawed.set()

    await asyncio.gather(to_frozen(), between_healthy(), thaw())
    print(f"slowest answers: {to_it.slowest():.2f}s, {healthy.slowest():.2f}s (healthy)")
    assert not healthy.refused_spans, healthy.waits


def no_failover(cluster: RedisClusterProcesses) -> None:
    """No replica takes over a silent primary (as while a long cluster-node-timeout runs),
    and the other primaries' slots keep serving meanwhile."""
    for node in cluster.nodes:
        node.client().config_set("cluster-replica-no-failover", "yes")
        # Else, once the node is marked failed (cluster-node-timeout), every node
        # answers CLUSTERDOWN while its slots have no primary: Redis's default.
        node.client().config_set("cluster-require-full-coverage", "no")


async def test_a_primary_silent_longer_than_a_failover_takes_is_answered_within_a_bound(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """A primary SIGSTOPped with no failover coming (its replica may not take over, as
    while a long cluster-node-timeout runs): sends to its users are answered ``internal``
    within a bound, each time, not after the cluster client's retries (before: 9.5 s with
    --redis-timeout 0.5, twice over, so about 40 times the timeout); sends between users
    on the healthy primaries are acknowledged meanwhile (before: held for as long as the
    node was silent; with cluster-require-full-coverage no, as Redis's default refuses
    every slot once the node is marked failed); once it answers again, every acknowledged message is shown once,
    in order, and the logs hold a few counted lines, no traceback."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    try:
        gw = await gateways.start("gw-1", redis_timeout=REDIS_TIMEOUT)
        victim = cluster.owner(inbox(7001))
        no_failover(cluster)
        [b] = users_on(cluster, victim, 1, 7001)
        a, c, d = users_off(cluster, victim, 3, 7100)
        sa = Sender(await gateways.client(gw, a), b)
        sc = Sender(await gateways.client(gw, c), d)
        rb = await gateways.client(gw, b)
        rd = await gateways.client(gw, d)
        await freeze_while_sending(victim.pid, sa, sc, 10)
        await every_ack_shown_once(sa, rb)
        await every_ack_shown_once(sc, rd)
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert len(warnings(caplog)) < 12, [r.getMessage() for r in warnings(caplog)]
    finally:
        await gateways.close()


REPLAY_BOUND = 3 * REDIS_TIMEOUT + 1.0
"""The longest a replay may wait for its answer (its messages and end marker, or
``internal``) while the primary of the user's inbox is silent: the cluster client's
attempts (two, each up to a timeout) and a refresh of its slot map, with slack."""


def answer_since(client: Client, seen: int) -> dict[str, Any] | None:
    """The first replay answer (an end marker, or ``internal``) among the frames after
    the first ``seen``."""
    for f in client.frames[seen:]:
        if f["type"] == 14 or (f["type"] == 99 and f.get("code") == "internal"):
            return f
    return None


async def test_replays_of_a_silent_primarys_user_are_answered_within_a_bound(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary of bob's inbox SIGSTOPped with no failover coming: a replay bob asks
    for (type 14) and a new connection's connect replay are each answered ``internal``
    within a small multiple of --redis-timeout (before: about 9.5 s at 0.5 s, the cluster
    client's 11 attempts with backoff between; a minute at the default), in counted log
    lines, no traceback; once the node answers again, the connect replay (tried again
    every second) and the messages sent after reach each of bob's connections once, in
    order."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    try:
        gw = await gateways.start("gw-1", redis_timeout=REDIS_TIMEOUT)
        victim = cluster.owner(inbox(7001))
        no_failover(cluster)
        [b] = users_on(cluster, victim, 1, 7001)
        [a] = users_off(cluster, victim, 1, 7100)
        sa = Sender(await gateways.client(gw, a), b)
        cb = await gateways.client(gw, b)
        for i in range(5):
            await sa.send(i)
        await wait_until(lambda: len(cb.messages()) == 5, what="bob's live messages")
        last = cb.messages()[-1]["seq"]

        os.kill(victim.pid, signal.SIGSTOP)
        seen = len(cb.frames)
        start = time.monotonic()
        await cb.send({"type": 14, "seq": last})
        await wait_until(
            lambda: answer_since(cb, seen) is not None,
            timeout=REPLAY_BOUND,
            what="the type 14 replay's answer within the bound",
        )
        asked = time.monotonic() - start
        got = answer_since(cb, seen)
        assert got is not None
        assert got["type"] == 99, got

        start = time.monotonic()
        cb2 = await Client.open(gw.port, b)
        gateways.clients.append(cb2)
        await wait_until(
            lambda: answer_since(cb2, 0) is not None,
            timeout=REPLAY_BOUND,  # bob is online here already: no presence write first
            what="the connect replay's answer within the bound",
        )
        connected = time.monotonic() - start
        assert not cb2.messages()
        print(f"silent node: type 14 answered in {asked:.2f}s, the connect replay {connected:.2f}s")

        os.kill(victim.pid, signal.SIGCONT)
        await cb2.wait_for(lambda f: f["type"] == 14, timeout=10, what="the connect replay")
        seen = len(cb.frames)
        await cb.send({"type": 14, "seq": last})
        await wait_until(
            lambda: any(f["type"] == 14 for f in cb.frames[seen:]),
            what="the replay's end marker after the thaw",
        )
        for i in range(5, 8):
            await sa.send(i)
        for c in (cb, cb2):
            await every_ack_shown_once(sa, c)
            assert len(shown(c)) == 8
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        said = [r.getMessage() for r in warnings(caplog)]
        assert len(said) < 12, said
    finally:
        await gateways.close()


def replica_of(cluster: RedisClusterProcesses, primary: ClusterNode) -> ClusterNode:
    """The node that replicates ``primary``."""
    for node in cluster.nodes:
        info = node.client().info("replication")
        if info["role"] == "slave" and int(info["master_port"]) == primary.port:
            return node
    raise AssertionError(f"no replica of {primary.port}")


async def test_a_silent_replica_gets_sends_answered_internal_until_it_answers_again(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """With --redis-wait-replicas 1, the replica of the primary holding bob's inbox is
    SIGSTOPped: sends to bob are answered ``internal`` within a bound (WAIT not
    satisfied: never acknowledged without the replica's copy), in a counted log line;
    sends between users of the other primaries are acknowledged meanwhile; once the
    replica answers again, the resends are acknowledged and bob has every message once,
    in order."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    try:
        gw = await gateways.start(
            "gw-1", redis_timeout=REDIS_TIMEOUT, redis_wait_replicas=1, redis_wait_timeout=0.3
        )
        primary = cluster.owner(inbox(7001))
        replica = replica_of(cluster, primary)
        [b] = users_on(cluster, primary, 1, 7001)
        a, c, d = users_off(cluster, primary, 3, 7100)
        sa = Sender(await gateways.client(gw, a), b)
        sc = Sender(await gateways.client(gw, c), d)
        rb = await gateways.client(gw, b)
        rd = await gateways.client(gw, d)
        await freeze_while_sending(replica.pid, sa, sc, 8)  # the replica: WAIT fails
        await every_ack_shown_once(sa, rb)
        await every_ack_shown_once(sc, rd)
        said = [r.getMessage() for r in warnings(caplog)]
        assert any("not confirmed" in m for m in said), said
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert len(said) < 12, said
    finally:
        await gateways.close()


def node_id(node: ClusterNode) -> str:
    return str(node.client().execute_command("CLUSTER", "MYID").decode())  # type: ignore[no-untyped-call]


def migrate(source: ClusterNode, target: ClusterNode, keys: list[bytes]) -> None:
    """Move ``keys`` from ``source`` to ``target`` (MIGRATE, keeping nothing behind)."""
    if keys:
        source.client().execute_command(  # type: ignore[no-untyped-call]
            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
        )


async def test_a_slot_migrating_under_traffic_loses_and_repeats_nothing(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """Bob's slot moves to another primary while alice sends to him (CLUSTER SETSLOT
    MIGRATING / IMPORTING, MIGRATE of some of his keys, then the rest, then SETSLOT
    NODE): ASK, TRYAGAIN and MOVED on the way. Redis refuses a script whose keys are
    split by the move (TRYAGAIN), so sends to bob are refused until it ends; each is
    answered within a bound, the resends are acknowledged after it, and bob is shown
    every acknowledged message once, in order."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    try:
        gw = await gateways.start("gw-1", redis_timeout=REDIS_TIMEOUT)
        source = cluster.owner(inbox(7001))
        [b] = users_on(cluster, source, 1, 7001)
        target = next(n for n in cluster.primaries() if n is not source)
        [a] = users_on(cluster, target, 1, 7100)
        sa = Sender(await gateways.client(gw, a), b)
        rb = await gateways.client(gw, b)
        slot = key_slot(inbox(b).encode())
        phases: list[str] = []

        async def traffic() -> None:
            for i in range(40):
                await sa.send(i)
                if i == 5:
                    phases.append("go")

        async def answered_more(n: int) -> None:
            goal = len(sa.waits) + n
            await wait_until(lambda: len(sa.waits) >= goal, timeout=20, what=f"{n} answers")

        def keys() -> list[bytes]:
            found = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)  # type: ignore[no-untyped-call]
            return list(found)

        async def move() -> None:
            await wait_until(lambda: bool(phases), timeout=20, what="traffic")
            src, dst = node_id(source), node_id(target)
            target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src)  # type: ignore[no-untyped-call]
            source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst)  # type: ignore[no-untyped-call]
            await answered_more(3)  # TRYAGAIN: a script's keys here and not yet there
            half = [k for k in await asyncio.to_thread(keys) if b":msg:" in k]
            await asyncio.to_thread(migrate, source, target, half)
            await answered_more(3)  # some keys here, some there
            while rest := await asyncio.to_thread(keys):
                await asyncio.to_thread(migrate, source, target, rest)
            for node in cluster.primaries():
                node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst)  # type: ignore[no-untyped-call]
            phases.append("moved")

        await asyncio.gather(traffic(), move())
        assert phases == ["go", "moved"]
        assert cluster.owner(inbox(b)) is target
        await every_ack_shown_once(sa, rb)
        assert len(sa.acked) == 40
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        said = [r.getMessage() for r in warnings(caplog)]
        assert len(said) < 12, said
        print(f"slowest answer {sa.slowest():.2f}s; refused runs {sa.refused_spans}")
    finally:
        await gateways.close()


async def test_a_large_groups_frozen_primary_fails_over_and_every_member_sees_each_post_once(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """A large group (stored once, in its stream on one primary) while that primary is
    SIGSTOPped until its replica takes over, with --redis-wait-replicas 1: every post is
    answered within a bound, and each online member, on either gateway, is shown every
    acknowledged post once, in order."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    group = 91
    try:
        options: dict[str, Any] = {
            "redis_timeout": REDIS_TIMEOUT,
            "redis_wait_replicas": 1,
            "redis_wait_timeout": 0.5,
            "large_group": 1,
        }
        gw1 = await gateways.start("gw-1", **options)
        gw2 = await gateways.start("gw-2", **options)
        victim = cluster.owner(f"im:{{g:{group}}}:members")
        a, m1, m2 = users_off(cluster, victim, 3, 7100)
        ca = await gateways.client(gw1, a)
        members = [await gateways.client(gw1, m1), await gateways.client(gw2, m2)]
        for c in (ca, *members):
            await change_group(c, 12, group)
        sa = Sender(ca, group)
        frozen: list[float] = []

        async def traffic() -> None:
            for i in range(30):
                await sa.send(i, group=True)
                if i == 5:
                    os.kill(victim.pid, signal.SIGSTOP)
                    frozen.append(time.monotonic())

        async def fail_over() -> None:
            await wait_until(lambda: bool(frozen), timeout=30, what="the freeze")
            await failed_over(cluster, f"im:{{g:{group}}}:members", victim)
            os.kill(victim.pid, signal.SIGCONT)

        await asyncio.gather(traffic(), fail_over())
        print(f"slowest answer {sa.slowest():.2f}s; refused runs {sa.refused_spans}")
        for member in members:
            await every_ack_shown_once(sa, member)
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        said = [r.getMessage() for r in warnings(caplog)]
        assert len(said) < 12, said
    finally:
        await gateways.close()


async def test_a_connect_replays_the_healthy_large_groups_while_anothers_node_is_silent(
    hub: HubServer, cluster: RedisClusterProcesses, caplog: pytest.LogCaptureFixture
) -> None:
    """Bob is in two large groups, one on a primary SIGSTOPped with no failover coming:
    his connect replay sends the other group's posts and its end marker within a bound,
    without the silent group's (before: the read of his groups failed whole, the replay
    was answered ``internal`` and tried again every second until the node answered);
    once it answers, the silent group's posts follow, read a second or so later. Each
    post is shown once, in order per group, and the logs are a few counted lines."""
    caplog.set_level(logging.WARNING)
    gateways = Gateways(hub, cluster.url)
    try:
        gw = await gateways.start("gw-1", redis_timeout=REDIS_TIMEOUT, large_group=1)
        victim = cluster.owner(inbox(7001))
        no_failover(cluster)
        cold = next(g for g in range(90, 200) if cluster.owner(f"im:{{g:{g}}}:members") is victim)
        warm = next(
            g for g in range(90, 200) if cluster.owner(f"im:{{g:{g}}}:members") is not victim
        )
        a, b = users_off(cluster, victim, 2, 7100)
        ca = await gateways.client(gw, a)
        first = await Client.open(gw.port, b)
        await first.wait_for(lambda f: f["type"] == 14, what="bob's first replay")
        for group in (cold, warm):
            for c in (ca, first):
                await change_group(c, 12, group)
        await first.close()  # bob is offline: the posts wait in the streams
        for i in range(3):
            for group in (cold, warm):
                reply = await ca.say(group, f"{group}-{i}", group=True)
                assert reply["type"] == 10, reply

        os.kill(victim.pid, signal.SIGSTOP)
        start = time.monotonic()
        cb = await Client.open(gw.port, b)
        gateways.clients.append(cb)
        await wait_until(
            lambda: answer_since(cb, 0) is not None,
            timeout=REPLAY_BOUND + 1.0,  # a presence write first: bob was offline
            what="the connect replay's answer within the bound",
        )
        took = time.monotonic() - start
        marker = answer_since(cb, 0)
        assert marker is not None
        assert marker["type"] == 14, marker
        assert cb.contents() == [f"{warm}-{i}" for i in range(3)]
        print(f"silent group's node: the connect replay answered in {took:.2f}s")

        os.kill(victim.pid, signal.SIGCONT)
        await cb.wait_contents([f"{cold}-{i}" for i in range(3)], timeout=15)
        got = cb.contents()
        assert len(got) == len(set(got)) == 6, got
        for group in (cold, warm):
            assert [m for m in got if m.startswith(f"{group}-")] == [
                f"{group}-{i}" for i in range(3)
            ]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        said = [r.getMessage() for r in warnings(caplog)]
        assert len(said) < 12, said
    finally:
        await gateways.close()
