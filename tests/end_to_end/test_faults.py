"""Nothing acknowledged is ever skipped: faults between the steps of a message's path.

Each recipient here is a normal client: it stays connected and acknowledges (type 11)
the highest seq it has seen. Every test ends by checking that the recipient has every
message its sender got a type 10 for, and, after reconnecting with its acknowledged
position, that the replay brings nothing it missed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from im_gateway.faults import ENV as FAULTS_ENV
from im_gateway.gateway import Gateway
from tests.conftest import RedisServer
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client, Frame, GatewayProcess
from tests.helpers import wait_until
from transmit_hub.server import HubServer

pytestmark = pytest.mark.slow

ALICE, BOB, CAROL = 1, 2, 3


class AckingClient:
    """Wraps a :class:`Client`: acknowledges the highest seq seen, as the chat page does."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._acked = 0
        self._sends: set[asyncio.Task[None]] = set()
        client.listeners.append(self._seen)

    def _seen(self, frame: Frame) -> None:
        """On each message: acknowledge the highest seq seen so far."""
        if frame.get("type") not in (1, 2):
            return
        top = max(self._acked, int(frame["seq"]))
        if top > self._acked:
            self._acked = top
            task = asyncio.ensure_future(self.client.send({"type": 11, "seq": str(top)}))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def close(self) -> None:
        await asyncio.gather(*self._sends, return_exceptions=True)

    def assert_in_order(self) -> None:
        """Positions rise with no repeats on this connection (no holes: checked by content)."""
        seqs = [int(m["seq"]) for m in self.client.messages()]
        assert seqs == sorted(set(seqs)), f"out of order or repeated: {seqs}"


async def replay_after_ack(gateway: Gateway | int, user: int) -> list[Frame]:
    """Connect ``user`` again and return the messages its replay brings."""
    port = gateway if isinstance(gateway, int) else gateway.port
    client = await Client.open(port, user)
    try:
        await client.wait_for(lambda f: f["type"] == 14, what="the end marker")
        return client.messages()
    finally:
        await client.close()


async def assert_replay_empty(gateway: Gateway | int, user: int, within: float = 10.0) -> None:
    """A replay after the user's last ack brings nothing, once the gateway has stored that
    ack: the client's ack frame is written before the gateway stores it (a Redis round
    trip later), so a replay opened at once may still see the previous position. Each try
    is a fresh connection; acks never stored fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while left := await replay_after_ack(gateway, user):
        assert time.monotonic() < deadline, left


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A Redis of this test's own (it is stopped, paused or restarted), with AOF."""
    server = RedisServer(aof=True)
    try:
        yield server
    finally:
        with_signal(server, signal.SIGCONT)
        server.stop()


def with_signal(server: RedisServer, sig: int) -> None:
    if server.proc.poll() is None:
        os.kill(server.proc.pid, sig)


