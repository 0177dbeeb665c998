"""A reconnect storm while the gateway's event loop does not accept (frozen with SIGSTOP,
as a loop busy with TLS handshakes looks to the kernel): the kernel completes the TCP
handshakes into the listener's accept queue, ``--listen-backlog`` deep, and drops the SYNs
beyond it, which their clients send again only a second or more later.

With asyncio's default of 100 (before ``--listen-backlog``), 101 of 600 clients got in.
"""

from __future__ import annotations

import asyncio
import signal
import socket

from devtools.launch import free_port
from im_gateway.backlog import kernel_cap
from tests.end_to_end.harness import GatewayProcess
from tests.helpers import wait_until
from transmit_hub import HubServer

API_KEY = "k" * 32
CLIENTS = 600


async def connect_all(port: int, n: int, *, within: float) -> list[socket.socket]:
    """``n`` TCP connects to 127.0.0.1:``port``, made at once: the sockets connected within
    ``within`` seconds (shorter than a dropped SYN's first retry, 1 s); the rest closed."""
    loop = asyncio.get_running_loop()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    for sock in socks:
        sock.setblocking(False)
    results = await asyncio.gather(
        *(asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), within) for s in socks),
        return_exceptions=True,
    )
    for sock, result in zip(socks, results, strict=True):
        if result is not None:
            sock.close()
    return [sock for sock, result in zip(socks, results, strict=True) if result is None]


async def answered(socks: list[socket.socket]) -> int:
    """Ask ``GET /healthz`` on each connected socket: how many get an HTTP answer within
    20 s (each socket closed after)."""

    async def ask(sock: socket.socket) -> bool:
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(20):
                return (await reader.readline()).startswith(b"HTTP/1.1 ")
        except OSError:
            return False
        finally:
            writer.close()

    return sum(await asyncio.gather(*(ask(s) for s in socks)))


def queued(backlog: int) -> int:
    """Connections a listener with ``backlog`` holds unaccepted: Linux takes one more than
    the backlog, which it caps at net.core.somaxconn."""
    cap = kernel_cap()
    assert cap is not None, "this test reads net.core.somaxconn: Linux only"
    return min(backlog, cap) + 1


def with_api(
    hub: HubServer, redis_url: str, gateway_id: str, *extra: str
) -> tuple[GatewayProcess, int]:
    """A gateway process with the server API on a port of its own: it, and that port."""
    api_port = free_port()
    gw = GatewayProcess(
        gateway_id=gateway_id,
        hub=hub.address,
        redis_url=redis_url,
        extra=("--api-listen", f"127.0.0.1:{api_port}", "--api-key", API_KEY, *extra),
    )
    return gw, api_port


async def frozen_storm(gw: GatewayProcess, ports: list[int]) -> list[list[socket.socket]]:
    """Freeze the gateway, open ``CLIENTS`` connections to each port, let it run again:
    the sockets each port connected while it was frozen."""
    await gw.wait_healthy()
    gw.proc.send_signal(signal.SIGSTOP)
    try:
        return [await connect_all(port, CLIENTS, within=0.5) for port in ports]
    finally:
        gw.proc.send_signal(signal.SIGCONT)


async def test_a_storm_waits_in_the_default_queue_on_both_ports(
    hub: HubServer, redis_url: str
) -> None:
    """Default backlog (1024): all 600 clients of a storm complete their TCP handshake on
    the WebSocket port and on the server API's while the gateway is not accepting, and
    once it runs again each gets an answer on the connection it waited with."""
    assert queued(1024) > CLIENTS, "net.core.somaxconn is below 600: raise it to run this"
    gw, api_port = with_api(hub, redis_url, "gw-storm")
    try:
        storm = await frozen_storm(gw, [gw.port, api_port])
        assert [len(socks) for socks in storm] == [CLIENTS, CLIENTS]
        # Running again, the gateway takes them from the queue and answers each.
        assert [await answered(socks) for socks in storm] == [CLIENTS, CLIENTS]
    finally:
        gw.stop()


async def test_the_flag_bounds_the_queue(hub: HubServer, redis_url: str) -> None:
    """``--listen-backlog 200``: 201 connections wait for the gateway, the other SYNs are
    dropped (what the kernel does with a full queue), on both ports."""
    gw, api_port = with_api(hub, redis_url, "gw-storm-200", "--listen-backlog", "200")
    try:
        storm = await frozen_storm(gw, [gw.port, api_port])
        assert [len(socks) for socks in storm] == [queued(200)] * 2
        for socks in storm:
            for sock in socks:
                sock.close()
    finally:
        gw.stop()


async def test_a_backlog_above_the_kernels_cap_is_named_at_start(
    hub: HubServer, redis_url: str
) -> None:
    """A ``--listen-backlog`` the kernel cuts: one warning at start names the cap and the
    sysctl that raises it; the gateway serves anyway."""
    cap = kernel_cap()
    assert cap is not None, "this test reads net.core.somaxconn: Linux only"
    gw = GatewayProcess(
        gateway_id="gw-capped",
        hub=hub.address,
        redis_url=redis_url,
        extra=("--listen-backlog", str(cap + 1)),
    )
    try:
        await gw.wait_healthy()
        await wait_until(
            lambda: f"net.core.somaxconn = {cap}" in gw.output(),
            timeout=10,
            what="the start's warning",
        )
        assert f"sysctl -w net.core.somaxconn={cap + 1}" in gw.output()
        assert gw.output().count("--listen-backlog") == 2  # one line: the flag, the fix
    finally:
        gw.stop()
