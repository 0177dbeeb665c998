"""The store's own Redis connection for batch and ack scripts (im_gateway/store/lane.py),
against real redis-server processes (a silent TCP server only for the timeout)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from im_gateway.store import RedisStore
from im_gateway.store.contract import Accepted, Beacon
from im_gateway.store.lane import Lane
from tests.conftest import RedisServer
from tests.im_gateway.store.test_contract import ALICE, BOB, msg, sub
from transmit_hub.types import GatewayId

GW = GatewayId("gw-beacon")


@pytest.fixture
async def lane(redis_url: str) -> AsyncIterator[Lane]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5)
    one = Lane.of(client)
    assert one is not None
    try:
        yield one
    finally:
        await one.close()
        await client.aclose()


async def test_many_in_flight_get_their_own_replies(lane: Lane) -> None:
    """Commands written back to back are answered in order, each to its caller."""
    replies = await asyncio.gather(*(lane.call("ECHO", f"m{i}") for i in range(300)))
    assert replies == [f"m{i}".encode() for i in range(300)]


async def test_an_error_reply_fails_its_command_only(lane: Lane) -> None:
    """An error reply raises ResponseError for its own command; the others, before and
    after it on the same connection, get their replies."""
    await lane.call("SET", "lane:text", "x")
    replies: list[object] = await asyncio.gather(
        lane.call("ECHO", "a"),
        lane.call("INCR", "lane:text"),
        lane.call("ECHO", "b"),
        return_exceptions=True,
    )
    assert (replies[0], replies[2]) == (b"a", b"b")
    assert isinstance(replies[1], ResponseError)
    assert await lane.call("ECHO", "c") == b"c"


async def test_a_cancelled_caller_does_not_shift_the_replies(lane: Lane) -> None:
    """A caller cancelled after its command went out: its reply is dropped, not given to
    the next caller."""
    await lane.call("PING")  # connected: a call now writes its command at once
    task = asyncio.create_task(lane.call("ECHO", "first"))
    await asyncio.sleep(0)  # let the task run up to waiting for its reply
    assert not task.done()  # written, the reply not read yet
    task.cancel()
    assert await lane.call("ECHO", "second") == b"second"


async def test_a_pipeline_answers_in_order_with_errors_in_place(lane: Lane) -> None:
    """A pipeline's commands go in one write; each reply lands in its own place, an error
    reply as its exception, and the connection carries on."""
    await lane.call("SET", "lane:text", "x")
    replies = await lane.pipeline([("ECHO", "a"), ("INCR", "lane:text"), ("ECHO", "b")])
    assert (replies[0], replies[2]) == (b"a", b"b")
    assert isinstance(replies[1], ResponseError)
    many = await lane.pipeline([("ECHO", f"m{i}") for i in range(2000)])
    assert many == [f"m{i}".encode() for i in range(2000)]
    assert await lane.pipeline([]) == []
    assert await lane.call("ECHO", "c") == b"c"


async def test_a_pipeline_cut_by_the_server_fails_in_place_and_is_not_sent_again() -> None:
    """The peer answers the first command of a pipeline and closes: that command has its
    reply, the others come back as ConnectionError, and none is sent again (one
    connection only: whether they ran is the caller's question)."""

    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(b"+first\r\n")
        await writer.drain()
        writer.close()

    async with _peer_lane(one_then_close) as (lane, accepted):
        replies = await lane.pipeline([("ECHO", "a"), ("ECHO", "b"), ("ECHO", "c")])
        assert replies[0] == b"first"
        assert all(isinstance(r, ConnectionError) for r in replies[1:])
        assert len(accepted) == 1


async def test_a_pipeline_to_a_silent_server_times_out() -> None:
    """No reply within the socket timeout: every command of the pipeline fails with
    TimeoutError, once (no retry), within the bound."""

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    async with _peer_lane(silent, socket_timeout=0.2) as (lane, accepted):
        loop = asyncio.get_running_loop()
        start = loop.time()
        replies = await lane.pipeline([("PING",), ("PING",)])
        assert all(isinstance(r, TimeoutError) for r in replies)
        assert loop.time() - start < 2
        assert len(accepted) == 1


async def test_a_cancelled_pipeline_does_not_shift_the_replies(lane: Lane) -> None:
    """A pipeline cancelled after its commands went out: their replies are dropped, not
    given to the next caller."""
    await lane.call("PING")
    task = asyncio.create_task(lane.pipeline([("ECHO", "one"), ("ECHO", "two")]))
    await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await lane.pipeline([("ECHO", "three")]) == [b"three"]


async def test_it_reconnects_after_the_server_restarts() -> None:
    """A command that finds the connection dead is sent again on a fresh one."""
    server = RedisServer()
    client = aioredis.Redis.from_url(server.url, socket_timeout=5)
    lane = Lane.of(client)
    assert lane is not None
    try:
        await lane.call("SET", "k", "1")
        server.kill()
        server.restart()
        assert await lane.call("ECHO", "back") == b"back"
    finally:
        await lane.close()
        await client.aclose()
        server.stop()


async def test_a_silent_server_times_out_and_is_not_retried() -> None:
    """A reply later than the socket timeout fails the command with redis-py's
    TimeoutError, and the connection is dropped (a late reply can no longer be matched)."""

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    async with _peer_lane(silent, socket_timeout=0.2) as (lane, accepted):
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await lane.call("PING")
        assert loop.time() - start < 2
        assert len(accepted) == 1  # one attempt


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _peer_lane(
    handler: Handler, *, socket_timeout: float = 2.0
) -> AsyncIterator[tuple[Lane, list[asyncio.StreamWriter]]]:
    """A lane (socket timeout ``socket_timeout``) to a peer on the Redis port that runs
    ``handler`` per connection; and the peer's connections, closed at the end."""
    connections: list[asyncio.StreamWriter] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await handler(reader, writer)

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=socket_timeout)
    lane = Lane.of(client)
    assert lane is not None
    try:
        async with asyncio.timeout(10):
            yield lane, connections
    finally:
        await lane.close()
        await client.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


