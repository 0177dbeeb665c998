"""The README's "Server API" commands run as written, against a real hub and Redis.

Its blocks are marked ``<!-- test: api-service NAME PORT -->`` (the gateway, ready when
its /healthz says 200) and ``<!-- test: api-run NAME -->`` (curl calls, run to
completion). The fixed ports are replaced by free ones; the walk-through's hub and Redis
are this test's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import RedisServer
from tests.helpers import free_port, wait_until_sync
from tests.test_readme import (
    _healthy,
    run_shell,
    start_shell,
    stop_shell,
    the_block,
    walkthrough_env,
)
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
    log = tmp_path / "gw-api.log"
    body = the_block("api-service", "gw-api").body
    proc = await asyncio.to_thread(start_shell, body, ports, env, tmp_path, log)
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            return _healthy(ports[GW_PORT])

        await asyncio.to_thread(wait_until_sync, ready, timeout=30, what="the README's API gateway")
        calls = the_block("api-run", "calls").body
        done = await asyncio.to_thread(run_shell, calls, ports, env, tmp_path)
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
        await asyncio.to_thread(stop_shell, proc)
