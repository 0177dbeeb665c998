"""ClusterStore beyond the shared contract: crash points between its steps, one pipeline
per node per step, and WAIT (on the cluster and on one Redis with a replica)."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot

from devtools.launch import Process, free_port, redis_server_argv
from im_gateway.errors import StoreError
from im_gateway.positions import position
from im_gateway.store import (
    Accepted,
    ClusterStore,
    RedisStore,
    Refusal,
    Refused,
    Submission,
    open_store,
)
from im_gateway.store import cluster as cluster_module
from im_gateway.store.lane import Lane
from im_gateway.store.nodes import Nodes, cluster_nodes
from im_gateway.throttle import Throttled
from tests.conftest import RedisServer
from tests.helpers import wait_until_sync
from transmit_hub.types import (
    MESSAGE_GROUP,
    MESSAGE_PRIVATE,
    GatewayId,
    Message,
    MessageId,
    UserId,
)

ALICE, BOB = UserId(1), UserId(2)
GW = GatewayId("gw-1")
_ids = itertools.count(1)


class Crash(Exception):
    """A crash injected between two steps of a submit."""


def msg(sender: int, to: int, *, type: int = MESSAGE_PRIVATE, content: str = "hi") -> Message:
    return Message(
        MessageId(f"cm-{next(_ids)}"), UserId(sender), to, type, 0, 1_700_000_000_000, content
    )


def accepted(result: Accepted | Refused) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


@pytest.fixture
async def store(redis_cluster_url: str) -> AsyncIterator[ClusterStore]:
    async with ClusterStore(redis_cluster_url) as s:
        yield s


def users_in_many_slots(n: int) -> list[UserId]:
    """``n`` users whose inboxes sit in ``n`` different slots."""
    seen: set[int] = set()
    out = []
    for u in itertools.count(10):
        slot = key_slot(f"im:{{u:{u}}}:inbox".encode())
        if slot not in seen:
            seen.add(slot)
            out.append(UserId(u))
        if len(out) == n:
            return out
    raise AssertionError


async def inbox_ids(store: ClusterStore, user: UserId) -> list[str]:
    return [e.message.id for e in (await store.read_inbox(user, 0, 100)).entries]


def crash_at(point: str) -> Any:
    def hook(at: str) -> None:
        if at == point:
            raise Crash(at)

    return hook


@pytest.mark.parametrize("point", ["claimed", "append 1/9", "append 5/9", "appended"])
async def test_a_resend_after_a_crash_completes_the_first_message_once(
    store: ClusterStore, point: str
) -> None:
    """A crash after the claim, between slots' appends, or after every append: the resend
    with the same client id completes the first message (its id and text), and every
    member's inbox holds it exactly once."""
    members = users_in_many_slots(8)
    for u in members:
        await store.join(7, u)
    await store.join(7, ALICE)
    first = msg(ALICE, 7, type=MESSAGE_GROUP, content="first")
    store.crash = crash_at(point)
    with pytest.raises(Crash):
        await store.submit([Submission("g1", first)])
    store.crash = None
    [again] = await store.submit(
        [Submission("g1", msg(ALICE, 7, type=MESSAGE_GROUP, content="resent"))]
    )
    done = accepted(again)
    assert (done.message.id, done.message.content) == (first.id, "first")
    assert {r.user_id for r in done.recipients} == {*members, ALICE}
    for u in (*members, ALICE):
        assert await inbox_ids(store, u) == [first.id], u
    assert all(position(r.seq) == 1 for r in done.recipients)
    [dup] = await store.submit([Submission("g1", msg(ALICE, 7, type=MESSAGE_GROUP))])
    assert accepted(dup).duplicate
    assert accepted(dup).recipients == done.recipients


async def test_after_a_crash_the_sender_is_not_acknowledged_and_later_messages_follow(
    store: ClusterStore,
) -> None:
    """A private message that crashed part way is completed by its resend, and the
    positions of both users stay consecutive (1, 2, 3) in send order."""
    store.crash = crash_at("append 1/2")
    m1 = msg(ALICE, BOB)
    with pytest.raises(Crash):
        await store.submit([Submission("p1", m1)])
    store.crash = None
    [r1] = await store.submit([Submission("p1", msg(ALICE, BOB))])
    [r2, r3] = await store.submit(
        [Submission("p2", msg(ALICE, BOB)), Submission("p3", msg(ALICE, BOB))]
    )
    for user in (ALICE, BOB):
        page = await store.read_inbox(user, 0, 10)
        assert [e.position for e in page.entries] == [1, 2, 3]
        assert [e.message.id for e in page.entries] == [
            accepted(r).message.id for r in (r1, r2, r3)
        ]
    assert accepted(r1).message.id == m1.id


