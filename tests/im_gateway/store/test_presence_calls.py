"""Presence calls hold Redis for a bounded time: at most ``keys_per_call`` keys per call.

One script call holds single-threaded Redis (every other client waits) for as long as its
keys take, so a gateway's refresh of all its users goes in calls of at most
``keys_per_call`` keys, one after the other. The calls are counted on a real redis-server
(its SLOWLOG with every command logged: the number of keys is the script's third word);
the faults are a real redis-server stopped or killed between two calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from im_gateway.errors import StoreError
from im_gateway.store import ClusterStore, MemoryStore, RedisStore, open_store, scripts
from tests.conftest import RedisServer
from tests.helpers import wait_until
from transmit_hub.types import GatewayId, UserId

GW1, GW2 = GatewayId("gw-1"), GatewayId("gw-2")
N = 7
USERS = [UserId(u) for u in range(1, 51)]  # 50: seven calls of 7 and one of 1
REFRESH_SHA = hashlib.sha1(scripts.REFRESH.encode()).hexdigest().encode()
LOOKUP_SHA = hashlib.sha1(scripts.LOOKUP.encode()).hexdigest().encode()


def presence_key(user: int) -> str:
    return f"im:{{u:{user}}}:presence"


@pytest.fixture(scope="module")
def logged_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own that logs every command in its SLOWLOG."""
    import redis

    server = RedisServer()
    client = redis.Redis(port=server.port)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.close()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def logged(logged_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A client on the emptied logging Redis."""
    logged_redis.flush()
    client = aioredis.Redis(port=logged_redis.port)
    try:
        yield client
    finally:
        await client.aclose()


async def script_calls(client: aioredis.Redis, sha: bytes) -> list[tuple[int, bytes]]:
    """Per call of the script ``sha`` since the last SLOWLOG RESET, oldest first: the
    number of keys and the first key."""
    entries = await client.slowlog_get(100_000)
    calls = []
    for e in reversed(entries):
        args = e["command"].split(b" ")
        if args[0].upper() == b"EVALSHA" and args[1] == sha:
            calls.append((int(args[2]), args[3]))
    return calls


async def expires_at(client: aioredis.Redis, key: str) -> int:
    """The key's expiry (ms since the epoch, Redis's clock; Redis 6.2 has no PEXPIRETIME):
    its PTTL read between two TIMEs, which must agree to the millisecond."""
    for _ in range(1000):
        before = await client.time()
        pttl = await client.pttl(key)
        after = await client.time()
        start = before[0] * 1000 + before[1] // 1000
        if after[0] * 1000 + after[1] // 1000 == start:  # else: read again
            assert pttl > 0, pttl
            return int(start + pttl)
    raise AssertionError("no PTTL read within one millisecond of Redis's clock")


def expected_calls(keys: list[str], n: int) -> list[tuple[int, bytes]]:
    """One call per ``n`` keys, in order: its size and its first key."""
    return [(len(keys[i : i + n]), keys[i].encode()) for i in range(0, len(keys), n)]


def count_pipelines(client: Any) -> list[int]:
    """Spy on ``client``'s pipelines (the real ones, on the real server): the number of
    commands each sends, in order."""
    sizes: list[int] = []
    real = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        async def counted(*a: Any, **kw: Any) -> Any:
            sizes.append(len(pipe.command_stack))
            return await execute(*a, **kw)

        pipe.execute = counted
        return pipe

    client.pipeline = pipeline
    return sizes


async def test_refresh_lookup_and_forget_go_in_calls_of_at_most_n_keys(
    logged_redis: RedisServer, logged: aioredis.Redis
) -> None:
    """50 users with keys_per_call 7: refresh and lookup are 8 script calls each, in the
    users' order, of 7 keys at most; forget is 8 pipelines; and what they write and read
    is what one call of every key writes and reads (the same entries, TTLs and answers)."""
    store = RedisStore(logged_redis.url, keys_per_call=N)
    one_call = RedisStore(logged, keys_per_call=len(USERS))
    try:
        await store.refresh(GW1, [UserId(0)])  # the scripts loaded: no NOSCRIPT retry below
        await store.lookup([UserId(0)])
        await logged.slowlog_reset()
        before = await logged.time()
        await store.refresh(GW1, USERS)
        keys = [presence_key(u) for u in USERS]
        assert await script_calls(logged, REFRESH_SHA) == expected_calls(keys, N)
        assert math.ceil(len(USERS) / N) == 8
        await one_call.refresh(GW2, USERS)  # as before: every key in one call
        assert (await script_calls(logged, REFRESH_SHA))[-1] == (len(USERS), keys[0].encode())
        start_ms = before[0] * 1000 + before[1] // 1000
        end = await logged.time()
        end_ms = end[0] * 1000 + end[1] // 1000
        for user in USERS:
            rows: list[Any] = await logged.zrange(presence_key(user), 0, -1, withscores=True)
            entries = dict(rows)
            assert set(entries) == {b"gw-1", b"gw-2"}
            for score in entries.values():
                assert start_ms + 30_000 <= score <= end_ms + 30_000
            assert await expires_at(logged, presence_key(user)) == max(entries.values())

        await logged.slowlog_reset()
        found = await store.lookup(USERS)
        assert await script_calls(logged, LOOKUP_SHA) == expected_calls(keys, N)
        assert found == await one_call.lookup(USERS) == {u: (GW1, GW2) for u in USERS}

        pipelines = count_pipelines(store.client)
        await store.forget(GW1, USERS)
        assert pipelines == [7, 7, 7, 7, 7, 7, 7, 1]
        assert await store.lookup(USERS) == {u: (GW2,) for u in USERS}
        pipelines.clear()
        await store.forget(GW2, USERS[:N])  # exactly N: one pipeline
        assert pipelines == [N]
        assert await store.lookup(USERS[: N + 1]) == {USERS[N]: (GW2,)}
    finally:
        await store.close()
        await one_call.close()


async def test_watch_and_unwatch_go_in_calls_of_at_most_n_groups(logged: aioredis.Redis) -> None:
    """A gateway watching 20 large groups with keys_per_call 7: three script calls (7, 7,
    6 keys) and, to unwatch, three pipelines."""
    store = RedisStore(logged, keys_per_call=N)
    groups = list(range(1, 21))
    await store.watch(GW1, [99])
    await logged.slowlog_reset()
    await store.watch(GW1, groups)
    keys = [f"im:{{g:{g}}}:gateways" for g in groups]
    assert await script_calls(logged, REFRESH_SHA) == expected_calls(keys, N)
    for key in keys:
        assert await logged.zrange(key, 0, -1) == [b"gw-1"]
    pipelines = count_pipelines(logged)
    await store.unwatch(GW1, groups)
    assert pipelines == [7, 7, 6]
    for key in keys:
        assert not await logged.exists(key)


def same_slot_users(count: int) -> list[UserId]:
    """``count`` users whose keys share one cluster slot (that of user 1)."""
    slot = key_slot(presence_key(1).encode())
    users: list[UserId] = []
    user = 1
    while len(users) < count:
        if key_slot(presence_key(user).encode()) == slot:
            users.append(UserId(user))
        user += 1
    return users


async def test_a_cluster_slot_with_more_than_n_users_takes_several_calls(
    redis_cluster_url: str,
) -> None:
    """On Redis Cluster, 10 users in one slot with keys_per_call 4: refresh and lookup
    are three calls each (4, 4, 2 keys) on that slot's primary, and every user is there."""
    users = same_slot_users(10)
    store = ClusterStore(redis_cluster_url, keys_per_call=4)
    node = None
    try:
        await store.refresh(GW1, users[:1])  # loads the script on every primary
        await store.lookup(users[:1])
        primary = store.client.nodes_manager.get_node_from_slot(
            key_slot(presence_key(users[0]).encode())
        )
        node = aioredis.Redis(host=primary.host, port=int(primary.port))
        await node.config_set("slowlog-log-slower-than", 0)
        await node.slowlog_reset()
        await store.refresh(GW1, users)
        found = await store.lookup(users)
        keys = [presence_key(u) for u in users]
        assert await script_calls(node, REFRESH_SHA) == expected_calls(keys, 4)
        assert await script_calls(node, LOOKUP_SHA) == expected_calls(keys, 4)
        assert found == {u: (GW1,) for u in users}
    finally:
        if node is not None:
            await node.config_set("slowlog-log-slower-than", 10_000)
            await node.aclose()
        await store.close()


