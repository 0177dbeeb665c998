"""Fixtures for end-to-end tests: a real hub, real gateways on free ports, real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from tests.end_to_end.harness import SECRET, Client
from transmit_hub.server import HubServer

GatewayFactory = Callable[..., Awaitable[Gateway]]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def start_gateway(hub: HubServer, redis_url: str) -> AsyncIterator[GatewayFactory]:
    """Start gateways (in this process) linked to ``hub`` and the test Redis."""
    started: list[Gateway] = []

    async def start(gateway_id: str, *, linked: bool = True, **options: Any) -> Gateway:
        options.setdefault("hub", hub.address)
        options.setdefault("redis_url", redis_url)
        # The tests join groups with type 12; the default policy (server) refuses it.
        options.setdefault("group_join", "open")
        gateway = Gateway(
            GatewayConfig(listen="127.0.0.1:0", gateway_id=gateway_id, jwt_secret=SECRET, **options)
        )
        await gateway.start()
        started.append(gateway)
        if linked:
            await gateway.wait_linked(10.0)
        return gateway

    try:
        yield start
    finally:
        for gateway in reversed(started):
            await gateway.close()


@pytest.fixture
async def open_client() -> AsyncIterator[ClientFactory]:
    """Open WebSocket clients; every one is closed at the end."""
    clients: list[Client] = []

    async def open_(gateway: Gateway, user: int, *, replayed: bool = True) -> Client:
        client = await Client.open(gateway.port, user)
        clients.append(client)
        if replayed:
            await client.wait_for(lambda f: f["type"] == 14, what="the replay end marker")
        return client

    try:
        yield open_
    finally:
        for client in clients:
            await client.close()