def _hold_finish(monkeypatch: pytest.MonkeyPatch, hold: Callable[[], Awaitable[object]]) -> None:
    """Step 3's marking of records done (a run of SETs whose replies are not read) awaits
    ``hold`` before it goes out."""
    real = Nodes.run

    async def held(self: Nodes, calls: Any, **options: Any) -> Any:
        if not options.get("answers", True) and any(c.args[0] == "SET" for c in calls):
            await hold()
        return await real(self, calls, **options)

    monkeypatch.setattr(Nodes, "run", held)


async def _record(store: ClusterStore, sender: int, client_id: str) -> str:
    """The kind of ``client_id``'s dedupe record: "p" (pending) or "d" (done)."""
    raw = await store.client.get(store.settings.key(f"dedupe:{client_id}", sender))
    assert raw is not None
    kind: str = json.loads(raw)[0]
    return kind


async def test_the_sender_is_answered_before_its_record_is_marked_done(
    store: ClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 3 does not hold the answer: with it held, the batch is answered (its record
    still pending, the message in both inboxes); the next batch waits for it; once it
    lands the record is done and a resend is a plain duplicate."""
    gate = asyncio.Event()
    _hold_finish(monkeypatch, gate.wait)
    async with asyncio.timeout(10):  # the old code waited for step 3: it hangs here
        [first] = await store.submit([Submission("f1", msg(ALICE, BOB))])
    assert await _record(store, ALICE, "f1") == "p"
    for user in (ALICE, BOB):
        assert await inbox_ids(store, user) == [accepted(first).message.id]
    following = asyncio.create_task(store.submit([Submission("f2", msg(ALICE, BOB))]))
    gate.set()
    async with asyncio.timeout(10):
        [second] = await following
    assert await _record(store, ALICE, "f1") == "d"
    [again] = await store.submit([Submission("f1", msg(ALICE, BOB, content="resent"))])
    assert accepted(again).duplicate
    assert accepted(again).recipients == accepted(first).recipients
    assert [e.position for e in (await store.read_inbox(BOB, 0, 10)).entries] == [1, 2]
    assert accepted(second).message.id != accepted(first).message.id


async def test_a_step_3_that_fails_after_the_answer_loses_nothing_and_writes_nothing_twice(
    store: ClusterStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway answered, then its step 3 failed (a node gone, or the gateway died
    before it landed): the record stays pending and the failure is counted in the log;
    a client that resends anyway (its acknowledgement lost) gets the first message, at
    the same positions, and every inbox holds it once."""
    members = users_in_many_slots(6)
    for u in members:
        await store.join(8, u)
    await store.join(8, ALICE)

    async def fail() -> None:
        raise Crash("step 3")

    _hold_finish(monkeypatch, fail)
    fresh = Throttled(cluster_module.logger, cluster_module._unfinished._message)
    monkeypatch.setattr(cluster_module, "_unfinished", fresh)  # not throttled by a test before
    [first] = await store.submit([Submission("s3", msg(ALICE, 8, type=MESSAGE_GROUP))])
    await store.submit([])  # waits for the failed step 3
    assert await _record(store, ALICE, "s3") == "p"
    assert "dedupe records left pending" in caplog.text
    monkeypatch.undo()
    resend = msg(ALICE, 8, type=MESSAGE_GROUP, content="resent")
    [again] = await store.submit([Submission("s3", resend)])
    assert accepted(again).message.id == accepted(first).message.id
    assert accepted(again).recipients == accepted(first).recipients
    for u in (*members, ALICE):
        assert await inbox_ids(store, u) == [accepted(first).message.id], u
    assert await _record(store, ALICE, "s3") == "d"


async def test_two_attempts_at_once_write_each_inbox_once(redis_cluster_url: str) -> None:
    """The same client id submitted by two gateways at the same time: one message id,
    one inbox entry per recipient."""
    members = users_in_many_slots(6)
    async with ClusterStore(redis_cluster_url) as a, ClusterStore(redis_cluster_url) as b:
        for u in members:
            await a.join(9, u)
        results = await asyncio.gather(
            *(
                s.submit([Submission("same", msg(members[0], 9, type=MESSAGE_GROUP))])
                for s in (a, b, a, b)
            )
        )
        ids = {accepted(r[0]).message.id for r in results}
        assert len(ids) == 1
        for u in members:
            assert await inbox_ids(a, u) == list(ids)


async def test_a_batch_is_one_pipeline_per_node_per_step(
    store: ClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 messages to many users: at most three pipelines per node (claim, append,
    finish), the nodes in parallel, and no command sent alone."""
    for u in range(20):
        await store.join(7, UserId(u))

    def batch(tag: str) -> list[Submission]:
        return [
            Submission(
                f"{tag}{i}", msg(i % 20, 7, type=MESSAGE_GROUP) if i % 2 else msg(i % 20, 100 + i)
            )
            for i in range(200)
        ]

    await store.submit(batch("warm"))  # loads the scripts on every node
    pipelines: list[str] = []
    real = ClusterNode.execute_pipeline
    real_lane = Lane.pipeline

    async def counting(node: ClusterNode, commands: Any) -> Any:
        pipelines.append(node.name)
        return await real(node, commands)

    async def counting_lane(lane: Lane, commands: Any) -> Any:
        pipelines.append(lane.name)
        return await real_lane(lane, commands)

    async def alone(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a command sent alone: {args[:2]}")

    monkeypatch.setattr(ClusterNode, "execute_pipeline", counting)
    monkeypatch.setattr(Lane, "pipeline", counting_lane)
    monkeypatch.setattr(store.client, "execute_command", alone)
    results = await store.submit(batch("c"))
    assert all(isinstance(r, Accepted) for r in results)
    assert len(set(pipelines)) == 3
    assert all(pipelines.count(n) <= 3 for n in pipelines)


async def test_wait_refuses_what_too_few_replicas_hold_and_the_resend_completes(
    redis_cluster_url: str,
) -> None:
    """On the cluster, WAIT for 2 replicas (each primary has 1) refuses with internal "not
    replicated", and at the claim already: no inbox holds it (old code: every member's
    did; a claim lost with a failed-over primary then let the resend store it twice under
    a new id); the resend with WAIT 1 completes the same message, once per inbox."""
    members = users_in_many_slots(5)
    async with ClusterStore(redis_cluster_url, wait_replicas=2, wait_timeout=0.1) as strict:
        for u in members:
            await strict.join(3, u)
        first = msg(members[0], 3, type=MESSAGE_GROUP)
        [r] = await strict.submit([Submission("w1", first)])
        assert r == Refused("w1", Refusal.NOT_REPLICATED)
        for u in members:
            assert await inbox_ids(strict, u) == []
    async with ClusterStore(redis_cluster_url, wait_replicas=1) as store:
        [r] = await store.submit([Submission("w1", msg(members[0], 3, type=MESSAGE_GROUP))])
        assert accepted(r).message.id == first.id
        for u in members:
            assert await inbox_ids(store, u) == [first.id]


def _online(replication: dict[str, Any]) -> bool:
    """A primary's INFO replication says its first replica is in sync (WAIT counts it)."""
    replica = replication.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


class Replica(Process):
    """A ``redis-server --replicaof`` the given primary, on a free port."""

    def __init__(self, primary: RedisServer) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="th-replica-")
        argv = redis_server_argv(self.port, host="127.0.0.1", workdir=self.dir)
        argv += ["--replicaof", "127.0.0.1", str(primary.port)]
        super().__init__("replica", argv, die_with_parent=False)
        self.start()
        client = redis.Redis(port=primary.port)
        wait_until_sync(
            lambda: _online(client.info("replication")),
            timeout=20,
            what="the replica to be in sync",
        )

    def stop(self, timeout: float = 0) -> None:
        self.kill()
        super().stop()
        self.log_path.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def replica(redis_server: RedisServer, redis_url: str) -> Iterator[Replica]:
    r = Replica(redis_server)
    try:
        yield r
    finally:
        r.stop()


