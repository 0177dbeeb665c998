"""The Python client library against a faulty or hostile gateway: one that goes silent,
freezes behind a dead link, or sends what the protocol does not allow. The client must
leave such a gateway within a bound, keep its memory bounded, and never show a message
twice nor acknowledge one it has not shown."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

import im_gateway.client
from im_gateway.client import Client, Refused
from im_gateway.client_protocol import INBOX
from im_gateway.client_state import ClientState
from tests.helpers import wait_until
from tests.proxy import FreezableProxy

TOKEN = "e30.eyJzdWIiOiIxIn0.x"  # {"sub": "1"}, unsigned: these servers do not check it
ME, OTHER = 1, 2

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, int]]:
    async with serve(handler, "127.0.0.1", 0) as s:
        port = next(iter(s.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", port


async def answers(ws: ServerConnection) -> None:
    """A gateway that keeps the protocol: the end marker, then answers sends and heartbeats."""
    await ws.send('{"type":14,"seq":"0"}')
    async for data in ws:
        frame = json.loads(data)
        if frame["type"] == 0:
            await ws.send('{"type":0}')
        elif frame["type"] == 1:
            await ws.send(json.dumps({"type": 10, "id": frame["id"], "msgId": "m1", "time": "1"}))


def message(msg_id: str, seq: str) -> str:
    return json.dumps(
        {
            "type": 1,
            "id": msg_id,
            "from": OTHER,
            "to": ME,
            "contentType": 0,
            "time": "1",
            "content": msg_id,
            "seq": seq,
        }
    )


def taken(state: ClientState) -> list[str]:
    out = []
    while (m := state.take_message()) is not None:
        out.append(m.id)
    return out


@pytest.fixture
def quick_heartbeats(monkeypatch: pytest.MonkeyPatch) -> float:
    """Heartbeats after 0.2 quiet seconds, and 0.3 s for an answer; returns the bound."""
    monkeypatch.setattr(im_gateway.client, "HEARTBEAT_INTERVAL", 0.2)
    monkeypatch.setattr(im_gateway.client, "HEARTBEAT_TIMEOUT", 0.3, raising=False)
    return 0.5


async def test_a_gateway_that_says_nothing_is_left_for_the_next_url(
    quick_heartbeats: float,
) -> None:
    """A gateway that takes the WebSocket (its library answers pings) and then sends
    nothing, not even an answer to heartbeats: within the heartbeat bound the client
    gives up on it, and its send is answered by the next URL."""

    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async with (
        server(silent) as (a, _),
        server(answers) as (b, _),
        Client([a, b], token=TOKEN) as client,
    ):
        started = time.monotonic()
        sent = await asyncio.wait_for(client.send(to=OTHER, content="x"), 5)
        assert sent.msg_id == "m1"
        assert client.url == b
        assert time.monotonic() - started < quick_heartbeats + 2


async def test_a_gateway_frozen_mid_stream_is_left_for_the_next_url(
    quick_heartbeats: float,
) -> None:
    """A gateway behind a link that freezes (no FIN, no RST, nothing forwarded) after the
    connect replay: the client's send goes to the next URL within the heartbeat bound,
    not after the WebSocket library's 40 s of pings."""
    async with (
        server(answers) as (_, port),
        server(answers) as (b, _),
        FreezableProxy("127.0.0.1", port) as proxy,
    ):
        a = f"ws://{proxy.address}/ws"
        async with Client([a, b], token=TOKEN) as client:
            await asyncio.wait_for(client.send(to=OTHER, content="x"), 5)
            assert client.url == a
            proxy.freeze()
            started = time.monotonic()
            await asyncio.wait_for(client.send(to=OTHER, content="y"), 5)
            assert client.url == b
            assert time.monotonic() - started < quick_heartbeats + 2
            proxy.thaw()


