"""TLS handshakes on the gateway's WebSocket port under attack and faults, on real
gateways with certificates the test makes: connections stalled before or in their TLS
handshake count against ``--max-handshakes`` from their TCP accept (beyond it they are
closed at once, so they cannot take the process's descriptors), a handshake is cut at
``--handshake-timeout`` and its count given back, and real clients chat afterwards."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from devtools.certs import make_server_cert
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import Client, GatewayProcess, token
from tests.helpers import tls_behind_handshake, wait_until
from transmit_hub.server import HubServer

PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a ClientHello's start
CAP = 5
ATTACKERS = 40


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def closed_at_once(reader: asyncio.StreamReader, within: float = 2.0) -> bool:
    """The peer closed (EOF or reset) within ``within`` seconds."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def chat(port: int, context: ssl.SSLContext) -> None:
    """Two users connect over wss:// and one writes to the other."""
    url = f"wss://127.0.0.1:{port}/ws?token="
    alice = Client(await connect(url + token(1), ssl=context, open_timeout=10), 1)
    bob = Client(await connect(url + token(2), ssl=context, open_timeout=10), 2)
    try:
        for client in (alice, bob):
            await client.wait_for(lambda f: f["type"] == 14, what="the replay end over wss")
        answer = await alice.say(2, "hi bob, after the attack")
        assert answer["type"] == 10
        await bob.wait_contents(["hi bob, after the attack"])
    finally:
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("sends", [b"", PARTIAL_HELLO], ids=["silent", "partial-hello"])
async def test_stalled_tls_connections_count_against_max_handshakes(
    hub: HubServer, redis_url: str, tmp_path: Path, sends: bytes
) -> None:
    """A real gateway process (uvloop) with --max-handshakes 5 over wss://: five TCP
    connections that send nothing (or half a ClientHello) are held; each of 40 more is
    closed at once, and the process's open descriptors stay within the cap; once the
    five close, users connect over wss:// and chat."""
    certs = make_server_cert(tmp_path)
    gw = GatewayProcess(
        gateway_id="gw-tls-hostile",
        hub=hub.address,
        redis_url=redis_url,
        extra=(
            *("--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
            *("--max-handshakes", str(CAP)),
        ),
    )
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        await _wait_healthy_tls(gw.port, certs.client_context())
        pid = gw.proc.pid
        baseline = open_descriptors(pid)
        for _ in range(CAP):
            held.append(await asyncio.open_connection("127.0.0.1", gw.port))
            held[-1][1].write(sends)

        async def counted() -> bool:
            """The five are counted: one more is closed at once (the descriptor count
            cannot say so: the baseline may hold a descriptor about to close)."""
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(sends)
            try:
                return await closed_at_once(reader, within=0.5)
            finally:
                writer.close()

        await wait_until(counted, timeout=20, what="the stalled connections counted")
        peak = 0
        refused = 0
        for _ in range(ATTACKERS):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(sends)
            refused += await closed_at_once(reader)
            peak = max(peak, open_descriptors(pid))
            writer.close()
        assert refused == ATTACKERS, f"only {refused} of {ATTACKERS} closed at once"
        assert peak <= baseline + CAP + 3, (baseline, peak)
        for reader, _ in held:  # the held ones are still open: not cut by the cap
            assert not reader.at_eof()
        for _, writer in held:
            writer.close()
        await wait_until(
            lambda: open_descriptors(pid) <= baseline + 1,
            timeout=10,
            what="the stalled connections gone",
        )
        await chat(gw.port, certs.client_context())
    finally:
        for _, writer in held:
            writer.close()
        gw.stop()


async def _wait_healthy_tls(port: int, context: ssl.SSLContext) -> None:
    """/healthz answers 200 over https://."""

    async def healthy() -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except (OSError, ssl.SSLError):
            return False
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
        finally:
            writer.close()

    await wait_until(healthy, timeout=30, interval=0.1, what="the TLS gateway healthy")


async def test_a_tls_handshake_is_cut_at_the_handshake_timeout_and_its_count_given_back(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """--handshake-timeout 1: two connections stalled in their TLS handshake hold the
    two handshake slots (a third is closed at once), are cut after about a second,
    their counts come back to the baseline and the metric counts them as tls_timeout;
    then a client whose upgrade request travels in the same segment as its TLS Finished
    is upgraded, and users chat."""
    certs = make_server_cert(tmp_path)
    gw = await start_gateway(
        "gw-tls-cut",
        tls_cert=str(certs.cert),
        tls_key=str(certs.key),
        handshake_timeout=1.0,
        max_handshakes=2,
    )
    sockets = gw._sockets
    assert (sockets.ws, sockets.handshaking) == (0, 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stalled = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
    stalled[1][1].write(PARTIAL_HELLO)
    await wait_until(lambda: sockets.handshaking == 2, what="both counted at the accept")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    assert await closed_at_once(reader)
    writer.close()
    for reader, _ in stalled:
        assert await closed_at_once(reader, within=5)
    assert loop.time() - started >= 1.0
    await wait_until(
        lambda: (sockets.ws, sockets.handshaking) == (0, 0), what="the counts given back"
    )
    assert gw.metrics.handshakes["tls_timeout"] == 2
    assert gw.metrics.handshakes["handshakes"] == 1
    for _, writer in stalled:
        writer.close()
    response = await asyncio.to_thread(
        upgrade_behind_finished, gw.port, certs.client_context(), token(3)
    )
    assert response.startswith(b"HTTP/1.1 101 "), response[:80]
    await wait_until(lambda: sockets.ws == 0, what="the upgraded client's count back")
    await chat(gw.port, certs.client_context())


def upgrade_behind_finished(port: int, context: ssl.SSLContext, tok: str) -> bytes:
    """A wss:// upgrade whose request leaves in one TCP write with the client's TLS
    Finished (right behind the handshake); the response's head, then close."""
    request = (
        f"GET /ws?token={tok} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        tls, incoming = tls_behind_handshake(sock, context, request)
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                continue
        return received
