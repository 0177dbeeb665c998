"""Connection upkeep: heartbeats, WebSocket pings and the idle timeout."""

from __future__ import annotations

import asyncio

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
    await wait_until(lambda: gw.relay.connections == 1, what="the idle session to go")


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
