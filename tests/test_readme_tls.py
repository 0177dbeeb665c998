"""The README's "Hub TLS and mutual TLS" commands run as written, in a scratch folder.

Its blocks are marked ``<!-- test: tls-run NAME -->`` (runs to completion) and
``<!-- test: tls-service NAME PORT -->`` (a long-running process, ready when PORT answers,
for a gateway when its /healthz says 200). The fixed ports are replaced by free ones, and
the walk-through's Redis port by this run's Redis.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import RedisServer
from tests.helpers import free_port, wait_until_sync
from tests.test_readme import (
    _healthy,
    _tcp_open,
    readme_blocks,
    run_shell,
    start_shell,
    stop_shell,
    the_block,
    walkthrough_env,
)

TLS_PORTS = (50061, 8093)
REDIS_PORT = 6390


def test_hub_tls_section_runs_as_written(tmp_path: Path, redis_server: RedisServer) -> None:
    """openssl makes the CA and certificates, the hub serves mutual TLS, the gateway attaches
    with its certificate (/healthz 200), and grpcurl with -cacert/-cert/-key lists it."""
    ports = {p: free_port() for p in TLS_PORTS}
    ports[REDIS_PORT] = redis_server.port
    env = walkthrough_env()

    def run(name: str) -> str:
        done = run_shell(the_block("tls-run", name).body, ports, env, tmp_path)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        return done.stdout

    run("certs")
    started: list[subprocess.Popen[bytes]] = []
    try:
        for block in (b for b in readme_blocks() if b.kind == "tls-service"):
            name, readme_port = block.args
            port = ports[int(readme_port)]
            log = tmp_path / f"{name}.log"
            proc = start_shell(block.body, ports, env, tmp_path, log)
            started.append(proc)
            gateway = name.startswith("gw")

            def ready(
                port: int = port,
                proc: subprocess.Popen[bytes] = proc,
                log: Path = log,
                gateway: bool = gateway,
            ) -> bool:
                assert proc.poll() is None, log.read_text()
                return _healthy(port) if gateway else _tcp_open(port)

            wait_until_sync(ready, timeout=30, what=f"{name} (README TLS section) on {port}")
        out = run("grpcurl")
        assert "transmit.v1.TransmitHubService" in out
        assert '"gatewayId": "gw-3"' in out
    finally:
        for proc in reversed(started):
            stop_shell(proc)
