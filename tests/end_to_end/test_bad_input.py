"""Bad input gets the pinned answer and the gateway keeps serving everyone else."""

from __future__ import annotations

import json
import socket

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from im_gateway.gateway import Gateway
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import SECRET, Client, token
from tests.helpers import wait_until

A, B = 4001, 4002


async def assert_still_serving(gateway: Gateway, open_client: ClientFactory) -> None:
    """A fresh pair of users can still talk through ``gateway``."""
    x = await open_client(gateway, 4901)
    y = await open_client(gateway, 4902)
    ack = await x.say(4902, "still alive")
    assert ack["type"] == 10
    await y.wait_contents(["still alive"])


@pytest.mark.parametrize(
    ("frame", "frame_id"),
    [
        ("this is not json", None),
        ("[1, 2, 3]", None),
        ('{"type": 1, "id": "x-1", "to": 4002, "content": "hi"', None),
        (json.dumps({"type": 77, "id": "x-2"}), "x-2"),
        (json.dumps({"type": "1", "id": "x-3", "to": 4002, "content": "hi"}), "x-3"),
        (json.dumps({"type": 1, "id": "x-4", "to": "bob", "content": "hi"}), "x-4"),
        (json.dumps({"type": 1, "id": "x-5", "to": 4002, "content": 5}), "x-5"),
        (json.dumps({"type": 1, "id": 6, "to": 4002, "content": "hi"}), None),
        (json.dumps({"type": 1, "id": "x-7", "to": -1, "content": "hi"}), "x-7"),
        (
            json.dumps({"type": 1, "id": "x-8", "to": 4002, "content": "hi", "contentType": "a"}),
            "x-8",
        ),
        (json.dumps({"type": 11, "seq": 12}), None),
        (json.dumps({"type": 14, "seq": "yesterday"}), None),
        (json.dumps({"type": 12, "id": "x-9", "to": 1.5}), "x-9"),
    ],
)
async def test_bad_frames_get_bad_request_and_the_socket_stays_open(
    start_gateway: GatewayFactory, open_client: ClientFactory, frame: str, frame_id: str | None
) -> None:
    """Malformed JSON, unknown types and wrong field types answer 99 bad_request."""
    gw = await start_gateway("gw-1")
    a = await open_client(gw, A)
    b = await open_client(gw, B)
    await a.send(frame)
    error = await a.wait_for(lambda f: f["type"] == 99)
    assert error["code"] == "bad_request"
    assert error.get("id") == frame_id
    assert isinstance(error["message"], str)
    assert error["message"]
    ack = await a.say(B, "after the bad frame")
    assert ack["type"] == 10
    await b.wait_contents(["after the bad frame"])


async def test_too_large_content_is_refused(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Content over --max-content (but in a legal frame) answers 99 too_large."""
    gw = await start_gateway("gw-1", max_content=1000)
    a = await open_client(gw, A)
    refused = await a.say(B, "x" * 1001, cid="big")
    assert (refused["type"], refused["code"], refused["id"]) == (99, "too_large", "big")
    assert (await a.say(B, "x" * 1000))["type"] == 10


async def test_oversized_frame_closes_with_1009(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A 1 MiB frame closes that socket with 1009; others keep working."""
    gw = await start_gateway("gw-1")
    a = await open_client(gw, A)
    await a.send(json.dumps({"type": 1, "id": "huge", "to": B, "content": "x" * 2**20}))
    await wait_until(lambda: a.closed.done(), what="the socket to close")
    assert a.ws.close_code == 1009
    await assert_still_serving(gw, open_client)


async def test_rate_limit_answers_rate_limited(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Past the burst, frames are refused with rate_limited and the socket stays open."""
    gw = await start_gateway("gw-1", rate_limit=1, rate_burst=5)
    a = await open_client(gw, A)
    for i in range(10):
        await a.send({"type": 12, "id": f"r{i}", "to": 9})
    await a.wait_for(lambda f: f.get("id") == "r9")
    answers = {f["id"]: f for f in a.frames if f.get("id", "").startswith("r")}
    assert [answers[f"r{i}"]["type"] for i in range(5)] == [10] * 5
    assert {answers[f"r{i}"]["code"] for i in range(5, 10)} == {"rate_limited"}
    assert not a.closed.done()


@pytest.mark.parametrize(
    "bad_token",
    [
        "",
        "not-a-jwt",
        jwt.encode(
            {"sub": "4001", "exp": 9999999999}, "the-wrong-secret-0123456789abcdef", "HS256"
        ),
        jwt.encode({"sub": "4001", "exp": 1}, SECRET, "HS256"),  # expired
        jwt.encode({"sub": "4001"}, SECRET, "HS256"),  # no exp
        jwt.encode({"sub": "alice", "exp": 9999999999}, SECRET, "HS256"),
    ],
    ids=["missing", "garbage", "wrong-secret", "expired", "no-exp", "bad-sub"],
)
async def test_bad_tokens_get_401_without_upgrade(
    start_gateway: GatewayFactory, open_client: ClientFactory, bad_token: str
) -> None:
    """Missing, malformed, wrongly signed and expired tokens: HTTP 401, no WebSocket."""
    gw = await start_gateway("gw-1")
    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{gw.port}/ws?token={bad_token}")
    assert info.value.response.status_code == 401
    await assert_still_serving(gw, open_client)


async def test_bearer_header_is_accepted(start_gateway: GatewayFactory) -> None:
    """The token may come in an Authorization: Bearer header instead of the query."""
    gw = await start_gateway("gw-1")
    ws = await connect(
        f"ws://127.0.0.1:{gw.port}/ws",
        additional_headers={"Authorization": f"Bearer {token(A)}"},
    )
    client = Client(ws, A)
    try:
        await client.wait_for(lambda f: f["type"] == 14)
        await client.send({"type": 0})
        assert await client.wait_for(lambda f: f["type"] == 0) == {"type": 0}
    finally:
        await client.close()


async def test_a_client_that_does_not_read_is_disconnected_and_recovers(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """B stops reading: its send queue fills, gw drops it (1013); on reconnect B gets everything."""
    gw = await start_gateway(
        "gw-1", send_queue=8, replay_page=4, max_content=16384, rate_limit=0, close_timeout=0.5
    )
    a = await open_client(gw, A)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    stalled = await connect(f"ws://127.0.0.1:{gw.port}/ws?token={token(B)}", sock=sock, max_queue=1)
    await wait_until(lambda: gw.fanout.connections == 2, what="B's session")
    sent = []
    i = 0
    while gw.fanout.connections == 2:
        ack = await a.say(B, f"{i:05d}" + "y" * 16000)
        assert ack["type"] == 10, ack
        sent.append(ack["msgId"])
        i += 1
        assert i < 2000, "the stalled client was never disconnected"
    stalled.transport.abort()
    b = await open_client(gw, B)
    assert [f["id"] for f in b.messages()] == sent
