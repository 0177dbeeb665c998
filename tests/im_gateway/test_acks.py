"""Acks gathered across connections (:class:`~im_gateway.acks.AckRounds`): the acks asked
for within a round start their writes in one loop turn, so the store carries them in one
call; a closing connection's acks are written at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from im_gateway.acks import AckRounds, Acks
from im_gateway.ids import MessageIds
from im_gateway.metrics import NullMetrics
from im_gateway.store import Accepted, MemoryStore, RedisStore, Store, Submission
from tests.helpers import wait_until
from transmit_hub.types import Message, MessageId, UserId

LINGER = 0.2
"""Long enough that a write started before its round is told apart from one at it."""


class Out:
    """Where a failed ack write would be answered (none here)."""

    closing = False

    def __init__(self) -> None:
        self.pushed: list[str] = []

    def push(self, text: str) -> bool:
        self.pushed.append(text)
        return True

    async def room(self) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed ({code}, {reason}): acks never close a connection")


class Recording(MemoryStore):
    """A memory store that notes the loop time of each ack write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, UserId, int]] = []
        self.gate: asyncio.Event | None = None
        """When set: each write waits for it (a write in flight)."""
        self.fail = 0
        """Writes still to fail (Redis gone, say)."""

    async def ack(self, user: UserId, upto: int) -> None:
        self.writes.append((asyncio.get_running_loop().time(), user, upto))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise ConnectionError("Redis is gone")
        await super().ack(user, upto)


def _acks(user: int, store: Store, rounds: AckRounds | None, out: Out | None = None) -> Acks:
    return Acks(
        UserId(user),
        store=store,
        slots=asyncio.Semaphore(16),
        held_max=64,
        out=out if out is not None else Out(),
        metrics=NullMetrics(),
        rounds=rounds,
    )


_ids = MessageIds()
SENDER = UserId(1000)


async def _fill(store: Store, users: range, n: int = 3) -> None:
    """``n`` messages in each user's inbox (positions 1 to ``n``)."""
    for u in users:
        for i in range(n):
            msg_id, now = _ids.next()
            message = Message(MessageId(msg_id), SENDER, u, 1, 0, now, f"m{i}")
            (result,) = await store.submit([Submission(client_id=f"c-{msg_id}", message=message)])
            assert isinstance(result, Accepted), result


async def test_acks_of_a_round_start_together_after_the_linger() -> None:
    """Three connections ack at different moments of one round: nothing is written
    before the round, then all three in one loop turn, each at its highest position."""
    store = Recording()
    await _fill(store, range(1, 4))
    rounds = AckRounds(LINGER)
    sessions = [_acks(u, store, rounds) for u in range(1, 4)]
    loop = asyncio.get_running_loop()
    asked = loop.time()
    sessions[0].ack(1)
    sessions[0].ack(2)
    await asyncio.sleep(0)
    sessions[1].ack(3)
    sessions[2].ack(1)
    await asyncio.sleep(0)
    assert store.writes == []
    await wait_until(lambda: len(store.writes) == 3, what="the round's three writes")
    times = [t for t, _, _ in store.writes]
    assert max(times) - min(times) < LINGER / 10, store.writes  # one loop turn
    assert min(times) - asked >= LINGER * 0.9
    assert sorted((u, upto) for _, u, upto in store.writes) == [(1, 2), (2, 3), (3, 1)]
    assert [await store.acked(UserId(u)) for u in range(1, 4)] == [2, 3, 1]


async def test_a_closing_connection_writes_its_acks_at_once() -> None:
    """settle() (the connection is closing) does not wait for the round: the client's
    last ack is stored before it could connect again. The others wait for the round."""
    store = Recording()
    await _fill(store, range(1, 3))
    rounds = AckRounds(LINGER)
    closing, staying = _acks(1, store, rounds), _acks(2, store, rounds)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    closing.ack(3)
    staying.ack(2)
    await closing.settle()
    assert await store.acked(UserId(1)) == 3
    assert [(u, upto) for _, u, upto in store.writes] == [(1, 3)]
    assert store.writes[0][0] - asked < LINGER / 2
    await wait_until(lambda: len(store.writes) == 2, what="the round's write")
    assert store.writes[1][1:] == (2, 2)
    assert store.writes[1][0] - asked >= LINGER * 0.9


async def test_acks_during_a_write_go_in_the_next_round() -> None:
    """A client acking every message: what it acks while its write is in flight is
    written at the next round, with the other connections', not right after that write
    in a call of its own."""
    store = Recording()
    await _fill(store, range(1, 2))
    store.gate = asyncio.Event()
    rounds = AckRounds(LINGER)
    acks = _acks(1, store, rounds)
    acks.ack(1)
    await wait_until(lambda: len(store.writes) == 1, what="the first write")
    acks.ack(2)
    acks.ack(3)
    store.gate.set()
    released = asyncio.get_running_loop().time()
    await wait_until(lambda: len(store.writes) == 2, what="the second write")
    assert store.writes[1][1:] == (1, 3)
    assert store.writes[1][0] - released >= LINGER * 0.9
    assert await store.acked(UserId(1)) == 3


