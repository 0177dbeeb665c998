"""The gateway's paths when its Redis goes silent (a frozen proxy in front of the test
Redis, ``--redis-timeout 0.5``): each failure is answered or retried, logged as one
counted line, and what it held back reaches the clients once Redis answers again."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import RedisServer
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client
from tests.helpers import wait_until
from tests.proxy import FreezableProxy

ALICE, BOB = 5101, 5102
GROUP = 91


async def change(client: Client, kind: int, group: int = GROUP) -> None:
    """Join (12) or leave (13) ``group``, answered type 10."""
    cid = client.next_id()
    await client.send({"type": kind, "id": cid, "to": group})
    reply = await client.wait_for(lambda f: f.get("id") == cid)
    assert reply["type"] == 10, reply


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_large_group_post_that_came_while_redis_was_silent_is_shown_once_it_answers(
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A large group's post reaches gw-b through the hub while gw-b's Redis is silent: the
    followers' membership check fails (one counted line, no traceback); once Redis
    answers, the member on gw-b gets the post, read from the group's stream, although no
    later post comes to show the hole."""
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw_a = await start_gateway("gw-a", large_group=1)
        gw_b = await start_gateway(
            "gw-b", large_group=1, redis_url=f"redis://{proxy.address}/0", redis_timeout=0.5
        )
        alice = await open_client(gw_a, ALICE)
        bob = await open_client(gw_b, BOB)
        await change(alice, 12)
        await change(bob, 12)  # two members: the group is stored once from now
        assert (await alice.say(GROUP, "before", group=True))["type"] == 10
        await bob.wait_contents(["before"])
        proxy.freeze()
        caplog.clear()
        assert (await alice.say(GROUP, "during", group=True))["type"] == 10  # gw-a's Redis
        await wait_until(
            lambda: bool(logged(caplog, "checking followers' group membership failed")),
            what="gw-b's membership check to fail",
        )
        proxy.thaw()
        await bob.wait_contents(["during"], timeout=5)
        assert bob.contents() == ["before", "during"]
        assert len(logged(caplog, "checking followers' group membership failed")) == 1
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
