"""A gateway's presence refresh of its users goes in calls of --redis-keys-per-call keys."""

from __future__ import annotations

import hashlib

import redis.asyncio as aioredis

from im_gateway.store import scripts
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.helpers import wait_until

REFRESH_SHA = hashlib.sha1(scripts.REFRESH.encode()).hexdigest().encode()


async def test_a_gateway_refreshes_presence_in_calls_of_the_flags_size(
    redis_url: str, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """--redis-keys-per-call 2 and five users connected: every refresh script call the
    gateway makes holds at most 2 keys, and a periodic refresh of the five is 2, 2, 1."""
    gateway = await start_gateway("gw-chunks", redis_keys_per_call=2, presence_ttl=0.6)
    for user in range(1, 6):
        await open_client(gateway, user)
    redis = aioredis.Redis.from_url(redis_url)
    sizes: list[int] = []

    async def two_rounds() -> bool:
        sizes[:] = [
            int(args[2])
            for e in reversed(await redis.slowlog_get(10_000))
            if (args := e["command"].split(b" "))[0].upper() == b"EVALSHA"
            and args[1] == REFRESH_SHA
        ]
        return len(sizes) >= 6

    try:
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.slowlog_reset()
        await wait_until(two_rounds, timeout=10, what="two refresh rounds")
        assert max(sizes) == 2, sizes
        assert "2 2 1" in " ".join(map(str, sizes)), sizes
    finally:
        await redis.config_set("slowlog-log-slower-than", 10_000)
        await redis.aclose()