async def test_a_failed_round_is_answered_and_the_next_one_writes() -> None:
    """Redis fails a round's write: each connection in it is told to send its ack again
    (type 99 internal), and the rounds go on: the next ack is written at the next round."""
    store = Recording()
    await _fill(store, range(1, 3))
    store.fail = 2
    rounds = AckRounds(LINGER)
    outs = [Out(), Out()]
    sessions = [_acks(u, store, rounds, out) for u, out in zip((1, 2), outs, strict=True)]
    for acks in sessions:
        acks.ack(2)
    await wait_until(lambda: all(o.pushed for o in outs), what="both told")
    for out in outs:
        assert [json.loads(t)["code"] for t in out.pushed] == ["internal"]
    assert [await store.acked(UserId(u)) for u in (1, 2)] == [0, 0]
    for acks in sessions:
        acks.ack(3)

    async def stored() -> bool:
        return [await store.acked(UserId(u)) for u in (1, 2)] == [3, 3]

    await wait_until(stored, what="the next round's writes")


async def test_a_new_connection_has_its_users_acks_written_first() -> None:
    """written(user) (a new connection of that user is about to replay) writes that
    user's acks due at the round now, from every connection of the user, and returns
    once they are stored; other users' wait for the round."""
    store = Recording()
    await _fill(store, range(1, 3))
    rounds = AckRounds(LINGER)
    phone, laptop, other = _acks(1, store, rounds), _acks(1, store, rounds), _acks(2, store, rounds)
    asked = asyncio.get_running_loop().time()
    phone.ack(2)
    laptop.ack(3)
    other.ack(1)
    await rounds.written(UserId(1))
    assert await store.acked(UserId(1)) == 3
    assert sorted(w[1:] for w in store.writes) == [(1, 2), (1, 3)]
    assert max(w[0] for w in store.writes) - asked < LINGER / 2
    await rounds.written(UserId(1))  # nothing due: at once
    await wait_until(lambda: len(store.writes) == 3, what="the other user's round")
    assert store.writes[2][1:] == (2, 1)
    assert store.writes[2][0] - asked >= LINGER * 0.9


async def test_a_new_connection_waits_at_most_two_seconds_for_a_silent_redis() -> None:
    """The other connection's ack write hangs (Redis silent): the new connection's replay
    is held at most 2 s by it, then goes on (its own read meets Redis's timeout)."""
    store = Recording()
    await _fill(store, range(1, 2))
    store.gate = asyncio.Event()  # never set: the write never completes
    rounds = AckRounds(LINGER)
    acks = _acks(1, store, rounds)
    acks.ack(2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(rounds.written(UserId(1)), 5)
    assert 1.9 <= loop.time() - started < 3
    assert acks.task is not None  # still in flight; the session's close cancels it
    acks.task.cancel()


async def test_without_a_linger_each_write_starts_at_once() -> None:
    """--ack-linger 0 (and sessions made without the gateway's rounds): as before."""
    for rounds in (AckRounds(0.0), None):
        store = Recording()
        await _fill(store, range(1, 2))
        acks = _acks(1, store, rounds)
        asked = asyncio.get_running_loop().time()
        acks.ack(2)
        await wait_until(lambda s=store: len(s.writes) == 1, what="the write")  # type: ignore[misc]
        assert store.writes[0][0] - asked < LINGER / 2


async def test_closing_the_rounds_starts_what_is_due() -> None:
    store = Recording()
    await _fill(store, range(1, 2))
    rounds = AckRounds(LINGER)
    acks = _acks(1, store, rounds)
    asked = asyncio.get_running_loop().time()
    acks.ack(3)
    rounds.close()
    rounds.close()  # idempotent
    await wait_until(lambda: len(store.writes) == 1, what="the write")
    assert store.writes[0][0] - asked < LINGER / 2
    assert await store.acked(UserId(1)) == 3


async def test_a_round_is_one_redis_call(redis_url: str, redis_client: aioredis.Redis) -> None:
    """On a real Redis, twenty connections' acks of one round cost one script call; with
    no linger, acks asked for in different loop turns cost one call each (what a gateway
    under moderate load paid: clients ack about every 100 ms, each in a turn of its own)."""

    async def calls_for(rounds: AckRounds) -> int:
        await redis_client.flushall()
        async with RedisStore(redis_url) as store:
            await _fill(store, range(1, 22), n=1)
            await store.ack(UserId(21), 1)  # the ack script loaded
            await redis_client.config_resetstat()
            sessions = [_acks(u, store, rounds) for u in range(1, 21)]
            for acks in sessions:
                acks.ack(1)
                await asyncio.sleep(0)  # each in a loop turn of its own

            async def all_stored() -> bool:
                return [await store.acked(UserId(u)) for u in range(1, 21)] == [1] * 20

            await wait_until(all_stored, what="every ack stored")
            stats: dict[str, Any] = await redis_client.info("commandstats")
            return int(stats["cmdstat_evalsha"]["calls"])

    assert await calls_for(AckRounds(LINGER)) == 1
    assert await calls_for(AckRounds(0.0)) == 20