# -- the TTL rule of lua/refresh.lua -------------------------------------------------------


async def test_a_presence_key_lives_as_long_as_its_latest_member(logged: aioredis.Redis) -> None:
    """Gateways with TTLs of 0.2, 30 and 60 s: after a refresh every expired member is gone
    and the key's TTL is the latest member's, whichever gateway wrote last, with one, two,
    three or five members."""
    short = RedisStore(logged, presence_ttl=0.2)
    mid = RedisStore(logged, presence_ttl=30)
    long = RedisStore(logged, presence_ttl=60)
    gone, a, b, mid_gw, long_gw = (GatewayId(g) for g in ("gone", "a", "b", "mid", "long"))
    alone, after_gone, over_long, many, longer_first = (UserId(u) for u in range(1, 6))
    await short.refresh(gone, [alone, after_gone, over_long, many])
    await long.refresh(long_gw, [over_long, many, longer_first])
    await mid.refresh(a, [many])
    await mid.refresh(b, [many])

    async def gone_expired() -> bool:
        seconds, micros = await logged.time()
        score = await logged.zscore(presence_key(many), "gone")
        return score is not None and seconds * 1000 + micros // 1000 > score

    await wait_until(gone_expired, timeout=5, what="the 0.2 s entries expired")
    await mid.refresh(mid_gw, [alone, after_gone, over_long, many, longer_first, UserId(6)])

    async def members(user: int) -> set[bytes]:
        rows: list[Any] = await logged.zrange(presence_key(user), 0, -1)
        return set(rows)

    assert await members(alone) == {b"mid"}
    assert await members(after_gone) == {b"mid"}
    assert await members(over_long) == {b"mid", b"long"}
    assert await members(many) == {b"mid", b"long", b"a", b"b"}
    assert await members(longer_first) == {b"mid", b"long"}
    assert await members(6) == {b"mid"}

    async def latest(user: int) -> bytes:
        """The member the key's expiry is the score of."""
        key = presence_key(user)
        at = await expires_at(logged, key)
        rows: list[Any] = await logged.zrange(key, 0, -1, withscores=True)
        found = [member for member, score in rows if score == at]
        assert found, (at, rows)
        return bytes(found[-1])

    for user in (alone, after_gone, 6):
        assert await latest(user) == b"mid"
    for user in (over_long, many, longer_first):  # the 60 s member outlives the refresh's
        assert await latest(user) == b"long"
    await long.refresh(long_gw, [alone])  # a later member written last: the key follows it
    assert await latest(alone) == b"long"