async def test_a_handshake_that_never_completes_is_given_up_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes the TCP connection and never answers the upgrade: the client
    tries the next URL after CONNECT_TIMEOUT."""
    monkeypatch.setattr(im_gateway.client, "CONNECT_TIMEOUT", 0.3)
    held: list[asyncio.StreamWriter] = []

    async def mute(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    tcp = await asyncio.start_server(mute, "127.0.0.1", 0)
    a = f"ws://127.0.0.1:{tcp.sockets[0].getsockname()[1]}/ws"
    try:
        async with server(answers) as (b, _), Client([a, b], token=TOKEN) as client:
            await asyncio.wait_for(client.send(to=OTHER, content="x"), 5)
            assert client.url == b
            assert held
    finally:
        for writer in held:
            writer.close()
        tcp.close()


@pytest.fixture
def quick_answers(monkeypatch: pytest.MonkeyPatch) -> float:
    """Frames owed an answer for 0.5 s without one: the next URL; heartbeats every 0.1 s
    (answered, so the heartbeat bound never fires). Returns the bound."""
    monkeypatch.setattr(im_gateway.client, "ANSWER_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(im_gateway.client, "HEARTBEAT_INTERVAL", 0.1)
    monkeypatch.setattr(im_gateway.client, "HEARTBEAT_TIMEOUT", 0.3, raising=False)
    return 0.5


def recording(frames: list[dict[str, object]], *, answer: bool, push_every: float = 0.0) -> Handler:
    """A gateway that records what it is sent: the end marker, heartbeats answered, and
    sends answered (type 10, message id ``m-<client id>``) only with ``answer``; with
    ``push_every``, a message pushed that often besides (its hub link works)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type":14,"seq":"0"}')

        async def push() -> None:
            for pos in range(1, 1_000_000):
                await asyncio.sleep(push_every)
                await ws.send(message(f"p{pos}", str(pos)))

        pusher = asyncio.create_task(push()) if push_every else None
        try:
            async for data in ws:
                frame = json.loads(data)
                frames.append(frame)
                if frame["type"] == 0:
                    await ws.send('{"type":0}')
                elif frame["type"] == 1 and answer:
                    cid = frame["id"]
                    await ws.send(
                        json.dumps({"type": 10, "id": cid, "msgId": f"m-{cid}", "time": "1"})
                    )
        finally:
            if pusher is not None:
                pusher.cancel()

    return handler


@pytest.mark.parametrize("pushes", [False, True], ids=["heartbeats-only", "delivering"])
async def test_a_gateway_that_answers_heartbeats_but_no_send_is_left_for_the_next_url(
    quick_answers: float, caplog: pytest.LogCaptureFixture, pushes: bool
) -> None:
    """A gateway that answers heartbeats (and, in one case, keeps delivering messages, as
    one with a stuck store but a working hub link does) but never answers a send: within
    the answer bound the client leaves it; its three sends go to the next URL once each,
    with the client ids they had, and are answered there; one log line, not one per send."""
    stuck: list[dict[str, object]] = []
    good: list[dict[str, object]] = []
    caplog.set_level("WARNING", logger="im_gateway.client")
    async with (
        server(recording(stuck, answer=False, push_every=0.02 if pushes else 0.0)) as (a, _),
        server(recording(good, answer=True)) as (b, _),
        Client([a, b], token=TOKEN) as client,
    ):
        started = time.monotonic()
        sends = [client.send(to=OTHER, content=f"x{i}") for i in range(3)]
        sent = await asyncio.wait_for(asyncio.gather(*sends), quick_answers + 5)
        assert time.monotonic() - started < quick_answers + 2
        assert client.url == b
        first = [f["id"] for f in stuck if f["type"] == 1]
        again = [f["id"] for f in good if f["type"] == 1]
        assert len(first) == 3
        assert again == first, "resent to the next URL once each, with the same client ids"
        assert [s.msg_id for s in sent] == [f"m-{cid}" for cid in first]
        assert any(f["type"] == 0 for f in stuck), "the stuck gateway answered heartbeats"
    left = [r for r in caplog.records if "answered none of the frames" in r.getMessage()]
    assert len(left) == 1, [r.getMessage() for r in caplog.records]


