"""The Gateway in-process with the memory store and a fake hub link (no Redis, no hub)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from im_gateway.server import Gateway
from im_gateway.store_memory import MemoryStore
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
        listen="127.0.0.1:0",
        gateway_id="gw-unit",
        jwt_secret=SECRET,
        store=store,
        link=link,
        compression=True,
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
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        await client.wait_for(lambda f: f["type"] == 14)
    finally:
        await client.close()


async def test_default_is_no_compression() -> None:
    """By default no permessage-deflate is negotiated (memory per idle connection)."""
    link = FakeLink()
    async with Gateway(
        listen="127.0.0.1:0", gateway_id="gw-x", jwt_secret=SECRET, store=MemoryStore(), link=link
    ) as gateway:
        ws = await connect(f"ws://127.0.0.1:{gateway.port}/ws?token={token(9)}")
        try:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        finally:
            await ws.close()
        assert gateway.gateway_id == "gw-x"
        assert gateway.address == f"127.0.0.1:{gateway.port}"
    link.feed(None)  # type: ignore[arg-type]


async def test_close_is_idempotent_and_default_id_is_derived() -> None:
    """close() twice is fine; without --gateway-id the id comes from host and port."""
    link = FakeLink()
    gateway = Gateway(listen="127.0.0.1:0", jwt_secret=SECRET, store=MemoryStore(), link=link)
    await gateway.start()
    assert gateway.gateway_id.endswith(f"-{gateway.port}")
    await gateway.close()
    await gateway.close()
    await gateway.wait_closed()
    link.feed(None)  # type: ignore[arg-type]
