"""/healthz and /metrics on the gateway's port while its Redis is silent: bounded answers."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import RedisServer
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import http_get
from tests.proxy import FreezableProxy


async def test_many_scrapes_while_redis_is_silent_are_each_answered_in_time(
    start_gateway: GatewayFactory, redis_server: RedisServer
) -> None:
    """Redis behind a frozen proxy: 50 /healthz at once each get 503 naming Redis, and 50
    /metrics at once each get 200, all within a few seconds; then, Redis back, 200."""
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw = await start_gateway("gw-health-silent", redis_url=f"redis://{proxy.address}/0")
        status, _, _ = await http_get(gw.port, "/healthz")
        assert status == 200
        proxy.freeze()
        for _ in range(2):  # twice: the first round's cancelled pings must not wedge the next
            started = time.monotonic()
            health = await asyncio.gather(*(http_get(gw.port, "/healthz") for _ in range(50)))
            metrics = await asyncio.gather(*(http_get(gw.port, "/metrics") for _ in range(50)))
            took = time.monotonic() - started
            assert {status for status, _, _ in health} == {503}
            assert all(b"redis" in body.lower() for _, body, _ in health)
            assert {status for status, _, _ in metrics} == {200}
            assert took < 5.0, took
        proxy.thaw()
        status, body, _ = await http_get(gw.port, "/healthz")
        assert status == 200, body