def _hostile_lane(
    answer: bytes,
) -> contextlib.AbstractAsyncContextManager[tuple[Lane, list[asyncio.StreamWriter]]]:
    """A lane to a peer on the Redis port that answers every command's first bytes with
    ``answer``; and the peer's connections."""

    async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                writer.write(answer)
        finally:
            writer.close()

    return _peer_lane(hostile)


async def test_a_server_answering_garbage_fails_the_call() -> None:
    """Bytes that are not RESP: the connection is dropped and the call fails with a
    ConnectionError (after the client's retries, each on a fresh connection)."""
    async with _hostile_lane(b"\x00 not RESP at all\r\n") as (lane, connections):
        with pytest.raises(ConnectionError):
            await lane.call("PING")
        assert len(connections) == 4  # the first try and 3 retries, each dropped


async def test_a_reply_nobody_asked_for_drops_the_connection() -> None:
    """Two replies to one command: the first answers it, the second matches nothing, so
    the connection is dropped (a later reply could be taken for another command's) and
    the next command goes over a fresh one."""
    async with _hostile_lane(b"+OK\r\n+OK\r\n") as (lane, connections):
        assert await lane.call("PING") == b"OK"
        assert await lane.call("PING") == b"OK"
        assert len(connections) == 2


async def test_password_and_database_come_from_the_client() -> None:
    """AUTH and SELECT as the client's URL says; a wrong password is refused."""
    server = RedisServer()
    admin = aioredis.Redis(host="127.0.0.1", port=server.port)
    await admin.config_set("requirepass", "s3cret")
    await admin.aclose()
    good = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/3")
    bad = aioredis.Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/3")
    lanes = [Lane.of(good), Lane.of(bad)]
    try:
        assert lanes[0] is not None
        assert lanes[1] is not None
        await lanes[0].call("SET", "where", "db3")
        assert await good.get("where") == b"db3"
        db0 = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await db0.get("where") is None
        await db0.aclose()
        with pytest.raises(ResponseError):
            await lanes[1].call("PING")
    finally:
        for one in lanes:
            if one is not None:
                await one.close()
        await good.aclose()
        await bad.aclose()
        server.stop()


def test_only_plain_tcp_gets_a_lane() -> None:
    """TLS and Unix sockets stay with redis-py's own connections."""
    assert Lane.of(aioredis.Redis.from_url("redis://127.0.0.1:6379/0")) is not None
    assert Lane.of(aioredis.Redis.from_url("rediss://127.0.0.1:6379/0")) is None
    assert Lane.of(aioredis.Redis.from_url("unix:///tmp/redis.sock")) is None


