"""The README's "Server API" commands run as written, against a real hub and Redis.

Its blocks are marked ``<!-- test: api-service NAME PORT -->`` (the gateway, ready when
its /healthz says 200) and ``<!-- test: api-run NAME -->`` (curl calls, run to
completion). The fixed ports are replaced by free ones; the walk-through's hub and Redis
are this test's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import RedisServer
from tests.helpers import free_port, wait_until_sync
from tests.test_readme import _healthy, substitute_ports, the_block, walkthrough_env
from transmit_hub.server import HubServer

HUB_PORT, REDIS_PORT, GW_PORT, API_PORT = 50051, 6390, 8095, 8096


async def test_server_api_section_runs_as_written(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, hub: HubServer
) -> None:
    """The gateway starts with the API on; the curl calls add a group, publish to it, read
    presence and history, and the call without the key is refused."""
    ports = {
        HUB_PORT: hub.port,
        REDIS_PORT: redis_server.port,
        GW_PORT: free_port(),
        API_PORT: free_port(),
    }
    env = walkthrough_env()
    block = the_block("api-service", "gw-api")
    log = tmp_path / "gw-api.log"
    with log.open("wb") as out:
        proc = await asyncio.to_thread(
            subprocess.Popen,
            ["bash", "-ec", substitute_ports(block.body, ports)],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return _healthy(ports[GW_PORT])

        await asyncio.to_thread(wait_until_sync, ready, timeout=30, what="the README's API gateway")
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-ec", substitute_ports(the_block("api-run", "calls").body, ports)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        answers, text, decoder = [], done.stdout.strip(), json.JSONDecoder()
        while text:  # curl prints each answer without a newline
            answer, end = decoder.raw_decode(text)
            answers.append(answer)
            text = text[end:].strip()
        added, published, presence, history, refused = answers
        assert added == {"added": 2}
        assert set(published) == {"msgId", "time"}
        assert presence == {"presence": {"1": [], "2": []}}
        assert [m["content"] for m in history["messages"]] == ["welcome, both"]
        assert history["messages"][0]["id"] == published["msgId"]
        assert refused["error"]["code"] == "unauthorized"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
