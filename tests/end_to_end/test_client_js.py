"""The JavaScript client on real processes: ``node --test`` runs tests/js/*.e2e.mjs against
gateways, hubs and Redis that this side starts, kills and restarts when the Node test asks.

The Node test imports the module from the bytes a gateway serves at ``/client.js`` (and
checks they are the file's), so what is tested is what a browser loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest

from im_gateway.store import RedisStore
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import Client, GatewayProcess, http_get, token
from tests.end_to_end.processes import HubProcess
from tests.helpers import free_port, wait_until
from tests.node import CLIENT_JS, control_server, node_e2e
from transmit_hub.types import UserId

ALICE, BOB = 4101, 4102
TOTAL = int(os.environ.get("CLIENT_E2E_TOTAL", "1000"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


class Processes:
    """Two hubs and alice's and bob's gateways (attached to both), restartable by name."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.hubs = {name: HubProcess(name) for name in ("hub-1", "hub-2")}
        self.hub_list = ",".join(h.address for h in self.hubs.values())
        self.gateways: dict[str, GatewayProcess] = {}
        for name in ("alice", "bob"):
            self.gateways[name] = self._gateway(name, None)

    def _gateway(self, name: str, port: int | None) -> GatewayProcess:
        return GatewayProcess(
            gateway_id=f"gw-{name}", hub=self.hub_list, redis_url=self.redis_url, port=port
        )

    async def wait_ready(self) -> None:
        for hub in self.hubs.values():
            await hub.wait_serving()
        for gateway in self.gateways.values():
            await gateway.wait_healthy()

    async def kill(self, name: str) -> None:
        """SIGKILL a hub or a gateway, and start it again on the same port."""
        if name in self.hubs:
            hub = self.hubs[name]
            hub.kill()
            hub.restart()
            await hub.wait_serving()
            return
        old = self.gateways[name]
        old.stop()  # SIGKILL
        self.gateways[name] = new = self._gateway(name, old.port)
        await new.wait_healthy()

    def stop(self) -> None:
        for process in [*self.gateways.values(), *self.hubs.values()]:
            process.stop()


async def test_node_client_survives_gateway_and_hub_kills(redis_url: str) -> None:
    """1,000 sends, 50 in flight, through SIGKILLs of bob's gateway, a hub and alice's."""
    # The Node side asserts: every send resolves with a message id; bob sees each message
    # once, in inbox order; a restarted bob is shown nothing again. And first: a forged
    # token is refused ("unauthorized"), both through ws's error and through the plain
    # GET /ws a browser's client falls back on; an unreachable gateway is no refusal.
    processes = Processes(redis_url)
    store = RedisStore(redis_url)
    kills: list[str] = []

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := (await reader.readline()).decode().strip():
            match line.split():
                case ["kill", name]:
                    await processes.kill(name)
                    kills.append(name)
                case ["acked", "bob", seq]:
                    user = UserId(BOB)

                    async def acked(user: UserId = user, upto: int = int(seq)) -> bool:
                        return await store.acked(user) >= upto

                    await wait_until(acked, timeout=10, what=f"bob's ack of {seq} stored")
                case _:
                    raise AssertionError(f"unknown control line {line!r}")
            writer.write(f"ok {line}\n".encode())
            await writer.drain()

    try:
        await processes.wait_ready()
        gateways = {
            name: {
                "http": f"http://127.0.0.1:{gw.port}",
                "ws": f"ws://127.0.0.1:{gw.port}/ws",
            }
            for name, gw in processes.gateways.items()
        }
        async with control_server(control) as control_port:
            config = {
                "gateways": gateways,
                "tokens": {"alice": token(ALICE), "bob": token(BOB)},
                "users": {"alice": ALICE, "bob": BOB},
                "total": TOTAL,
                "controlPort": control_port,
                "unreachable": f"ws://127.0.0.1:{free_port()}/ws",
            }
            await node_e2e("faults.e2e.mjs", config, within=360)
        assert kills == ["bob", "hub-1", "alice"], kills
    finally:
        await store.close()
        processes.stop()


async def test_gateway_serves_the_module_and_answers_the_clients_probe(
    start_gateway: GatewayFactory,
) -> None:
    """GET /client.js is the file as JavaScript; a plain GET /ws (the client's 401 probe)
    says 401 for a forged token and takes no connection slot for a good one."""
    gw = await start_gateway("gw-probe", max_connections_per_user=1)
    status, body, headers = await http_get(gw.port, "/client.js")
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert body == CLIENT_JS.read_bytes()
    good = token(ALICE)
    forged = good.rsplit(".", 1)[0] + ".AAAA"
    status, body, _ = await http_get(gw.port, f"/ws?token={forged}")
    assert status == 401, body
    for _ in range(3):
        status, _, _ = await http_get(gw.port, f"/ws?token={good}")
        assert status not in (200, 401, 429), status
    # The probes gave their slots back: the one connection allowed still opens.
    client = await Client.open(gw.port, ALICE)
    try:
        await client.wait_for(lambda f: f["type"] == 14, what="the replay end marker")
    finally:
        await client.close()


async def test_node_client_closed_in_its_connect_replay_acknowledged_what_it_showed(
    start_gateway: GatewayFactory, redis_url: str
) -> None:
    """bob's first client, closed from onmessage after 100 of 300 waiting messages (its
    connect replay still running), acknowledged them: its next client is shown the other
    200 and none of those again (tests/js/closed_replay.e2e.mjs asserts)."""
    gw = await start_gateway("gw-closed-replay")
    store = RedisStore(redis_url)
    stored: list[str] = []

    async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := (await reader.readline()).decode().strip():
            match line.split():
                case ["acked", seq]:

                    async def acked(upto: int = int(seq)) -> bool:
                        return await store.acked(UserId(BOB)) >= upto

                    # Answered either way: the next client shows what a missing ack costs.
                    with contextlib.suppress(AssertionError):
                        await wait_until(acked, timeout=10, what=f"bob's ack of {seq} stored")
                        stored.append(seq)
                case _:
                    raise AssertionError(f"unknown control line {line!r}")
            writer.write(f"ok {line}\n".encode())
            await writer.drain()

    try:
        async with control_server(control) as control_port:
            config = {
                "http": f"http://127.0.0.1:{gw.port}",
                "ws": f"ws://127.0.0.1:{gw.port}/ws",
                "tokens": {"alice": token(ALICE), "bob": token(BOB)},
                "users": {"alice": ALICE, "bob": BOB},
                "total": 300,
                "closeAfter": 100,
                "controlPort": control_port,
            }
            report = await node_e2e("closed_replay.e2e.mjs", config, within=150)
        assert len(stored) == 1, report
    finally:
        await store.close()
