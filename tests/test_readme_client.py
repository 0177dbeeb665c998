"""The README's "Clients" Python example runs as written, against the walk-through's two
gateways (started from their README blocks), a real hub and Redis.

Its block is marked ``<!-- test: client-py hello -->``; the fixed ports are replaced by
free ones and the tokens the walk-through mints are in the environment, as
``export ALICE BOB`` leaves them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.conftest import RedisServer
from tests.helpers import free_port, wait_until_sync
from tests.test_readme import (
    _healthy,
    run_shell,
    start_shell,
    stop_shell,
    substitute_ports,
    the_block,
    walkthrough_env,
)
from transmit_hub.server import HubServer

HUB_PORT, REDIS_PORT, GW1_PORT, GW2_PORT = 50051, 6390, 8081, 8082


def _run_example(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_python_client_example_runs_as_written(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, hub: HubServer
) -> None:
    """alice's send returns a message id, bob gets 'hi bob' once; run again, bob is shown
    only the new message (the first was acknowledged)."""
    ports = {
        HUB_PORT: hub.port,
        REDIS_PORT: redis_server.port,
        GW1_PORT: free_port(),
        GW2_PORT: free_port(),
    }
    env = walkthrough_env()
    procs = []
    try:
        for name, port in (("gw-1", GW1_PORT), ("gw-2", GW2_PORT)):
            body = the_block("service", name).body
            log = tmp_path / f"{name}.log"
            proc = await asyncio.to_thread(start_shell, body, ports, env, tmp_path, log)
            procs.append(proc)

            def ready(
                proc: subprocess.Popen[bytes] = proc, port: int = port, log: Path = log
            ) -> bool:
                assert proc.poll() is None, log.read_text()
                return _healthy(ports[port])

            await asyncio.to_thread(wait_until_sync, ready, timeout=30, what=f"README {name}")
        tokens = the_block("tokens").body + "\necho $ALICE\necho $BOB\n"
        minted = await asyncio.to_thread(run_shell, tokens, ports, env, tmp_path)
        assert minted.returncode == 0, minted.stderr
        alice, bob = minted.stdout.split()[-2:]
        script = tmp_path / "hello.py"
        script.write_text(substitute_ports(the_block("client-py", "hello").body, ports))
        run_env = {**env, "ALICE": alice, "BOB": bob}
        for _ in range(2):
            done = await asyncio.to_thread(_run_example, script, run_env)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert len(lines) == 2, lines
            assert lines[0].startswith("alice sent ")
            assert len(lines[0].split()) == 3
            assert lines[1] == "bob got 'hi bob' from 1"
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_shell, proc)