async def test_a_store_loads_its_script_again_after_a_flush(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    """The batch script on the lane: after SCRIPT FLUSH (a restarted Redis) the next batch
    loads it again and is stored, and acks go the same way."""
    async with RedisStore(redis_url) as store:
        assert store.lane is not None
        assert isinstance((await store.submit([sub("f1", msg(ALICE, BOB))]))[0], Accepted)
        await redis_client.script_flush()
        result = (await store.submit([sub("f2", msg(ALICE, BOB))]))[0]
        assert isinstance(result, Accepted)
        assert not result.duplicate
        await redis_client.script_flush()
        await store.ack(BOB, 2)
        assert await store.acked(BOB) == 2
    with pytest.raises(ConnectionError):
        await store.lane.call("PING")  # closed with the store


async def test_replies_on_time_keep_the_connection_and_a_late_one_still_times_out() -> None:
    """Commands answered within the timeout, sent back to back for over three times the
    timeout on one connection, all succeed (the one timer follows the oldest command in
    flight, not the first one sent); once the server stops answering, the next command
    times out within about the timeout, not later."""
    answering = [True]

    async def ponger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"PING\r\n"):
            if answering[0]:
                writer.write(b"+PONG\r\n")

    async with _peer_lane(ponger, socket_timeout=0.3) as (lane, accepted):
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 1.0:
            assert await lane.call("PING") == b"PONG"
        answering[0] = False
        sent = loop.time()
        with pytest.raises(TimeoutError):
            await lane.call("PING")
        assert 0.25 <= loop.time() - sent < 2
        assert len(accepted) == 1  # one connection throughout, not retried


async def test_the_beacon_goes_on_the_lane(
    redis_url: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The presence watcher's beacon (4 calls a second on an idle gateway) takes the lane,
    not redis-py's pipeline; its answers are the keyspace store's: missing the first time
    and after the mark is deleted, the epoch kept, a new epoch once the data is lost."""
    from redis.asyncio.client import Pipeline

    piped: list[object] = []
    real = Pipeline.execute

    async def recording(self: Pipeline, raise_on_error: bool = True) -> list[object]:
        piped.append(self)
        return await real(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", recording)
    async with RedisStore(redis_url) as store:
        first = await store.beacon(GW, 30)
        assert first.missing
        assert await store.beacon(GW, 30) == Beacon(False, first.epoch)
        await redis_client.delete(f"{store.settings.prefix}gateway:{GW}")
        assert await store.beacon(GW, 30) == Beacon(True, first.epoch)
        await redis_client.flushall()
        lost = await store.beacon(GW, 30)
        assert lost.missing
        assert lost.epoch != first.epoch
    assert piped == []


async def test_a_beacon_whose_connection_is_cut_raises() -> None:
    """A peer that closes the store's connection instead of answering the beacon: the
    beacon raises ConnectionError (the watcher logs it and counts the store as down), not
    an answer made of the errors in their places."""

    async def closer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(closer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    try:
        assert store.lane is not None
        async with asyncio.timeout(10):
            with pytest.raises(ConnectionError):
                await store.beacon(GW, 30)
    finally:
        await store.close()
        server.close()
        await server.wait_closed()


async def test_the_openings_go_on_the_lane(
    redis_url: str, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect's opening read (a call per loop turn, few users each in a reconnect storm)
    takes the lane, not redis-py's script call; after SCRIPT FLUSH it loads the script
    again, and its answers are the stored positions."""
    from redis.commands.core import AsyncScript

    called: list[object] = []
    real = AsyncScript.__call__

    async def recording(self: AsyncScript, *args: object, **kwargs: object) -> object:
        called.append(self)
        return await real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncScript, "__call__", recording)
    async with RedisStore(redis_url) as store:
        assert store.lane is not None
        assert isinstance((await store.submit([sub("o1", msg(ALICE, BOB))]))[0], Accepted)
        await store.ack(BOB, 1)
        await redis_client.script_flush()
        bob, alice = await asyncio.gather(store.opening(BOB), store.opening(ALICE))
        assert (bob.acked, bob.inbox_end, bob.in_groups) == (1, 1, False)
        assert (alice.acked, alice.inbox_end) == (0, 1)
    assert called == []