async def test_answers_that_come_slowly_one_after_another_keep_the_connection(
    quick_answers: float,
) -> None:
    """A gateway that answers a batch slowly (one answer every 0.2 s, ten sends: 2 s in
    all, four times the bound) is making progress: the client stays on it."""

    async def slow(ws: ServerConnection) -> None:
        await ws.send('{"type":14,"seq":"0"}')
        owed: asyncio.Queue[str] = asyncio.Queue()

        async def answer() -> None:
            while True:
                cid = await owed.get()
                await asyncio.sleep(0.2)
                await ws.send(json.dumps({"type": 10, "id": cid, "msgId": f"m-{cid}", "time": "1"}))

        answering = asyncio.create_task(answer())
        try:
            async for data in ws:
                frame = json.loads(data)
                if frame["type"] == 0:
                    await ws.send('{"type":0}')
                elif frame["type"] == 1:
                    owed.put_nowait(frame["id"])
        finally:
            answering.cancel()

    async with (
        server(slow) as (a, _),
        server(answers) as (b, _),
        Client([a, b], token=TOKEN) as client,
    ):
        sent = await asyncio.wait_for(
            asyncio.gather(*(client.send(to=OTHER, content=f"x{i}") for i in range(10))), 10
        )
        assert [s.msg_id for s in sent] == [f"m-{s.client_id}" for s in sent]
        assert client.connections == 1
        assert client.url == a


@pytest.fixture
def quick_internal(monkeypatch: pytest.MonkeyPatch) -> float:
    """Frames refused ``internal`` three times in a row (INTERNAL_STREAK) over 0.3 s, none
    succeeding: the next URL; retries after at most 0.1 s, heartbeats every 0.1 s
    (answered, so no other bound fires). Returns the bound."""
    monkeypatch.setattr(im_gateway.client, "INTERNAL_TIMEOUT", 0.3, raising=False)
    monkeypatch.setattr(im_gateway.client, "RETRY_MAX", 0.1)
    monkeypatch.setattr(im_gateway.client, "HEARTBEAT_INTERVAL", 0.1)
    return 0.3


def refusing(
    frames: list[dict[str, object]], refused: list[float], code: str, *, until: float = 1e9
) -> Handler:
    """A gateway that records what it is sent (and, in ``refused``, when it refused): the
    end marker, heartbeats answered, every send refused ``code`` for ``until`` seconds of
    each connection, answered (``m-<client id>``) after that."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"type":14,"seq":"0"}')
        opened = time.monotonic()
        async for data in ws:
            frame = json.loads(data)
            frames.append(frame)
            cid = frame.get("id")
            if frame["type"] == 0:
                await ws.send('{"type":0}')
            elif frame["type"] == 1 and time.monotonic() - opened < until:
                refused.append(time.monotonic())
                message = "storage unavailable; send again"
                await ws.send(json.dumps({"type": 99, "id": cid, "code": code, "message": message}))
            elif frame["type"] == 1:
                await ws.send(json.dumps({"type": 10, "id": cid, "msgId": f"m-{cid}", "time": "1"}))

    return handler


async def test_a_gateway_that_refuses_every_send_internal_is_left_for_the_next_url(
    quick_internal: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway cut off from its Redis answers heartbeats but refuses every send
    ``internal`` (an answer, so ANSWER_TIMEOUT never fires): after INTERNAL_STREAK refusals
    in a row spanning INTERNAL_TIMEOUT the client leaves it; its three sends go to the next
    URL once each, with the client ids they had, and are stored there; one log line."""
    stuck: list[dict[str, object]] = []
    good: list[dict[str, object]] = []
    refused: list[float] = []
    caplog.set_level("WARNING", logger="im_gateway.client")
    async with (
        server(refusing(stuck, refused, "internal")) as (a, _),
        server(recording(good, answer=True)) as (b, _),
        Client([a, b], token=TOKEN) as client,
    ):
        started = time.monotonic()
        sends = [client.send(to=OTHER, content=f"x{i}") for i in range(3)]
        sent = await asyncio.wait_for(asyncio.gather(*sends), quick_internal + 5)
        assert time.monotonic() - started < quick_internal + 2
        assert client.url == b
        assert client.connections == 2
        first = list(dict.fromkeys(f["id"] for f in stuck if f["type"] == 1))
        again = [f["id"] for f in good if f["type"] == 1]
        assert len(first) == 3
        assert again == first, "resent to the next URL once each, with the same client ids"
        assert [s.msg_id for s in sent] == [f"m-{cid}" for cid in first]
        assert refused[-1] - refused[0] >= quick_internal, "left only after the span"
    left = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(left) == 1, [r.getMessage() for r in caplog.records]