# -- faults between two calls ---------------------------------------------------------------


class Tap:
    """A TCP proxy to ``port`` that calls ``on_script`` (with the count so far) each time
    a client sends an ``EVALSHA``, before forwarding it."""

    def __init__(self, port: int, on_script: Callable[[int], None]) -> None:
        self._target = port
        self._on_script = on_script
        self.scripts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> Tap:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, tap=True)),
            asyncio.create_task(self._pump(up_reader, writer, tap=False)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        writer.transport.abort()
        up_writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, tap: bool
    ) -> None:
        tail = b""
        try:
            while data := await reader.read(65536):
                if tap:
                    seen = (tail + data).upper().count(b"EVALSHA")
                    for _ in range(seen):
                        self.scripts += 1
                        self._on_script(self.scripts)
                    tail = data[-6:]
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)


async def present(client: aioredis.Redis, users: list[UserId]) -> list[UserId]:
    """The users of ``users`` that have a presence key."""
    async with client.pipeline(transaction=False) as pipe:
        for u in users:
            pipe.exists(presence_key(u))
        found = await pipe.execute()
    return [u for u, there in zip(users, found, strict=True) if there]


@pytest.mark.parametrize("fault", ["stopped", "killed"])
async def test_redis_stopped_or_killed_between_two_calls(fault: str) -> None:
    """Redis stopped (SIGSTOP) or killed as the third of 200 refresh calls reaches it: the
    refresh fails with redis-py's usual error within the socket timeout (and the retries
    on a dead connection), nothing hangs, the first calls' users are there and no later
    one, and the next refresh writes every user (the first calls' entries are whole and
    live until then: an entry lives ``presence_ttl``, three refresh intervals)."""
    server = RedisServer()
    users = [UserId(u) for u in range(1, 2001)]
    direct = aioredis.Redis(port=server.port, socket_timeout=5)

    def at_third(count: int) -> None:
        if count == 3 and fault == "stopped":
            os.kill(server.proc.pid, signal.SIGSTOP)
        elif count == 3:
            server.kill()  # and reaped

    try:
        async with Tap(server.port, at_third) as tap:
            store = RedisStore(
                f"redis://127.0.0.1:{tap.port}/0", socket_timeout=0.5, keys_per_call=10
            )
            await store.client.script_load(scripts.REFRESH)
            started = time.monotonic()
            error = RedisTimeoutError if fault == "stopped" else RedisConnectionError
            with pytest.raises(error):
                async with asyncio.timeout(10):
                    await store.refresh(GW1, users)
            assert time.monotonic() - started < 4.0
            if fault == "stopped":
                os.kill(server.proc.pid, signal.SIGCONT)
            else:
                server.restart()
            there = await present(direct, users)
            assert there == users[: len(there)]  # whole calls, in order
            # Stopped: the third call, sent before the stall, may run once Redis resumes
            # (its reply was lost); no later one was sent. Killed: Redis lost everything.
            assert len(there) in ((20, 30) if fault == "stopped" else (0,))
            await store.refresh(GW1, users)
            assert await present(direct, users) == users
            assert await store.lookup(users) == {u: (GW1,) for u in users}
            await store.close()
    finally:
        if server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)
        await direct.aclose()
        server.stop()


# -- the setting -----------------------------------------------------------------------------


async def test_keys_per_call_below_one_is_refused_and_reaches_every_store(
    redis_url: str,
) -> None:
    """keys_per_call 0 or -1 is refused by every store, naming it; open_store hands it to
    the store of any URL (the memory store takes it and has nothing to split)."""
    for bad in (0, -1):
        with pytest.raises(StoreError, match="keys_per_call"):
            RedisStore("redis://127.0.0.1:1/0", keys_per_call=bad)
        with pytest.raises(StoreError, match="keys_per_call"):
            ClusterStore("redis+cluster://127.0.0.1:1", keys_per_call=bad)
        with pytest.raises(StoreError, match="keys_per_call"):
            MemoryStore(keys_per_call=bad)
    memory = await open_store("memory://", keys_per_call=3)
    await memory.refresh(GW1, USERS)
    assert await memory.lookup(USERS) == {u: (GW1,) for u in USERS}
    store = await open_store(redis_url, keys_per_call=3)
    try:
        assert isinstance(store, RedisStore)
        assert store.settings.keys_per_call == 3
    finally:
        await store.close()
