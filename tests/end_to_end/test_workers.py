"""``python -m im_gateway --workers 2``: two gateway processes on one port, supervised.

Real processes throughout: the parent and its workers (``python -m im_gateway``), a real
hub and a real redis-server; clients are real WebSockets on the shared port.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devtools.launch import free_port
from im_gateway.backlog import migrate_setting
from tests.end_to_end.harness import Client, GatewayProcess, http_get
from tests.helpers import wait_until
from transmit_hub.server import HubServer
from transmit_hub.types import GatewayId

API_KEY = "workers-test-api-key-0123456789"
DRAIN_TIMEOUT = 5.0


def worker_pids(parent: int) -> dict[str, int]:
    """The parent's live children by their ``--gateway-id`` (from /proc)."""
    found = {}
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited between the list and the read (a killed worker)
        ids = [argv[i + 1].decode() for i, a in enumerate(argv) if a == b"--gateway-id"]
        if ids:
            found[ids[-1]] = int(pid)
    return found


def free_pair() -> int:
    """A free port whose next one is free too (metrics of worker 0 and worker 1)."""
    while True:
        port = free_port()
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"no {name} in the metrics"
    return float(match[1])


class Workers:
    """A ``--workers 2`` gateway (id ``gw-w``): its port, API port and metrics ports."""

    def __init__(self, hub: HubServer, redis_url: str, *extra: str) -> None:
        self.hub = hub
        self.api_port = free_port()
        self.metrics_port = free_pair()
        self.process = GatewayProcess(
            gateway_id="gw-w",
            hub=hub.address,
            redis_url=redis_url,
            extra=(
                *("--workers", "2", "--drain-timeout", str(DRAIN_TIMEOUT)),
                *("--api-listen", f"127.0.0.1:{self.api_port}", "--api-key", API_KEY),
                *("--metrics-listen", f"127.0.0.1:{self.metrics_port}"),
                *extra,
            ),
        )
        self.port = self.process.port

    def attached(self) -> set[str]:
        ids = ("gw-w-0", "gw-w-1")
        return {i for i in ids if self.hub.registry.is_attached(GatewayId(i))}

    async def wait_attached(self) -> None:
        """Both workers attached to the hub and answering on their metrics ports."""

        async def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the parent exited: {self.process.output()}")
            if self.attached() != {"gw-w-0", "gw-w-1"}:
                return False
            try:
                for port in (self.metrics_port, self.metrics_port + 1):
                    await http_get(port, "/metrics")
            except OSError:
                return False
            return True

        await wait_until(up, timeout=30, what="both workers attached")

    async def connections(self) -> tuple[float, float]:
        """``im_gateway_connections`` of worker 0 and worker 1 (their own metrics ports)."""
        counts = []
        for port in (self.metrics_port, self.metrics_port + 1):
            status, body, _ = await http_get(port, "/metrics")
            assert status == 200
            counts.append(metric(body.decode(), "im_gateway_connections"))
        return counts[0], counts[1]

    async def presence(self, users: list[int]) -> dict[str, list[str]]:
        """The server API's presence call, on the shared API port."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{self.api_port}/api/presence",
                json={"users": users},
                headers={"Authorization": f"Bearer {API_KEY}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            presence: dict[str, list[str]] = body["presence"]
            return presence

    async def open_on_each(self, users: range) -> tuple[Client, Client]:
        """Open a client per user; return one on worker 0 and one on worker 1 (others
        closed), by the presence the server API reports."""
        clients = {u: await Client.open(self.port, u) for u in users}
        for c in clients.values():
            await c.wait_for(lambda f: f["type"] == 14, what="the replay marker")
        where = await wait_for_presence(self, list(users))
        on0 = next(u for u in users if where[str(u)] == ["gw-w-0"])
        on1 = next(u for u in users if where[str(u)] == ["gw-w-1"])
        for u, c in clients.items():
            if u not in (on0, on1):
                await c.close()
        return clients[on0], clients[on1]


async def wait_for_presence(workers: Workers, users: list[int]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}

    async def everyone() -> bool:
        found.update(await workers.presence(users))
        return all(found.get(str(u)) for u in users)

    await wait_until(everyone, timeout=10, what="every user's presence")
    return found


@pytest.fixture
async def workers(hub: HubServer, redis_url: str) -> AsyncIterator[Workers]:
    w = Workers(hub, redis_url)
    try:
        await w.wait_attached()
        yield w
    finally:
        w.process.stop()


async def test_two_workers_share_the_port_and_each_is_a_gateway_on_the_hub(
    workers: Workers,
) -> None:
    """Both workers attach to the hub with their own ids (gw-w-0, gw-w-1); 40 clients on
    the one port are spread over both (each worker's own /metrics counts its share)."""
    assert workers.attached() == {"gw-w-0", "gw-w-1"}
    pids = worker_pids(workers.process.pid)
    assert set(pids) == {"gw-w-0", "gw-w-1"}
    clients = [await Client.open(workers.port, u) for u in range(1, 41)]
    try:

        async def counted() -> bool:
            return sum(await workers.connections()) == 40

        await wait_until(counted, timeout=10, what="40 connections counted")
        first, second = await workers.connections()
        assert min(first, second) > 0, (first, second)
    finally:
        for c in clients:
            await c.close()


async def test_users_on_different_workers_chat(workers: Workers) -> None:
    """A private message from a user on worker 0 reaches a user on worker 1 and back,
    through the hub (each worker is a gateway of its own)."""
    a, b = await workers.open_on_each(range(100, 140))
    ack = await a.say(b.user, "from worker 0")
    assert ack["type"] == 10
    await b.wait_contents(["from worker 0"])
    ack = await b.say(a.user, "from worker 1")
    assert ack["type"] == 10
    await a.wait_contents(["from worker 1"])
    await a.close()
    await b.close()


async def test_a_killed_worker_is_restarted_and_its_users_get_every_acked_message(
    workers: Workers,
) -> None:
    """SIGKILL of worker 1: the parent starts it again (a new pid, attached again as
    gw-w-1); its user reconnects to the port and gets, by replay, every message acked to
    the sender on worker 0 while it was away."""
    a, b = await workers.open_on_each(range(200, 240))
    old = worker_pids(workers.process.pid)["gw-w-1"]
    os.kill(old, signal.SIGKILL)
    await asyncio.wait_for(b.closed, 10)
    sent = []
    for i in range(20):  # while worker 1 is down or restarting
        ack = await a.say(b.user, f"m{i}")
        assert ack["type"] == 10, ack
        sent.append(f"m{i}")

    def restarted() -> bool:
        pid = worker_pids(workers.process.pid).get("gw-w-1")
        return pid is not None and pid != old and "gw-w-1" in workers.attached()

    await wait_until(restarted, timeout=20, what="worker 1 started again and attached")
    back = await Client.open(workers.port, b.user)
    await back.wait_contents(sent, timeout=15)
    assert sorted(back.contents()) == sorted(sent)  # each once
    assert workers.process.poll() is None
    await a.close()
    await back.close()


async def test_a_stopped_worker_is_killed_and_started_again(hub: HubServer, redis_url: str) -> None:
    """SIGSTOP of worker 1 (a stuck event loop, as the parent sees it: no heartbeat, no
    exit; its share of the port would take connections and answer nothing): within
    --worker-heartbeat (2 s here) the parent kills it, says so, and starts it again, and
    the new worker serves its metrics port."""
    workers = Workers(hub, redis_url, "--worker-heartbeat", "2")
    try:
        await workers.wait_attached()
        old = worker_pids(workers.process.pid)["gw-w-1"]
        stopped = time.monotonic()
        os.kill(old, signal.SIGSTOP)

        def restarted() -> bool:
            pid = worker_pids(workers.process.pid).get("gw-w-1")
            return pid is not None and pid != old

        await wait_until(restarted, timeout=20, what="worker 1 killed and started again")
        assert time.monotonic() - stopped < 10
        await workers.wait_attached()
        assert "sent no heartbeat" in workers.process.output()
        assert workers.process.poll() is None
    finally:
        workers.process.stop()


async def test_sigterm_drains_both_workers_and_the_parent_exits_0(workers: Workers) -> None:
    """SIGTERM to the parent: users on both workers are closed with 1012 (drain), the
    parent exits 0 within --drain-timeout, and no worker is left."""
    a, b = await workers.open_on_each(range(300, 340))
    pids = worker_pids(workers.process.pid)
    started = time.monotonic()
    workers.process.proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(a.closed, b.closed), DRAIN_TIMEOUT + 5)
    assert (a.ws.close_code, b.ws.close_code) == (1012, 1012)
    code = await asyncio.to_thread(workers.process.proc.wait, DRAIN_TIMEOUT + 10)
    assert code == 0, workers.process.output()
    assert time.monotonic() - started < DRAIN_TIMEOUT + 5
    assert not [pid for pid in pids.values() if running(pid)]


