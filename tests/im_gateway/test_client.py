"""The client library's asyncio adapter (im_gateway.client) against small local WebSocket
servers on real sockets: what it imports, reconnecting at once after 1012, resending
with the same id, acknowledging at most every 100 ms and once more on close."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

import im_gateway.client
from im_gateway.client import Client, Message, Refused, Sent
from im_gateway.client_protocol import token_subject
from tests.helpers import wait_until

TOKEN = "e30.eyJzdWIiOiIxIn0.x"  # {"sub": "1"}, unsigned: these servers do not check it

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0) as s:
        port = next(iter(s.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


def test_the_client_imports_only_the_standard_library_and_websockets() -> None:
    """``import im_gateway.client`` in a fresh interpreter loads nothing but the standard
    library, websockets and the client's own modules (no grpc, redis, aiohttp)."""
    code = (
        "import sys; before = set(sys.modules); import im_gateway.client; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    outside = {m.split(".")[0] for m in out} - set(sys.stdlib_module_names)
    assert outside == {"im_gateway", "websockets"}
    ours = {m for m in out if m.startswith("im_gateway")}
    assert ours == {
        "im_gateway",
        "im_gateway.client",
        "im_gateway.client_protocol",
        "im_gateway.client_sends",
        "im_gateway.client_state",
        "im_gateway.client_streams",
        "im_gateway.client_watch",
        "im_gateway.close_codes",
    }


def test_exported_names_and_token_subject() -> None:
    """The pinned names are exported; the user id is read from the token's ``sub``."""
    assert set(im_gateway.client.__all__) >= {"Client", "Refused", "Sent", "Message"}
    assert issubclass(Refused, im_gateway.client.ClientError)
    assert token_subject(TOKEN) == 1
    assert token_subject("e30.eyJzdWIiOjQyfQ.x") == 42
    for opaque in ("", "abc", "a.b.c", "e30.e30.x", "e30.eyJzdWIiOiIteCJ9.x"):
        assert token_subject(opaque) is None


async def test_after_a_1012_close_the_client_is_back_on_another_gateway_at_once() -> None:
    """Six 1012 closes in a row, right after the handshake, on two alternating gateways:
    the client is back every time at once (within 1 s for all six; a backoff would take
    1.5 s or more), and its unanswered send goes out on the connection that stays."""
    connects: list[tuple[str, float]] = []

    def make(name: str) -> Handler:
        async def handler(ws: ServerConnection) -> None:
            connects.append((name, time.monotonic()))
            if len(connects) <= 6:
                await ws.close(1012, "service restart")
                return
            await ws.send('{"type":14,"seq":"0"}')
            async for data in ws:
                frame = json.loads(data)
                if frame["type"] == 1:
                    await ws.send(
                        json.dumps({"type": 10, "id": frame["id"], "msgId": "m1", "time": "1"})
                    )

        return handler

    async with server(make("a")) as a, server(make("b")) as b, Client([a, b], token=TOKEN) as c:
        sent = await asyncio.wait_for(c.send(to=2, content="hi"), 10)
        assert sent.msg_id == "m1"
    names = [n for n, _ in connects]
    assert names[:7] == ["a", "b", "a", "b", "a", "b", "a"]
    assert connects[6][1] - connects[0][1] < 1.0, connects


async def test_an_unanswered_send_is_resent_with_the_same_id_on_the_next_gateway() -> None:
    """Gateway A takes the frame and dies without answering; gateway B gets the same frame
    (same client id) and answers: send() returns B's answer, once."""
    seen: list[tuple[str, str]] = []

    async def dies(ws: ServerConnection) -> None:
        await ws.send('{"type":14,"seq":"0"}')
        frame = json.loads(await ws.recv())
        seen.append(("a", frame["id"]))
        ws.transport.abort()

    async def answers(ws: ServerConnection) -> None:
        await ws.send('{"type":14,"seq":"0"}')
        async for data in ws:
            frame = json.loads(data)
            if frame["type"] == 1:
                seen.append(("b", frame["id"]))
                reply = {"type": 10, "id": frame["id"], "msgId": "m7", "time": "5"}
                await ws.send(json.dumps(reply))
                await ws.send(json.dumps(reply))  # a repeated answer is not a second one

    async with server(dies) as a, server(answers) as b, Client([a, b], token=TOKEN) as c:
        sent = await asyncio.wait_for(c.send(to=2, content="x"), 10)
    assert [n for n, _ in seen] == ["a", "b"]
    assert seen[0][1] == seen[1][1] == sent.client_id
    assert sent == Sent(sent.client_id, "m7", "5")


async def test_acks_come_at_most_every_100_ms_cover_only_taken_and_close_sends_the_last() -> None:
    """40 messages pushed 10 ms apart, taken as they come: the type 11 frames are at least
    ~100 ms apart, each at a position already taken; after taking 25 and closing, the last
    ack is position 25 (not 40: the rest were never taken)."""
    acks: list[tuple[float, int]] = []
    done = asyncio.Event()

    async def gateway(ws: ServerConnection) -> None:
        async def push() -> None:
            for pos in range(1, 41):
                await ws.send(
                    json.dumps(
                        {
                            "type": 1,
                            "id": f"m{pos}",
                            "from": 2,
                            "to": 1,
                            "contentType": 0,
                            "time": "1",
                            "content": str(pos),
                            "seq": str(pos),
                        }
                    )
                )
                await asyncio.sleep(0.01)

        await ws.send('{"type":14,"seq":"0"}')
        pusher = asyncio.create_task(push())
        try:
            async for data in ws:
                frame = json.loads(data)
                if frame["type"] == 11:
                    acks.append((time.monotonic(), int(frame["seq"])))
                elif frame["type"] == 0:
                    await ws.send('{"type":0}')
                elif frame["type"] == 14:  # close()'s probe
                    await ws.send(json.dumps({"type": 14, "seq": frame["seq"]}))
        finally:
            pusher.cancel()
            done.set()

    taken: list[Message] = []
    async with server(gateway) as url:
        client = Client(url, token=TOKEN)
        async with client:
            async for m in client.messages():
                taken.append(m)
                if len(taken) == 25:
                    break
        await asyncio.wait_for(done.wait(), 5)
    assert [m.content for m in taken] == [str(i) for i in range(1, 26)]
    assert acks[-1][1] == 25
    positions = [p for _, p in acks]
    assert positions == sorted(positions)
    times = [t for t, _ in acks[:-1]]  # the last one is close()'s
    assert all(b - a >= 0.08 for a, b in itertools.pairwise(times)), acks


async def test_close_is_idempotent_and_fails_waiting_sends() -> None:
    """close() twice is fine; a send waiting for an answer raises Refused("closed"), and
    a send after close raises at once."""

    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async with server(silent) as url:
        client = Client(url, token=TOKEN)
        pending = asyncio.ensure_future(client.send(to=2, content="x"))
        await wait_until(lambda: client.connections == 1, what="connected")
        await client.close()
        await client.close()
        with pytest.raises(Refused) as waiting:
            await pending
        assert waiting.value.code == "closed"
        with pytest.raises(Refused) as after:
            await client.send(to=2, content="y")
        assert after.value.code == "closed"


async def test_a_url_that_is_no_websocket_url_stops_the_client() -> None:
    """A bad URL raises Refused("bad_url") from the waiting send instead of hanging."""
    async with Client("http://127.0.0.1:1/ws", token=TOKEN) as client:
        with pytest.raises(Refused) as refused:
            await asyncio.wait_for(client.send(to=2, content="x"), 5)
    assert refused.value.code == "bad_url"
