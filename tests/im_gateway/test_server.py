"""The Gateway in-process with the memory store and a fake hub link (no Redis, no hub)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode

from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from im_gateway.store import MemoryStore
from tests.end_to_end.harness import SECRET, Client, http_get, token
from tests.im_gateway.fakes import FakeLink


class FlakyStore(MemoryStore):
    """A memory store whose ping can be made to fail."""

    down = False

    async def ping(self) -> None:
        if self.down:
            raise ConnectionError("connection refused")
        await super().ping()


@pytest.fixture
async def parts() -> AsyncIterator[tuple[Gateway, FlakyStore, FakeLink]]:
    store, link = FlakyStore(), FakeLink()
    gateway = Gateway(
        GatewayConfig(
            listen="127.0.0.1:0",
            gateway_id="gw-unit",
            jwt_secret=SECRET,
            compression=True,
            group_join="open",
        ),
        store=store,
        link=link,
    )
    async with gateway:
        yield gateway, store, link
    link.feed(None)  # type: ignore[arg-type]


async def test_healthz_names_what_is_down(parts: tuple[Gateway, FlakyStore, FakeLink]) -> None:
    """200 when linked and the store answers; 503 naming the hub, then the store, otherwise."""
    gateway, store, link = parts
    status, body, _ = await http_get(gateway.port, "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    link.connected = False
    status, body, _ = await http_get(gateway.port, "/healthz")
    assert status == 503
    assert "hub" in json.loads(body)["reason"]
    link.connected = True
    store.down = True
    status, body, _ = await http_get(gateway.port, "/healthz")
    assert status == 503
    report = json.loads(body)
    assert report["redis"] == "down"
    assert "redis" in report["reason"]


async def test_compression_is_negotiated_only_when_enabled(
    parts: tuple[Gateway, FlakyStore, FakeLink],
) -> None:
    """With compression=True the gateway accepts permessage-deflate (off by default)."""
    gateway, _, _ = parts
    ws = await connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token(9)}")
    client = Client(ws, 9)
    try:
        assert ws.response is not None
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        await client.wait_for(lambda f: f["type"] == 14)
    finally:
        await client.close()


async def test_default_is_no_compression() -> None:
    """By default no permessage-deflate is negotiated (memory per idle connection)."""
    link = FakeLink()
    async with Gateway(
        GatewayConfig(listen="127.0.0.1:0", gateway_id="gw-x", jwt_secret=SECRET),
        store=MemoryStore(),
        link=link,
    ) as gateway:
        ws = await connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token(9)}")
        try:
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        finally:
            await ws.close()
        assert gateway.gateway_id == "gw-x"
        assert gateway.address == f"127.0.0.1:{gateway.port}"
    link.feed(None)  # type: ignore[arg-type]


async def test_close_is_idempotent_and_default_id_is_derived() -> None:
    """close() twice is fine; without --gateway-id the id comes from host and port."""
    link = FakeLink()
    gateway = Gateway(
        GatewayConfig(listen="127.0.0.1:0", jwt_secret=SECRET), store=MemoryStore(), link=link
    )
    await gateway.start()
    assert gateway.gateway_id.endswith(f"-{gateway.port}")
    await gateway.close()
    await gateway.close()
    await gateway.wait_closed()
    link.feed(None)  # type: ignore[arg-type]


def _write_raw(client: Client, *frames_: tuple[Opcode, bytes, bool]) -> None:
    """Frame ``frames_`` (opcode, payload, fin) and write them in one TCP write, so the
    gateway reads them together."""
    protocol = client.ws.protocol
    for opcode, payload, fin in frames_:
        protocol.send_frame(WsFrame(opcode, payload, fin))
    client.ws.transport.write(b"".join(protocol.data_to_send()))


def _text(frame: dict[str, object]) -> tuple[Opcode, bytes, bool]:
    return (Opcode.TEXT, json.dumps(frame).encode(), True)


async def test_frames_read_together_are_handled_in_order(
    parts: tuple[Gateway, FlakyStore, FakeLink],
) -> None:
    """Frames handled in the data callback (heartbeat, message) wait for earlier frames
    that go through the reader (a join): the join is answered first, and a group post
    right behind the join is accepted."""
    gateway, _, _ = parts
    client = await Client.open(gateway.port, 9)
    try:
        await client.wait_for(lambda f: f["type"] == 14)
        _write_raw(
            client,
            _text({"type": 12, "id": "j1", "to": 500}),
            _text({"type": 0}),
            _text({"type": 2, "id": "g1", "to": 500, "contentType": 0, "content": "hi"}),
            _text({"type": 1, "id": "p1", "to": 10, "contentType": 0, "content": "yo"}),
        )
        post = await client.wait_for(lambda f: f.get("id") == "g1", what="the group post's ack")
        assert post["type"] == 10, post
        private = await client.wait_for(lambda f: f.get("id") == "p1", what="the private ack")
        assert private["type"] == 10, private
        answers = [f for f in client.frames if f["type"] != 14]
        joined = answers.index(next(f for f in answers if f.get("id") == "j1"))
        heartbeat = answers.index({"type": 0})
        assert answers[joined]["type"] == 10
        assert joined < heartbeat, answers
    finally:
        await client.close()


async def test_a_fragmented_frame_keeps_its_place(
    parts: tuple[Gateway, FlakyStore, FakeLink],
) -> None:
    """A message in two fragments, then a heartbeat in the same read: the fragmented
    join is answered before the heartbeat."""
    gateway, _, _ = parts
    client = await Client.open(gateway.port, 9)
    try:
        await client.wait_for(lambda f: f["type"] == 14)
        join = json.dumps({"type": 12, "id": "j1", "to": 501}).encode()
        _write_raw(
            client,
            (Opcode.TEXT, join[:5], False),
            (Opcode.CONT, join[5:], True),
            _text({"type": 0}),
        )
        await client.wait_for(lambda f: f == {"type": 0}, what="the heartbeat reply")
        answers = [f for f in client.frames if f["type"] != 14]
        assert answers[0].get("id") == "j1", answers
        assert answers[0]["type"] == 10, answers
    finally:
        await client.close()


async def test_invalid_utf8_closes_with_1007_and_the_gateway_serves_others(
    parts: tuple[Gateway, FlakyStore, FakeLink],
) -> None:
    gateway, _, _ = parts
    bad = await Client.open(gateway.port, 9)
    good = await Client.open(gateway.port, 10)
    try:
        await bad.wait_for(lambda f: f["type"] == 14)
        _write_raw(bad, (Opcode.TEXT, b'{"type":0,"x":"\xff\xfe"}', True))
        await asyncio.wait_for(bad.closed, 10)
        assert bad.ws.close_code == 1007
        await good.wait_for(lambda f: f["type"] == 14)
        await good.send({"type": 0})
        await good.wait_for(lambda f: f == {"type": 0}, what="the heartbeat reply")
    finally:
        await bad.close()
        await good.close()