async def test_wait_on_one_redis_with_a_replica(redis_url: str, replica: Replica) -> None:
    """One Redis with a replica: WAIT 1 acknowledges; WAIT 2 refuses with internal "not
    replicated", and the resend under WAIT 1 is the same message (a duplicate), stored once."""
    async with RedisStore(redis_url, wait_replicas=1) as store:
        [ok] = await store.submit([Submission("a", msg(ALICE, BOB))])
        assert not accepted(ok).duplicate
    async with RedisStore(redis_url, wait_replicas=2, wait_timeout=0.1) as store:
        first = msg(ALICE, BOB)
        [r] = await store.submit([Submission("b", first)])
        assert r == Refused("b", Refusal.NOT_REPLICATED)
    async with RedisStore(redis_url, wait_replicas=1) as store:
        [r] = await store.submit([Submission("b", msg(ALICE, BOB))])
        assert accepted(r).duplicate
        assert accepted(r).message.id == first.id
        assert len((await store.read_inbox(BOB, 0, 10)).entries) == 2


async def test_wait_without_a_replica_refuses(redis_url: str) -> None:
    """One Redis without replicas and WAIT 1: every message is refused as not replicated."""
    async with RedisStore(redis_url, wait_replicas=1, wait_timeout=0.05) as store:
        results = await store.submit(
            [Submission("x", msg(ALICE, BOB)), Submission("y", msg(BOB, ALICE))]
        )
    assert [r.why for r in results if isinstance(r, Refused)] == [Refusal.NOT_REPLICATED] * 2


