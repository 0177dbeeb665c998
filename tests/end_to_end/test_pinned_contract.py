"""Pinned statements of DESIGN.md that no other test checked, on real processes: a real
hub, real gateways, a real Redis (and a real Redis Cluster)."""

from __future__ import annotations

import logging
import os
import socket

import aiohttp
import pytest

from devtools.launch import gateway_argv
from tests.cluster import RedisClusterProcesses
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import SECRET, change_group
from tests.helpers import free_port, one_error_line

KEY = "api-key-for-the-pinned-contract-0123"
LARGE = 7
SMALL = 8


def refused(port: int) -> bool:
    """Whether a TCP connect to 127.0.0.1:``port`` is refused (nothing listens there)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("given", ["api_listen", "api_key"])
async def test_the_server_api_is_off_without_both_flags(
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    given: str,
) -> None:
    """ "--api-listen HOST:PORT --api-key KEY serves it (off without both)": one of the two
    alone starts the gateway without the API (and says so in one WARNING naming the other
    flag); users are served as usual."""
    port = free_port()
    options = {"api_listen": f"127.0.0.1:{port}"} if given == "api_listen" else {"api_key": KEY}
    with caplog.at_level(logging.WARNING, logger="im_gateway.gateway"):
        gw = await start_gateway("gw-api-off", **options)
    assert gw.api_port == 0
    assert refused(port)
    missing = "--api-key" if given == "api_listen" else "--api-listen"
    warnings = [r.getMessage() for r in caplog.records if r.name == "im_gateway.gateway"]
    assert [w for w in warnings if "server API is off" in w and missing in w], warnings
    alice, bob = await open_client(gw, 1), await open_client(gw, 2)
    assert (await alice.say(2, "served"))["type"] == 10
    await bob.wait_contents(["served"])


async def test_a_publish_id_is_deduplicated_through_another_gateway(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """ "An id is deduplicated system-wide per from": the same publish sent to two gateways'
    APIs (a backend retrying on another gateway) is one message with one msgId."""
    gws = [
        await start_gateway(f"gw-pub-{i}", api_listen="127.0.0.1:0", api_key=KEY) for i in (1, 2)
    ]
    body = {"to": 12, "from": 11, "content": "once", "id": "order-7"}
    answers = []
    async with aiohttp.ClientSession() as http:
        for gw in gws:
            async with http.post(
                f"http://127.0.0.1:{gw.api_port}/api/publish",
                json=body,
                headers={"Authorization": f"Bearer {KEY}"},
            ) as resp:
                assert resp.status == 200, await resp.text()
                answers.append(await resp.json())
    assert answers[0] == answers[1]
    bob = await open_client(gws[1], 12)
    assert [(m["content"], m["id"]) for m in bob.messages()] == [("once", answers[0]["msgId"])]


async def test_the_connect_replay_interleaves_the_inbox_and_large_groups_in_time_order(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """ "A member's replay on connect holds what came after their acknowledged position in
    their inbox and in each large group's stream they belong to, in time order, then the
    type 14 marker": private, large-group and small-group messages sent in turn while bob
    is away come back to him in the order they were sent."""
    gw1 = await start_gateway("gw-1", large_group=2)
    gw2 = await start_gateway("gw-2", large_group=2)
    alice, bob, carol = [await open_client(gw1, user) for user in (1, 2, 3)]
    for client in (alice, bob, carol):
        await change_group(client, 12, LARGE)
    for client in (alice, bob):
        await change_group(client, 12, SMALL)
    await bob.close()
    sent = []
    for n in range(4):
        for to, group, content in (
            (2, False, f"p{n}"),
            (LARGE, True, f"g{n}"),
            (SMALL, True, f"s{n}"),
        ):
            ack = await alice.say(to, content, group=group)
            assert ack["type"] == 10, ack
            sent.append(content)
    back = await open_client(gw2, 2)
    assert back.contents() == sent
    seqs = [m["seq"] for m in back.messages()]
    assert [s for s in seqs if s.startswith("g")] == [f"g{LARGE}:{n}" for n in (1, 2, 3, 4)]
    assert back.frames[-1]["type"] == 14


@pytest.mark.parametrize("listed", ["a dead node first", "one replica only"])
async def test_a_cluster_is_reached_through_any_node_listed(
    redis_cluster: RedisClusterProcesses,
    redis_cluster_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    listed: str,
) -> None:
    """ "redis+cluster://HOST:PORT[,HOST:PORT...] is a Redis Cluster, reached through any of
    the nodes listed": a URL whose first node is down, or that names one node (a replica),
    serves as well as the full list."""
    live = next(n.port for n in redis_cluster.nodes if n.role() == "slave")
    dead = free_port()
    nodes = (
        f"127.0.0.1:{dead},127.0.0.1:{live}"
        if listed == "a dead node first"
        else f"127.0.0.1:{live}"
    )
    url = f"redis+cluster://{nodes}"
    gw1 = await start_gateway("gw-c1", redis_url=url)
    gw2 = await start_gateway("gw-c2", redis_url=redis_cluster_url)
    alice, bob = await open_client(gw1, 21), await open_client(gw2, 22)
    for n in range(5):
        assert (await alice.say(22, f"m{n}"))["type"] == 10
        assert (await bob.say(21, f"r{n}"))["type"] == 10
    await bob.wait_contents([f"m{n}" for n in range(5)])
    await alice.wait_contents([f"r{n}" for n in range(5)])


def test_a_cluster_with_no_node_answering_is_one_line_at_start() -> None:
    """ "exit non-zero with one clear line on ... an unreachable dependency at start", for a
    ``redis+cluster://`` URL whose every node is down (the test of one Redis has its own)."""
    dead = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    argv = gateway_argv(
        f"127.0.0.1:{free_port()}",
        *("--redis-url", f"redis+cluster://{dead}", "--redis-timeout", "1"),
        *("--hub", f"127.0.0.1:{free_port()}"),
    )
    line = one_error_line(argv, env={**os.environ, "IM_GATEWAY_JWT_SECRET": SECRET})
    assert "cannot reach Redis" in line
    assert dead in line