async def test_with_one_url_a_gateway_refusing_internal_is_reconnected_to(
    quick_internal: float,
) -> None:
    """The only URL refuses every send ``internal`` on its first connection (its Redis
    unreachable there) and stores it on the next: the client reconnects to it and the send
    is stored, with the client id it had."""
    frames: list[dict[str, object]] = []
    refused: list[float] = []
    connections = itertools.count()

    async def once_stuck(ws: ServerConnection) -> None:
        until = 1e9 if next(connections) == 0 else 0.0
        await refusing(frames, refused, "internal", until=until)(ws)

    async with server(once_stuck) as (a, _), Client(a, token=TOKEN) as client:
        sent = await asyncio.wait_for(client.send(to=OTHER, content="x"), quick_internal + 5)
        assert client.connections == 2
        assert {f["id"] for f in frames if f["type"] == 1} == {sent.client_id}
        assert sent.msg_id == f"m-{sent.client_id}"


async def test_rate_limited_refusals_alone_do_not_make_the_client_leave(
    quick_internal: float,
) -> None:
    """A gateway that refuses every send ``rate_limited`` (this user sends too fast) for
    three times INTERNAL_TIMEOUT, many times in a row, then stores it: the client stays on
    it (the gateway works; another one would say the same)."""
    frames: list[dict[str, object]] = []
    refused: list[float] = []
    handler = refusing(frames, refused, "rate_limited", until=3 * quick_internal)
    async with (
        server(handler) as (a, _),
        server(answers) as (b, _),
        Client([a, b], token=TOKEN) as client,
    ):
        sent = await asyncio.wait_for(client.send(to=OTHER, content="x"), 5)
        assert sent.msg_id == f"m-{sent.client_id}"
        assert client.connections == 1
        assert client.url == a
        assert len(refused) >= 3
        assert refused[-1] - refused[0] >= quick_internal


async def test_internal_refusals_between_successes_keep_the_connection(
    quick_internal: float,
) -> None:
    """A gateway whose store fails now and then: each send's first try is refused
    ``internal``, its retry stored, for four times INTERNAL_TIMEOUT. Refusals span the
    bound, but a success comes between them: the client stays."""
    tried: set[str] = set()
    refused: list[float] = []

    async def flaky(ws: ServerConnection) -> None:
        await ws.send('{"type":14,"seq":"0"}')
        async for data in ws:
            frame = json.loads(data)
            cid = frame.get("id")
            if frame["type"] == 0:
                await ws.send('{"type":0}')
            elif cid not in tried:
                tried.add(cid)
                refused.append(time.monotonic())
                await ws.send(json.dumps({"type": 99, "id": cid, "code": "internal"}))
            else:
                await ws.send(json.dumps({"type": 10, "id": cid, "msgId": f"m-{cid}", "time": "1"}))

    async with (
        server(flaky) as (a, _),
        server(answers) as (b, _),
        Client([a, b], token=TOKEN) as client,
    ):
        started = time.monotonic()
        while time.monotonic() - started < 4 * quick_internal:
            await asyncio.wait_for(client.send(to=OTHER, content="x"), 5)
        assert client.connections == 1
        assert len(refused) >= 3
        assert refused[-1] - refused[0] >= quick_internal


