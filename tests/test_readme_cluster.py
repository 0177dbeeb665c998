"""The README's "Running on Redis Cluster" section runs as written, with real processes.

Its blocks carry their own markers, so the walk-through test leaves them alone:

- ``<!-- test: cluster-service NAME PORT -->``: a long-running process, ready when PORT
  answers (a gateway: when its ``/healthz`` is 200);
- ``<!-- test: cluster-run NAME -->``: runs to completion and must succeed.

The walk-through's hub block provides the hub. The fixed ports are replaced with free ones
(cluster nodes: ones whose bus port, the port + 10000, is free too), and the nodes'
directory with one of the test's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.launch import cluster_port
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

NODES = (7001, 7002, 7003, 7004, 7005, 7006)


def run_block(name: str, script: str, env: dict[str, str]) -> str:
    done = run_shell(script, {}, env)
    assert done.returncode == 0, f"README block {name}: {done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_cluster_section_runs_as_written(tmp_path: Path, services: list[Service]) -> None:  # noqa: F811
    """Six nodes made a cluster by redis-cli as the README says, and a gateway on it with
    --redis-wait-replicas 1, healthy (/healthz 200, Redis "ok")."""
    ports = {p: cluster_port() for p in NODES} | {50051: free_port(), 8095: free_port()}
    env = walkthrough_env()

    def text(body: str) -> str:
        return substitute_ports(body, ports).replace("/tmp/im-cluster", str(tmp_path / "nodes"))

    hub = the_block("service", "hub")
    blocks = [(hub.args[0], hub.args[1], hub.body)]
    blocks += [
        (b.args[0], b.args[1], b.body) for b in readme_blocks() if b.kind == "cluster-service"
    ]
    assert [name for name, _, _ in blocks] == ["hub", "nodes", "gw-c"]
    for name, readme_port, body in blocks:
        port = ports[int(readme_port)]
        service = Service(name, text(body), tmp_path / f"{name}.log", env)
        services.append(service)
        if name == "nodes":
            for node in NODES:

                def node_up(p: int = ports[node], s: Service = service) -> bool:
                    return s.alive() and _tcp_open(p)

                wait_until_sync(
                    node_up,
                    timeout=30,
                    what=f"cluster node {ports[node]}",
                )
            run_block("create", text(the_block("cluster-run", "create").body), env)
            continue
        ready = (
            (lambda p=port, s=service: s.alive() and _healthy(p))
            if name.startswith("gw")
            else (lambda p=port, s=service: s.alive() and _tcp_open(p))
        )
        wait_until_sync(ready, timeout=30, what=f"{name} (README, cluster) on port {port}")
    report = json.loads(run_block("health", text(the_block("cluster-run", "health").body), env))
    assert (report["status"], report["redis"]) == ("ok", "ok")
