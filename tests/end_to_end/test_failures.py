"""Losing a gateway (SIGKILL) or the hub loses nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from typing import Any

from im_gateway.store import RedisStore
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client, GatewayProcess, http_get
from tests.helpers import wait_until
from transmit_hub.config import HubConfig
from transmit_hub.server import HubServer
from transmit_hub.types import UserId

A, B = 3001, 3002


async def test_gateway_killed_while_sending_loses_nothing_acked_and_presence_expires(
    hub: HubServer, redis_url: str, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """gw2 (a real process) is SIGKILLed under B; B reconnects to gw1 and has every acked message."""
    gw1 = await start_gateway("gw-1")
    gw2 = GatewayProcess(
        gateway_id="gw-2", hub=hub.address, redis_url=redis_url, extra=("--presence-ttl", "1")
    )
    store = RedisStore(redis_url)
    try:
        await gw2.wait_healthy()
        a = await open_client(gw1, A)
        b = await Client.open(gw2.port, B)
        await b.wait_for(lambda f: f["type"] == 14)
        assert "gw-2" in (await store.lookup([UserId(B)])).get(UserId(B), ())

        acked: list[str] = []
        stop = asyncio.Event()

        async def keep_sending() -> None:
            i = 0
            while not stop.is_set():
                ack = await a.say(B, f"m{i}")
                if ack["type"] == 10:
                    acked.append(f"m{i}")
                i += 1

        sender = asyncio.create_task(keep_sending())
        await wait_until(lambda: len(b.contents()) >= 20, what="B receiving live on gw2")
        gw2.proc.send_signal(signal.SIGKILL)
        gw2.proc.wait(10)
        await wait_until(lambda: b.closed.done(), what="B seeing gw2 die")
        count = len(acked)
        await wait_until(lambda: len(acked) >= count + 20, what="A sending after the crash")
        stop.set()
        await sender
        await b.close()

        b_again = await open_client(gw1, B)
        got = b_again.contents()
        assert set(acked) <= set(got)
        assert got == sorted(got, key=lambda c: int(c[1:]))  # in order

        async def gw2_gone() -> bool:
            gateways = (await store.lookup([UserId(B)])).get(UserId(B), ())
            return "gw-2" not in gateways and "gw-1" in gateways

        await wait_until(gw2_gone, timeout=10, what="gw-2's presence entry to expire")
    finally:
        gw2.stop()
        await store.close()


async def test_hub_restart_loses_nothing_acked(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """The hub stops while A keeps sending, then restarts: B (still connected) gets every
    acked message, in order, none twice; /healthz says 503 while the hub is away."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    b = await open_client(gw2, B)
    acked: list[str] = []
    stop = asyncio.Event()

    async def keep_sending() -> None:
        i = 0
        while not stop.is_set():
            ack = await a.say(B, f"m{i}")
            assert ack["type"] == 10, ack  # accepted and stored even while the hub is down
            acked.append(f"m{i}")
            i += 1

    sender = asyncio.create_task(keep_sending())
    try:
        await wait_until(lambda: len(b.contents()) >= 20, what="B receiving through the hub")
        port = hub.port
        await hub.stop(0)
        await wait_until(lambda: not gw1.linked and not gw2.linked, what="the links to drop")
        status, body, _ = await http_get(gw2.port, "/healthz")
        assert status == 503
        assert b"hub" in body
        count = len(acked)
        await wait_until(lambda: len(acked) >= count + 20, what="A sending while the hub is down")

        restarted = HubServer(
            HubConfig(listen=f"127.0.0.1:{port}", hub_id="hub-restarted", grace=0.5)
        )
        await restarted.start()
        try:
            await gw1.wait_linked(15)
            await gw2.wait_linked(15)
            count = len(acked)
            await wait_until(lambda: len(acked) >= count + 20, what="A sending after the restart")
            stop.set()
            await sender
            await b.wait_contents(acked, timeout=15)
            assert b.contents() == acked  # in order, none twice
            status, _, _ = await http_get(gw2.port, "/healthz")
            assert status == 200
        finally:
            await restarted.stop(0.5)
    finally:
        stop.set()
        await sender