async def test_resend_after_the_sending_gateway_died_between_store_and_answer_reaches_bob(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """Gateway killed after storing a message, before answering: alice resends it elsewhere
    with the same client id, gets the original msgId, and bob (connected, acking the
    highest seq) gets it live: the duplicate is pushed again."""
    gw_bob = await start_gateway("gw-bob")
    gw_alice2 = await start_gateway("gw-alice2")
    dying = GatewayProcess(
        gateway_id="gw-dying",
        hub=hub.address,
        redis_url=redis_url,
        env={FAULTS_ENV: "crash-after-store:3"},
    )
    bob = AckingClient(await open_client(gw_bob, BOB))
    try:
        await dying.wait_healthy()
        alice = await Client.open(dying.port, ALICE)
        await alice.wait_for(lambda f: f["type"] == 14)
        acked = [await alice.say(BOB, f"m{i}", cid=f"a-{i}") for i in (1, 2)]
        assert [f["type"] for f in acked] == [10, 10]
        await alice.send({"type": 1, "id": "a-3", "to": BOB, "content": "m3"})
        await asyncio.wait_for(alice.closed, 10)  # batch 3 stored, then SIGKILL
        assert dying.proc.wait(10) == -signal.SIGKILL
        await alice.close()
        # The client resends its unanswered frame to another gateway, then goes on.
        again = await open_client(gw_alice2, ALICE)
        third = await again.say(BOB, "m3", cid="a-3")
        assert third["type"] == 10
        for i in (4, 5):
            assert (await again.say(BOB, f"m{i}", cid=f"a-{i}"))["type"] == 10
        await bob.client.wait_contents([f"m{i}" for i in range(1, 6)], timeout=10)
        assert bob.client.contents() == [f"m{i}" for i in range(1, 6)]
        bob.assert_in_order()
        await wait_until(lambda: bob._acked == int(bob.client.messages()[-1]["seq"]))
    finally:
        await bob.close()
        dying.stop()
    await assert_replay_empty(gw_bob, BOB)  # nothing acked was skipped


async def test_redis_stalled_past_the_socket_timeout_loses_no_push(
    hub: HubServer,
    own_redis: RedisServer,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """Redis SIGSTOPped longer than --redis-timeout while alice sends: her frame is answered
    internal, the stored batch's reply was lost; her resend is a duplicate that is pushed,
    so bob, acking the highest seq, misses nothing."""
    options = {"redis_url": own_redis.url, "redis_timeout": 0.5}
    gw_alice = await start_gateway("gw-a", **options)
    gw_bob = await start_gateway("gw-b", **options)
    alice = await open_client(gw_alice, ALICE)
    bob = AckingClient(await open_client(gw_bob, BOB))
    try:
        assert (await alice.say(BOB, "before", cid="s-1"))["type"] == 10
        await bob.client.wait_contents(["before"])
        with_signal(own_redis, signal.SIGSTOP)
        try:
            answer = await alice.say(BOB, "during", cid="s-2")
            assert answer["type"] == 99, answer  # the gateway gave up on the stalled Redis
            assert answer["code"] == "internal"
        finally:
            with_signal(own_redis, signal.SIGCONT)
        # Resend until accepted, as a client does with an unanswered or refused frame
        # (each try waits for its answer).
        deadline = time.monotonic() + 15
        while True:
            alice.frames.clear()
            answer = await alice.say(BOB, "during", cid="s-2")
            if answer["type"] == 10:
                break
            assert time.monotonic() < deadline, answer
        assert (await alice.say(BOB, "after", cid="s-3"))["type"] == 10
        await bob.client.wait_contents(["before", "during", "after"], timeout=10)
        assert bob.client.contents() == ["before", "during", "after"]
        bob.assert_in_order()
        await wait_until(lambda: bob._acked == int(bob.client.messages()[-1]["seq"]))
    finally:
        await bob.close()
    await assert_replay_empty(gw_bob, BOB)


async def test_redis_restarted_with_aof_pushes_resume_and_replays_answer(
    hub: HubServer,
    own_redis: RedisServer,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """Redis SIGKILLed and started again on its AOF: within a second of it answering, live
    pushes flow again, and clients that reconnect get their replay (no ``internal``)."""
    options = {"redis_url": own_redis.url}
    gw_alice = await start_gateway("gw-a", **options)
    gw_bob = await start_gateway("gw-b", **options)
    alice = await open_client(gw_alice, ALICE)
    bob = AckingClient(await open_client(gw_bob, BOB))
    carols = [await open_client(gw_bob, CAROL + i) for i in range(5)]
    try:
        assert (await alice.say(BOB, "before", cid="r-1"))["type"] == 10
        await bob.client.wait_contents(["before"])
        await wait_until(lambda: bob._acked > 0)
        # SIGKILL, not a machine crash: AOF is written at every event-loop turn and only
        # fsynced every second, so the process's death loses nothing.
        own_redis.kill()
        own_redis.restart()
        answering = time.monotonic()
        answer = await alice.say(BOB, "after", cid="r-2")
        assert answer["type"] == 10, answer
        await bob.client.wait_contents(["after"], timeout=5)
        assert time.monotonic() - answering < 1.0 + 1.0  # 1 s after Redis answers (+ slack)
        # Every pooled connection died with the server: replays must still answer.
        for carol in carols:
            await carol.close()
        for i in range(5):
            again = await Client.open(gw_bob.port, CAROL + i)
            try:
                end = await again.wait_for(lambda f: f["type"] in (14, 99), what="a replay")
                assert end["type"] == 14, end
            finally:
                await again.close()
        assert bob.client.contents() == ["before", "after"]
        bob.assert_in_order()
    finally:
        await bob.close()


async def test_redis_restarted_without_persistence_pushes_resume_within_a_second(
    hub: HubServer,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """A Redis that lost everything: the gateways re-assert their presence as soon as it
    answers (not at the next refresh), and a connected bob gets new messages live although
    positions start again from 1."""
    redis = RedisServer(aof=False)
    try:
        options = {"redis_url": redis.url}
        gw_alice = await start_gateway("gw-a", **options)
        gw_bob = await start_gateway("gw-b", **options)
        alice = await open_client(gw_alice, ALICE)
        bob = AckingClient(await open_client(gw_bob, BOB))
        try:
            for i in range(3):
                assert (await alice.say(BOB, f"old{i}", cid=f"o-{i}"))["type"] == 10
            await bob.client.wait_contents(["old0", "old1", "old2"])
            redis.kill()
            redis.restart()
            restarted = time.monotonic()
            deadline = restarted + 10
            while True:  # the client resends until Redis takes it (each try is answered)
                alice.frames.clear()
                answer = await alice.say(BOB, "new", cid="n-1")
                if answer["type"] == 10:
                    break
                assert time.monotonic() < deadline
            await bob.client.wait_contents(["new"], timeout=3)
            assert time.monotonic() - restarted < 3.0  # presence_ttl / 3 = 10 s before
        finally:
            await bob.close()
    finally:
        redis.stop()


async def test_a_dropped_push_is_healed_by_the_next_one(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The push of m2 is lost on its way to the hub: when m3 arrives, bob's session fills
    the hole from the inbox, so he gets m1, m2, m3 in order without reconnecting."""
    monkeypatch.setenv(FAULTS_ENV, "drop-push:2")
    gw_alice = await start_gateway("gw-a")
    monkeypatch.delenv(FAULTS_ENV)
    gw_bob = await start_gateway("gw-b")
    alice = await open_client(gw_alice, ALICE)
    bob = AckingClient(await open_client(gw_bob, BOB))
    try:
        for i in (1, 2, 3):
            assert (await alice.say(BOB, f"m{i}", cid=f"d-{i}"))["type"] == 10
        await bob.client.wait_contents(["m1", "m2", "m3"])
        assert bob.client.contents() == ["m1", "m2", "m3"]
        bob.assert_in_order()
        assert not bob.client.closed.done()
    finally:
        await bob.close()


async def test_trimmed_history_is_said_in_the_end_marker(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """An offline user flooded past --inbox-max-len: the replay's end marker says
    ``truncated``; one whose unacknowledged messages are all there gets no such flag."""
    gateway = await start_gateway("gw-t", inbox_max_len=100, rate_limit=0)
    alice = await open_client(gateway, ALICE)
    for i in range(3):
        assert (await alice.say(CAROL, f"c{i}", cid=f"c-{i}"))["type"] == 10
    for i in range(450):  # Redis trims whole stream nodes of 100: far past the limit
        await alice.send({"type": 1, "id": f"t-{i}", "to": BOB, "content": f"t{i}"})
    await alice.wait_for(lambda f: f.get("id") == "t-449" and f["type"] == 10, timeout=30)
    bob = await open_client(gateway, BOB, replayed=False)
    end = await bob.wait_for(lambda f: f["type"] == 14, what="the end marker", timeout=20)
    assert end.get("truncated") is True, end
    got = bob.contents()
    assert got[-1] == "t449"
    assert 100 <= len(got) < 450
    assert int(end["seq"]) == 450
    carol = await open_client(gateway, CAROL, replayed=False)
    end = await carol.wait_for(lambda f: f["type"] == 14)
    assert "truncated" not in end, end
    assert carol.contents() == ["c0", "c1", "c2"]