async def test_open_store_picks_the_cluster_by_url(redis_cluster_url: str) -> None:
    """``redis+cluster://`` opens a ClusterStore that answers; a bad node list is refused."""
    store = await open_store(redis_cluster_url)
    try:
        assert isinstance(store, ClusterStore)
        await store.ping()
    finally:
        await store.close()
    with pytest.raises(StoreError, match="redis\\+cluster://HOST:PORT"):
        cluster_nodes("redis+cluster://no-port")
    assert cluster_nodes("redis+cluster://a:1,b:2") == [("a", 1), ("b", 2)]


def users_in_one_slot(n: int) -> list[UserId]:
    """``n`` users whose keys share one slot (so one script call serves them all)."""
    by_slot: dict[int, list[UserId]] = {}
    for u in itertools.count(100):
        users = by_slot.setdefault(key_slot(f"im:{{u:{u}}}:inbox".encode()), [])
        users.append(UserId(u))
        if len(users) == n:
            return users
    raise AssertionError


async def test_users_sharing_a_slot_get_their_own_positions(store: ClusterStore) -> None:
    """Three members whose keys share a slot (one append script for all of them): each
    inbox numbers its own messages, and presence is answered per user."""
    a, b, c = users_in_one_slot(3)
    for u in (a, b, c):
        await store.join(5, u)
    await store.attach(b, GW)
    [p] = await store.submit([Submission("p", msg(a, b))])
    [g] = await store.submit([Submission("g", msg(c, 5, type=MESSAGE_GROUP))])
    assert {r.user_id: position(r.seq) for r in accepted(p).recipients} == {a: 1, b: 1}
    assert {r.user_id: position(r.seq) for r in accepted(g).recipients} == {a: 2, b: 2, c: 1}
    assert dict(accepted(g).presence) == {b: (GW,)}


async def test_a_silent_node_fails_only_the_messages_with_keys_on_it(
    store: ClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node of some slots times out (its replies lost, no failover): a batch's messages with a
    key there (an inbox, a group's members) are refused UNAVAILABLE at once, not after
    the cluster client's retries, and not as NOT_MEMBER; the others are accepted. Once
    the node answers, the resends complete the first messages, each inbox holding them
    once."""
    a, b, c, d = users_in_many_slots(4)
    await store.join(9, a)
    await store.join(9, c)
    silent = {key_slot(f"im:{{u:{b}}}:inbox".encode()), key_slot(b"im:{g:9}:members")}
    real = Nodes._on_nodes

    async def on_nodes(self: Nodes, calls: Any, indexes: Any, *rest: Any) -> Any:
        got = await real(self, calls, indexes, *rest)
        timeout = redis.exceptions.TimeoutError("Timeout reading from Redis")
        return [
            (timeout, False) if calls[i].slot in silent else r
            for i, r in zip(indexes, got, strict=True)
        ]

    monkeypatch.setattr(Nodes, "_on_nodes", on_nodes)
    batch = [
        Submission("p1", msg(a, b)),
        Submission("p2", msg(c, d)),
        Submission("g1", msg(c, 9, type=MESSAGE_GROUP)),
    ]
    async with asyncio.timeout(2):
        results = await store.submit(batch)
    assert [type(r) for r in results] == [Refused, Accepted, Refused]
    assert {r.why for r in results if isinstance(r, Refused)} == {Refusal.UNAVAILABLE}
    silent.clear()
    again = await store.submit(
        [Submission("p1", msg(a, b)), Submission("g1", msg(c, 9, type=MESSAGE_GROUP))]
    )
    assert [accepted(r).message.id for r in again] == [batch[0].message.id, batch[2].message.id]
    assert await inbox_ids(store, b) == [batch[0].message.id]
    assert await inbox_ids(store, a) == [batch[0].message.id, batch[2].message.id]
    assert await inbox_ids(store, c) == [batch[1].message.id, batch[2].message.id]
