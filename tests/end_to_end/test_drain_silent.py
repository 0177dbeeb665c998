"""SIGTERM on a gateway process whose Redis or hub has gone silent: the drain ends in time."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import connect

from tests.conftest import RedisServer
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import Client, GatewayProcess, token
from tests.proxy import FreezableProxy
from transmit_hub.server import HubServer

DRAIN = 2.0
GRACE = 5.0
"""The stated grace past --drain-timeout (a supervisor kills a worker 5 s past it)."""


async def drained(proc: GatewayProcess, client: Client) -> None:
    """SIGTERM: ``client`` is closed with 1012 and the process exits 0, both within
    --drain-timeout plus the grace."""
    started = time.monotonic()
    proc.proc.terminate()
    await asyncio.wait_for(client.closed, DRAIN + GRACE)
    assert client.ws.close_code == 1012
    code = await asyncio.to_thread(proc.proc.wait, 30)
    took = time.monotonic() - started
    assert took < DRAIN + GRACE, f"exited {took:.1f}s after SIGTERM: {proc.output()}"
    assert code == 0, proc.output()


@pytest.mark.parametrize("silent", ["redis", "hub"])
async def test_sigterm_exits_within_the_drain_timeout_while_a_dependency_is_silent(
    hub: HubServer, redis_server: RedisServer, start_gateway: GatewayFactory, silent: str
) -> None:
    """A gateway linked through proxies; the Redis or the hub proxy freezes (connections
    open, no byte through); a client sends 20 messages into the silence; SIGTERM: the
    socket closes 1012 and the process exits within --drain-timeout plus the grace, not when
    the silence ends; every message it acknowledged is in the receiver's inbox."""
    hub_host, hub_port = hub.address.rsplit(":", 1)
    async with (
        FreezableProxy("127.0.0.1", redis_server.port) as redis_proxy,
        FreezableProxy(hub_host, int(hub_port)) as hub_proxy,
    ):
        proc = GatewayProcess(
            gateway_id="gw-drain-silent",
            hub=hub_proxy.address,
            redis_url=f"redis://{redis_proxy.address}/0",
            extra=("--drain-timeout", str(DRAIN)),
        )
        try:
            await proc.wait_healthy()
            client = await Client.open(proc.port, 1)
            await client.wait_for(lambda f: f["type"] == 14)
            (redis_proxy if silent == "redis" else hub_proxy).freeze()
            for i in range(20):
                await client.send(
                    {"type": 1, "id": f"c{i}", "to": 2, "contentType": 0, "content": f"m{i}"}
                )
            if silent == "hub":  # stored in Redis: acknowledged, though the hub is silent
                await client.wait_for(lambda f: f.get("id") == "c19" and f["type"] == 10)
            await drained(proc, client)
            await client.close()
            acked = {f["id"] for f in client.frames if f["type"] == 10}
            if silent == "hub":
                assert len(acked) == 20
            redis_proxy.thaw()
            other = await start_gateway("gw-after")
            receiver = await Client.open(other.port, 2)
            await receiver.wait_for(lambda f: f["type"] == 14, what="the replay end")
            await receiver.wait_contents([f"m{cid[1:]}" for cid in acked])
            await receiver.close()
        finally:
            redis_proxy.thaw()
            hub_proxy.thaw()
            proc.stop()


async def test_sigterm_exits_within_the_drain_timeout_while_a_client_never_reads(
    hub: HubServer, redis_url: str
) -> None:
    """A receiver that stops reading (its socket's buffers full of 16 KiB messages) while
    another user keeps sending: SIGTERM ends the process within --drain-timeout plus the
    grace, and the reading sender's socket still closes with 1012."""
    proc = GatewayProcess(
        gateway_id="gw-drain-stuck",
        hub=hub.address,
        redis_url=redis_url,
        extra=("--drain-timeout", str(DRAIN)),
    )
    try:
        await proc.wait_healthy()
        stuck = await connect(
            f"ws://127.0.0.1:{proc.port}/ws?token={token(3)}", max_queue=1, max_size=None
        )
        sender = await Client.open(proc.port, 1)
        await sender.wait_for(lambda f: f["type"] == 14)
        content = "x" * 16_000
        for i in range(300):
            await sender.send(
                {"type": 1, "id": f"c{i}", "to": 3, "contentType": 0, "content": content}
            )
        await sender.wait_for(lambda f: f.get("id") == "c299", timeout=30, what="the last answer")
        await drained(proc, sender)
        await sender.close()
        stuck.transport.abort()
    finally:
        proc.stop()