def running(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def test_a_worker_that_cannot_start_makes_the_parent_give_up(
    hub: HubServer,
) -> None:
    """Workers that die at once (no Redis there) are restarted at most --worker-restarts
    times within a minute; then the parent exits 1 with one line naming the worker."""
    with socket.socket() as holder:  # a port where nothing answers
        holder.bind(("127.0.0.1", 0))
        nowhere = f"redis://127.0.0.1:{holder.getsockname()[1]}/0"
        gw = GatewayProcess(
            gateway_id="gw-dead",
            hub=hub.address,
            redis_url=nowhere,
            extra=("--workers", "2", "--worker-restarts", "2"),
        )
        try:
            code = await asyncio.to_thread(gw.proc.wait, 60)
            out = gw.output()
        finally:
            gw.stop()
    assert code == 1, out
    assert re.search(r"worker \d \(gw-dead-\d\) exited 3 times within 60 s", out), out
    assert "--worker-restarts 2" in out
    assert "cannot reach Redis" in out  # the worker's own reason is in the log too


async def test_a_port_held_by_another_program_fails_the_start_at_once(
    hub: HubServer, redis_url: str
) -> None:
    """The parent binds the port first: one held by a program without SO_REUSEPORT fails
    the start with one line naming it, before any worker runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        gw = GatewayProcess(
            gateway_id="gw-taken",
            hub=hub.address,
            redis_url=redis_url,
            port=port,
            extra=("--workers", "2"),
        )
        try:
            code = await asyncio.to_thread(gw.proc.wait, 30)
            out = gw.output()
        finally:
            gw.stop()
    assert code == 1, out
    assert f"cannot listen on 127.0.0.1:{port}" in out


async def test_the_parent_says_when_a_dead_workers_queue_would_be_reset(
    hub: HubServer, redis_url: str
) -> None:
    """With ``net.ipv4.tcp_migrate_req`` 0, Linux resets the connections waiting in a dead
    worker's accept queue: the parent's start names the sysctl that hands them on instead;
    with 1 it says nothing of it (this machine's value decides which is checked)."""
    setting = migrate_setting()
    assert setting is not None, "a kernel before 5.14: no tcp_migrate_req to check"
    w = Workers(hub, redis_url, "--log-level", "INFO")
    try:
        await w.wait_attached()
        told = "sysctl -w net.ipv4.tcp_migrate_req=1" in w.process.output()
        assert told == (setting == 0), w.process.output()
    finally:
        w.process.stop()