async def test_redis_outage_is_answered_and_survived(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Redis dies: sends get 99 internal (no hang), /healthz is 503; Redis back: all works."""
    import tempfile

    from devtools.launch import Process, free_port, redis_server_argv

    port = free_port()
    argv = redis_server_argv(port, host="127.0.0.1", workdir=tempfile.gettempdir())
    redis = Process("redis", argv, die_with_parent=False).start()
    try:
        url = f"redis://127.0.0.1:{port}/0"

        async def answers() -> bool:
            probe = RedisStore(url)
            try:
                await probe.ping()
            except Exception:
                return False
            finally:
                await probe.close()
            return True

        await wait_until(answers, what="the private redis-server")
        gw = await start_gateway("gw-r", redis_url=url)
        a = await open_client(gw, A)
        b = await open_client(gw, B)
        assert (await a.say(B, "before"))["type"] == 10
        redis.kill()
        refused = await a.say(B, "during", cid="during-1")
        assert (refused["type"], refused["code"], refused["id"]) == (99, "internal", "during-1")
        status, body, _ = await http_get(gw.port, "/healthz")
        assert status == 503
        assert b"redis" in body
        redis.restart()
        await wait_until(answers, what="redis to come back")
        a.frames.clear()
        ack = await a.say(B, "during", cid="during-1")  # the client resends the same frame
        assert ack["type"] == 10
        await b.wait_contents(["before", "during"])
        status, _, _ = await http_get(gw.port, "/healthz")
        assert status == 200
    finally:
        redis.kill()
        redis.cleanup()


async def test_undeliverable_notice_clears_the_dead_gateways_presence(
    hub: HubServer, redis_url: str, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """gw2 dies with a long presence TTL: the hub's 'not attached' notice to gw1 clears it."""
    gw1 = await start_gateway("gw-1", forget_grace=0)
    gw2 = GatewayProcess(gateway_id="gw-2", hub=hub.address, redis_url=redis_url)
    store = RedisStore(redis_url)
    try:
        await gw2.wait_healthy()
        b = await Client.open(gw2.port, B)
        await b.wait_for(lambda f: f["type"] == 14)
        gw2.proc.send_signal(signal.SIGKILL)
        gw2.proc.wait(10)
        await b.close()
        assert "gw-2" in (await store.lookup([UserId(B)])).get(UserId(B), ())  # TTL is 30 s
        a = await open_client(gw1, A)
        await wait_until(lambda: not hub.registry.is_attached("gw-2"), what="the hub to drop gw-2")  # type: ignore[arg-type]
        assert (await a.say(B, "anyone there?"))["type"] == 10

        async def forgotten() -> bool:
            return "gw-2" not in (await store.lookup([UserId(B)])).get(UserId(B), ())

        await wait_until(forgotten, what="gw-1 to clear gw-2's presence entry")
        b_again = await open_client(gw1, B)
        assert b_again.contents() == ["anyone there?"]
    finally:
        gw2.stop()
        await store.close()


async def test_healthz_says_why_a_hub_is_down(
    hub: HubServer, start_gateway: GatewayFactory
) -> None:
    """A gateway with one live hub and one that refuses connections: /healthz is 200 and
    its ``hubErrors`` says why the other is down; with the live one stopped too, 503 and
    the reason says how the attempts ended (not only "down")."""
    with socket.socket() as closed:  # a port that refuses: bound, never listening
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
        gw = await start_gateway("gw-1", hub=f"{hub.address},{dead}")

        async def health() -> tuple[int, dict[str, Any]]:
            status, body, _ = await http_get(gw.port, "/healthz")
            return status, json.loads(body)

        async def named() -> bool:
            return dead in (await health())[1].get("hubErrors", {})

        await wait_until(named, timeout=15, what="/healthz to name the dead hub")
        status, report = await health()
        assert status == 200
        assert report["hubs"] == {hub.address: "up", dead: "down"}
        assert "UNAVAILABLE" in report["hubErrors"][dead]
        assert hub.address not in report["hubErrors"]

        await hub.stop(0)
        await wait_until(lambda: not gw.linked, what="the link to drop")

        async def both_named() -> bool:
            return hub.address in (await health())[1].get("hubErrors", {})

        await wait_until(both_named, timeout=15, what="/healthz to name the stopped hub")
        status, report = await health()
        assert status == 503
        assert f"{dead}: UNAVAILABLE" in report["reason"]
        assert f"{hub.address}: " in report["reason"]
