"""The open-file limit, on real processes with their limit set before they start: both
programs raise the soft limit to the hard one, and a gateway at its limit answers every
handshake (101 or 503), keeps /healthz answering and its users chatting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import uuid

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.end_to_end.harness import Client, GatewayProcess, http_get, token
from tests.helpers import free_port, wait_until_sync, with_nofile
from transmit_hub.server import HubServer

CLIENTS = 1100
FIRST_USER = 7000


def limits_of(pid: int) -> tuple[int, int]:
    """A process's open-file limits (soft, hard), from /proc."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


async def open_many(
    port: int, count: int
) -> tuple[list[tuple[int, ClientConnection]], list[int], list[str]]:
    """Open ``count`` WebSockets at once (200 handshakes in flight): the open ones (with
    their user), the HTTP statuses of the refused ones, and every other outcome."""
    opened: list[tuple[int, ClientConnection]] = []
    refused: list[int] = []
    other: list[str] = []
    gate = asyncio.Semaphore(200)

    async def one(user: int) -> None:
        async with gate:
            try:
                ws = await connect(f"ws://127.0.0.1:{port}/ws?token={token(user)}", open_timeout=30)
            except InvalidStatus as exc:
                refused.append(exc.response.status_code)
            except Exception as exc:
                other.append(f"{type(exc).__name__}: {exc}")
            else:
                opened.append((user, ws))

    await asyncio.gather(*(one(FIRST_USER + i) for i in range(count)))
    return opened, refused, other


async def chat(to: Client, frm: Client) -> None:
    """``frm`` writes to ``to``, who receives it."""
    try:
        for client in (to, frm):
            await client.wait_for(lambda f: f["type"] == 14, what="the replay end marker")
        text = f"at the limit {uuid.uuid4().hex}"
        ack = await frm.say(to.user, text, cid=uuid.uuid4().hex)
        assert ack["type"] == 10, ack
        await to.wait_contents([text])
    finally:
        await frm.close()
        await to.close()


async def test_at_the_descriptor_limit_every_handshake_is_answered(
    hub: HubServer, redis_url: str
) -> None:
    """Under soft = hard = 1,024 descriptors, 1,100 clients at once: each one is upgraded
    or answered 503 (none reset or left hanging), /healthz answers 200 and users chat while
    they are all held; the gateway warned at start that --max-connections cannot fit."""
    gw = GatewayProcess(
        gateway_id="gw-fd",
        hub=hub.address,
        redis_url=redis_url,
        nofile=(1024, 1024),
    )
    opened: list[tuple[int, ClientConnection]] = []
    try:
        await gw.wait_healthy()
        opened, refused, other = await open_many(gw.port, CLIENTS)
        assert other == [], other[:5]
        assert set(refused) <= {503}, refused
        assert refused, "1,100 connections fit under 1,024 descriptors?"
        assert len(opened) >= 500, len(opened)
        status, body, _ = await http_get(gw.port, "/healthz")
        assert status == 200, body
        (u1, ws1), (u2, ws2) = opened[:2]
        await chat(Client(ws1, u1), Client(ws2, u2))  # users held at the limit chat on
        for _, ws in opened[2:200]:
            await ws.close()
        new = FIRST_USER + CLIENTS
        await chat(
            await Client.open(gw.port, new, open_timeout=10),
            await Client.open(gw.port, new + 1, open_timeout=10),
        )
        assert "cannot fit under the open-file limit" in gw.output()
    finally:
        await asyncio.gather(*(ws.close() for _, ws in opened), return_exceptions=True)
        gw.stop()


async def test_the_gateway_raises_its_soft_limit_to_the_hard_one(
    hub: HubServer, redis_url: str
) -> None:
    """Started with soft 1,024 and hard 4,096, the gateway runs with 4,096, says so in one
    INFO line, and takes all 1,100 clients."""
    gw = GatewayProcess(
        gateway_id="gw-fd-raised",
        hub=hub.address,
        redis_url=redis_url,
        extra=("--log-level", "INFO"),
        nofile=(1024, 4096),
    )
    opened: list[tuple[int, ClientConnection]] = []
    try:
        await gw.wait_healthy()
        assert limits_of(gw.proc.pid) == (4096, 4096)
        assert gw.output().count("open-file limit raised from 1024 to 4096") == 1
        opened, refused, other = await open_many(gw.port, CLIENTS)
        assert (len(opened), refused, other) == (CLIENTS, [], [])
    finally:
        await asyncio.gather(*(ws.close() for _, ws in opened), return_exceptions=True)
        gw.stop()


def test_the_hub_raises_its_soft_limit_to_the_hard_one() -> None:
    """``python -m transmit_hub`` started with soft 1,024 and hard 4,096 runs with 4,096
    and says so in one INFO line."""
    with tempfile.NamedTemporaryFile(prefix="hub-fd-", suffix=".log") as log:
        proc = subprocess.Popen(
            with_nofile(1024, 4096, "-m", "transmit_hub", "--listen", f"127.0.0.1:{free_port()}"),
            env=dict(os.environ),
            stdout=log,
            stderr=log,
        )
        try:

            def said() -> bool:
                with open(log.name, encoding="utf-8") as f:
                    return "open-file limit raised from 1024 to 4096" in f.read()

            wait_until_sync(said, timeout=20, what="the hub's INFO line")
            assert limits_of(proc.pid) == (4096, 4096)
        finally:
            proc.terminate()
            proc.wait(10)


async def test_idle_api_sockets_do_not_lock_websocket_users_out(
    hub: HubServer, redis_url: str
) -> None:
    """Under 1,024 descriptors, 1,000 idle API connections without a key: 256 are held
    (--api-max-connections), the rest get 503; 300 WebSocket clients are then each
    upgraded or answered 503, most upgraded, and users chat."""
    api_port = free_port()
    gw = GatewayProcess(
        gateway_id="gw-fd-api",
        hub=hub.address,
        redis_url=redis_url,
        extra=(
            "--api-listen",
            f"127.0.0.1:{api_port}",
            "--api-key",
            "api-key-for-the-descriptor-test",
            "--api-header-timeout",
            "60",
        ),
        nofile=(1024, 1024),
    )
    idle: list[asyncio.StreamWriter] = []
    opened: list[tuple[int, ClientConnection]] = []
    try:
        await gw.wait_healthy()
        for _ in range(1000):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", api_port)
            except OSError:
                continue
            idle.append(writer)
        opened, refused, other = await open_many(gw.port, 300)
        assert other == [], other[:5]
        assert set(refused) <= {503}, refused
        assert len(opened) >= 200, (len(opened), len(refused))
        status, body, _ = await http_get(gw.port, "/healthz")
        assert status == 200, body
        (u1, ws1), (u2, ws2) = opened[:2]
        await chat(Client(ws1, u1), Client(ws2, u2))
    finally:
        for writer in idle:
            writer.close()
        await asyncio.gather(*(ws.close() for _, ws in opened), return_exceptions=True)
        gw.stop()