async def test_sends_beyond_max_unanswered_are_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With MAX_UNANSWERED frames waiting (here 2, disconnected), one more raises
    ``Refused("backlog")`` at once instead of growing memory."""
    monkeypatch.setattr(im_gateway.client, "MAX_UNANSWERED", 2, raising=False)
    async with server(lambda ws: ws.wait_closed()) as (a, _):
        pass  # a port that was just closed: nothing answers there
    client = Client(a, token=TOKEN)
    waiting = [asyncio.ensure_future(client.send(to=OTHER, content=str(i))) for i in range(2)]
    await wait_until(lambda: client._state.unanswered == 2, what="both sends submitted")
    with pytest.raises(Refused) as refused:
        await asyncio.wait_for(client.send(to=OTHER, content="one too many"), 5)
    assert refused.value.code == "backlog"
    await client.close()
    for future in waiting:
        with pytest.raises(Refused):
            await future


# --- the pure core against hostile frames ----------------------------------------------


@pytest.mark.parametrize("stream", [INBOX, "g1"])
def test_a_seq_beyond_uint64_is_dropped_and_does_not_end_the_stream(stream: str) -> None:
    """``"g1:99999999999999999999"`` (or the inbox's) is no position: the frame is counted
    and dropped, and the stream's next messages are still shown and acknowledged."""
    prefix = f"{stream}:" if stream else ""
    s = ClientState(ME, id_prefix="t")
    s.connected()
    s.received('{"type":14,"seq":"0"}')
    s.received(message("m1", f"{prefix}1"))
    s.received(message("bad", f"{prefix}99999999999999999999"))
    s.received(message("m2", f"{prefix}2"))
    assert taken(s) == ["m1", "m2"]
    assert s.ignored == 1
    assert s.ack_frames() == [json.dumps({"type": 11, "seq": f"{prefix}2"}, separators=(",", ":"))]


def test_truncated_markers_are_bounded() -> None:
    """A gateway repeating ``truncated`` end markers: ``truncated`` keeps the newest
    ``truncated_max`` seqs, not one per frame forever."""
    s = ClientState(ME, id_prefix="t", truncated_max=3)
    s.connected()
    for pos in range(1, 11):
        s.received(json.dumps({"type": 14, "seq": str(pos), "truncated": True}))
    assert s.truncated == ["8", "9", "10"]


async def test_a_gateway_that_keeps_closing_1012_is_not_reconnected_to_at_once_forever() -> None:
    """Every connection closed at once with 1012 (a gateway that says it drains, again
    and again): the first RESTART_AT_ONCE reconnects are at once, then the backoff holds
    (before: about 1,000 connections a second, for as long as it lasted)."""
    opened: list[float] = []  # when each connection came

    async def draining(ws: ServerConnection) -> None:
        opened.append(time.monotonic())
        await ws.close(1012, "service restart")

    async with server(draining) as (a, _), Client(a, token=TOKEN):
        at_once = getattr(im_gateway.client, "RESTART_AT_ONCE", 10)
        await wait_until(lambda: len(opened) > at_once + 3, what="reconnects past the at-once")
    # The first connection and RESTART_AT_ONCE more at once; each after those waits a
    # backoff (at least half of BACKOFF_INITIAL, growing).
    gaps = [b - a for a, b in itertools.pairwise(opened[at_once:])]
    assert min(gaps[:3]) >= im_gateway.client.BACKOFF_INITIAL / 2 * 0.9, gaps
