"""Connection upkeep: heartbeats, WebSocket pings and the idle timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.helpers import wait_until


async def test_idle_connections_are_closed_and_busy_ones_kept(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A silent client is closed after --idle-timeout; one sending heartbeats stays open."""
    gw = await start_gateway("gw-idle", idle_timeout=0.4)
    silent = await open_client(gw, 1)
    chatty = await open_client(gw, 2)
    deadline = asyncio.get_running_loop().time() + 10
    while not silent.closed.done():
        await chatty.send({"type": 0})
        await asyncio.wait([silent.closed], timeout=0.05)
        assert asyncio.get_running_loop().time() < deadline, "silent client never closed"
    assert silent.ws.close_code == 1000
    assert silent.ws.close_reason == "idle timeout"
    assert not chatty.closed.done()
    await wait_until(lambda: gw.fanout.connections == 1, what="the idle session to go")


async def test_heartbeat_and_websocket_ping_are_answered(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """{"type":0} gets {"type":0}; a WebSocket ping gets its pong."""
    gw = await start_gateway("gw-hb")
    client = await open_client(gw, 1)
    await client.send({"type": 0})
    assert await client.wait_for(lambda f: f["type"] == 0) == {"type": 0}
    pong = await client.ws.ping()
    latency = await asyncio.wait_for(pong, 5)
    assert latency >= 0


async def test_hub_token_is_sent_to_a_hub_that_requires_one(redis_url: str) -> None:
    """With --hub-token the gateway links to a hub started with --auth-token; without it, not."""
    from im_gateway.config import GatewayConfig
    from im_gateway.gateway import Gateway
    from tests.end_to_end.harness import SECRET, http_get
    from transmit_hub.config import HubConfig
    from transmit_hub.server import HubServer

    hub = HubServer(HubConfig(listen="127.0.0.1:0", auth_token="hub-secret", grace=0.2))
    await hub.start()
    try:
        common: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "redis_url": redis_url,
            "jwt_secret": SECRET,
        }
        async with Gateway(
            GatewayConfig(gateway_id="gw-t", hub=hub.address, hub_token="hub-secret", **common)
        ) as ok:
            await ok.wait_linked(10)
        async with Gateway(GatewayConfig(gateway_id="gw-n", hub=hub.address, **common)) as refused:
            with pytest.raises(TimeoutError):
                await refused.wait_linked(1.0)  # the hub answers UNAUTHENTICATED
            status, body, _ = await http_get(refused.port, "/healthz")
            assert status == 503
            assert b"hub" in body
            assert not refused.linked
    finally:
        await hub.stop(0.2)
