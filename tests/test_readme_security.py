"""The README's "WSS: TLS for clients" commands run as written, with real processes.

Its blocks carry their own markers (``wss-run``, ``wss-service``, ``wss-client``,
``wss-type``, ``wss-expect``), so the walk-through test does not start them; this test
runs them in a temporary directory (the certificate files land there) against a
redis-server and a hub of its own, on free ports.
"""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tests.helpers import free_port, wait_until_sync
from tests.test_readme import (
    ROOT,
    Client,
    Service,
    _matches,
    _tcp_open,
    substitute_ports,
    the_block,
    walkthrough_env,
)

README_TLS_PORTS = (6390, 50051, 8443)


def _healthy_tls(port: int, cafile: Path) -> bool:
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(
            f"https://localhost:{port}/healthz", timeout=1, context=context
        ) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.mark.slow
def test_wss_section_runs_as_written(
    tmp_path: Path, redis_server: RedisServer, redis_url: str
) -> None:
    """The README's certificate command, TLS gateway and wss:// terminal client work as
    pasted: the client trusts the certificate, gets the replay end and a heartbeat."""
    assert redis_url.endswith(f":{redis_server.port}/0")  # the fixture emptied it
    ports = {6390: redis_server.port, 50051: free_port(), 8443: free_port()}
    env = walkthrough_env()
    cd = f"cd {shlex.quote(str(tmp_path))}\n"
    services: list[Service] = []
    client: Client | None = None
    try:
        hub = Service(
            "hub",
            f"exec {shlex.quote(sys.executable)} -m transmit_hub --listen 127.0.0.1:{ports[50051]}",
            tmp_path / "hub.log",
            env,
        )
        services.append(hub)
        wait_until_sync(lambda: hub.alive() and _tcp_open(ports[50051]), timeout=30, what="hub")

        cert = subprocess.run(
            ["bash", "-ec", cd + the_block("wss-run", "cert").body],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert cert.returncode == 0, cert.stderr.decode(errors="replace")
        pem = tmp_path / "gw-tls.pem"
        assert pem.exists(), "the certificate command wrote no gw-tls.pem"

        block = the_block("wss-service", "gw-tls")
        port = ports[int(block.args[1])]
        gateway = Service(
            "gw-tls", cd + substitute_ports(block.body, ports), tmp_path / "gw-tls.log", env
        )
        services.append(gateway)
        wait_until_sync(
            lambda: gateway.alive() and _healthy_tls(port, pem),
            timeout=30,
            what=f"the TLS gateway on {port}",
        )

        client = Client(
            "alice", cd + substitute_ports(the_block("wss-client", "alice").body, ports), env
        )
        first = client.wait_for("the replay end marker", lambda f: True)
        assert first["type"] == 14, client.output()
        for line in the_block("wss-type", "alice").body.splitlines():
            client.type_line(line)
        expected = [
            json.loads(line.partition("< ")[2])
            for line in the_block("wss-expect", "alice").body.splitlines()
        ]
        for frame in expected:
            client.wait_for(f"{frame}", lambda f, e=frame: _matches(e, f))
        assert client.close() == 0, client.output()
        client = None
    finally:
        if client is not None:
            client.close()
        for service in reversed(services):
            service.kill()
