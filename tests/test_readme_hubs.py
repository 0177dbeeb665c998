"""The README's "Several hubs" section runs as written, with real processes.

Its blocks carry their own markers, so the walk-through test leaves them alone:

- ``<!-- test: hubs-service NAME PORT -->``: a long-running process, ready when PORT answers
  (a gateway: when its ``/healthz`` is 200);
- ``<!-- test: hubs-run NAME -->``: runs to completion and must succeed.

The walk-through's Redis block provides the Redis; the fixed ports are replaced with free
ones. Between the README's commands the test does what the prose says: it connects alice
and bob, kills one hub, checks that the chat goes on, and starts the hub again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from im_gateway import auth
from tests.helpers import free_port, wait_until_sync
from tests.test_readme import (
    Service,
    _healthy,
    _tcp_open,
    readme_blocks,
    run_shell,
    services,  # noqa: F401 - the fixture
    substitute_ports,
    the_block,
    walkthrough_env,
)
from transmit_hub.pool import rank

PORTS = (6390, 50061, 50062, 8091, 8092)
SECRET = "walkthrough-secret-0123456789abcdef"


def run_block(name: str, ports: dict[int, int], env: dict[str, str], *, check: bool = True) -> str:
    """Run a ``hubs-run`` block; its output (``""`` when it failed and ``check`` is off)."""
    done = run_shell(the_block("hubs-run", name).body, ports, env)
    if check:
        assert done.returncode == 0, done.stderr
    return done.stdout if done.returncode == 0 else ""


def health(output: str) -> dict[str, Any]:
    """The ``/healthz`` answer that the inspect block's curl printed (its last line)."""
    found: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return found


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def next_frame(ws: ClientConnection, kind: int) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame


async def chat_across_a_hub_kill(
    gw1: int, gw2: int, kill: Any, hub_down: Any
) -> list[dict[str, Any]]:
    """Alice on gw-1 writes to bob on gw-2 before and after a hub is killed; what bob got."""
    alice_url = f"ws://127.0.0.1:{gw1}/ws?token={auth.mint(1, SECRET, ttl=600)}"
    bob_url = f"ws://127.0.0.1:{gw2}/ws?token={auth.mint(2, SECRET, ttl=600)}"
    got = []
    async with connect(alice_url) as alice, connect(bob_url) as bob:
        await next_frame(alice, 14)
        await next_frame(bob, 14)
        for n, content in enumerate(("before the kill", "after the kill")):
            if n == 1:
                kill()
                await asyncio.to_thread(wait_until_sync, hub_down, timeout=20, what="hub down")
            frame = {"type": 1, "id": f"hubs-{n}", "to": 2, "contentType": 0, "content": content}
            await alice.send(json.dumps(frame))
            assert (await next_frame(alice, 10))["id"] == f"hubs-{n}"
            got.append(await next_frame(bob, 1))
    return got


@pytest.mark.slow
def test_several_hubs_section_runs_as_written(tmp_path: Path, services: list[Service]) -> None:  # noqa: F811
    """Two hubs and two gateways from the README: each hub lists both gateways, /healthz
    names both hubs up; after one hub is killed the chat goes on without reconnecting and
    /healthz says that hub is down; started again, it has both gateways back."""
    ports = {p: free_port() for p in PORTS}
    env = walkthrough_env()
    redis = the_block("service", "redis")
    blocks = [(redis.args[0], redis.args[1], redis.body)]
    blocks += [(b.args[0], b.args[1], b.body) for b in readme_blocks() if b.kind == "hubs-service"]
    assert [name for name, _, _ in blocks] == ["redis", "hub-a", "hub-b", "gw-1", "gw-2"]
    by_name: dict[str, Service] = {}
    for name, readme_port, body in blocks:
        port = ports[int(readme_port)]
        service = Service(name, substitute_ports(body, ports), tmp_path / f"{name}.log", env)
        services.append(service)
        by_name[name] = service
        if name.startswith("gw"):
            ready = lambda port=port, s=service: s.alive() and _healthy(port)  # noqa: E731
        else:
            ready = lambda port=port, s=service: s.alive() and _tcp_open(port)  # noqa: E731
        wait_until_sync(ready, timeout=30, what=f"{name} (README, several hubs) on port {port}")

    hub_a, hub_b = f"127.0.0.1:{ports[50061]}", f"127.0.0.1:{ports[50062]}"

    def both_listed() -> bool:
        out = run_block("inspect", ports, env, check=False)
        # grpcurl prints '"gatewayId": "gw-1"'; the curl line is compact JSON.
        return all(out.count(f'"gatewayId": "{g}"') == 2 for g in ("gw-1", "gw-2"))

    wait_until_sync(both_listed, timeout=30, what="both hubs listing both gateways")
    assert health(run_block("inspect", ports, env))["hubs"] == {hub_a: "up", hub_b: "up"}

    # Kill the hub that gw-1 sends bob's messages through, so the chat must move.
    victim_address = rank("gw-1>gw-2", [hub_a, hub_b])[0]
    victim = "hub-a" if victim_address == hub_a else "hub-b"
    one_down = {hub_a: "up", hub_b: "up", victim_address: "down"}

    def kill_victim() -> None:
        os.killpg(by_name[victim].proc.pid, signal.SIGKILL)

    def victim_down() -> bool:
        status, report = healthz(ports[8091])
        return status == 200 and report["hubs"] == one_down

    got = asyncio.run(chat_across_a_hub_kill(ports[8091], ports[8092], kill_victim, victim_down))
    assert [f["content"] for f in got] == ["before the kill", "after the kill"]

    block = next(b for b in readme_blocks() if b.kind == "hubs-service" and b.args[0] == victim)
    again = Service(victim, substitute_ports(block.body, ports), tmp_path / "again.log", env)
    services.append(again)
    wait_until_sync(both_listed, timeout=30, what=f"{victim} back with both gateways")
    wait_until_sync(
        lambda: healthz(ports[8091])[1]["hubs"] == {hub_a: "up", hub_b: "up"},
        timeout=30,
        what="both hubs up again",
    )
    for service in reversed(services):
        if service.proc.poll() is None:
            code = service.interrupt()
            assert code in (0, 130), f"{service.name} did not stop on Ctrl-C ({code})"
