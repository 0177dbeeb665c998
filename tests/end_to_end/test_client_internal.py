"""The Python client library against two real gateways (in this process, one hub, one
Redis), one of them cut off from Redis (a frozen proxy in front of it, ``--redis-timeout
0.5``): it refuses every send ``internal``, and the client takes its sends to the other."""

from __future__ import annotations

import asyncio
import time

import pytest

import im_gateway.client
from im_gateway.client import Client
from im_gateway.gateway import Gateway
from tests.conftest import RedisServer
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import token
from tests.proxy import FreezableProxy

ALICE, BOB = 5201, 5202


def url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}/ws"


async def test_a_gateway_cut_off_from_redis_is_left_and_the_send_stored_once_by_the_other(
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Alice's client is on gw-a when gw-a's Redis goes silent (gw-b still reaches it):
    gw-a answers heartbeats and refuses her send ``internal`` (after its store timeout,
    tried once more), again and again; after INTERNAL_STREAK refusals over INTERNAL_TIMEOUT
    (here 1 s) the client moves to gw-b, where the send is stored; bob, on gw-b, gets each
    of her messages once."""
    monkeypatch.setattr(im_gateway.client, "INTERNAL_TIMEOUT", 1.0, raising=False)
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw_a = await start_gateway(
            "gw-a", redis_url=f"redis://{proxy.address}/0", redis_timeout=0.5
        )
        gw_b = await start_gateway("gw-b")
        bob = await open_client(gw_b, BOB)
        async with Client([url(gw_a), url(gw_b)], token=token(ALICE)) as alice:
            before = await asyncio.wait_for(alice.send(to=BOB, content="before"), 10)
            assert alice.url == url(gw_a)
            proxy.freeze()
            started = time.monotonic()
            during = await asyncio.wait_for(alice.send(to=BOB, content="during"), 20)
            assert alice.url == url(gw_b)
            assert alice.connections == 2
            assert time.monotonic() - started < 10
        await bob.wait_contents(["before", "during"], timeout=10)
        assert bob.contents() == ["before", "during"]
        assert [m["id"] for m in bob.messages()] == [before.msg_id, during.msg_id]
