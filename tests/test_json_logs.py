"""``--log-format json``: every line both programs write, start to stop, is one JSON object.

Real processes; their stdout and stderr go to separate files, read line by line after the
process has exited.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.end_to_end.harness import SECRET, Client, http_get
from tests.helpers import free_port, wait_until
from transmit_hub import HubServer

KEYS = {"time", "level", "logger", "message"}


def start(
    tmp_path: Path, argv: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    return proc, out, err


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as a JSON object with the four pinned keys (fails otherwise)."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        assert record.keys() >= KEYS, line
        assert record["time"].endswith("+00:00"), line
        found.append(record)
    return found


async def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_hub_writes_only_json_from_start_to_stop(tmp_path: Path) -> None:
    """A hub with --log-format json: its start, a gateway attaching and leaving, and its
    stop are JSON records; nothing else is written."""
    from transmit_hub import GatewayId, HubLink

    port = free_port()
    proc, out, err = start(
        tmp_path,
        ["-m", "transmit_hub", "--listen", f"127.0.0.1:{port}", "--grace", "0.2"],
        env={"TRANSMIT_HUB_LOG_FORMAT": "json"},
    )
    try:
        link = HubLink(f"127.0.0.1:{port}", GatewayId("gw-json"))
        await link.start()
        await link.wait_connected(30)
        await link.close()
        await wait_until(lambda: "gw-json" in err.read_text(), timeout=20, what="attach log")
    finally:
        assert await stop(proc) == 0
    logged = records(err)
    messages = " | ".join(r["message"] for r in logged)
    assert f"listening on 127.0.0.1:{port}" in messages
    assert "stopped" in messages
    assert {r["logger"].split(".")[0] for r in logged} == {"transmit_hub"}
    assert records(out) == []


async def test_gateway_writes_only_json_from_start_to_stop(
    hub: HubServer, redis_url: str, tmp_path: Path
) -> None:
    """A gateway with --log-format json (a user connected, a weak-secret warning, SIGTERM):
    its start banner on stdout and every log line on stderr are JSON records."""
    port = free_port()
    proc, out, err = start(
        tmp_path,
        [
            "-m",
            "im_gateway",
            "--listen",
            f"127.0.0.1:{port}",
            "--gateway-id",
            "gw-json",
            "--hub",
            hub.address,
            "--redis-url",
            redis_url,
            "--log-format",
            "json",
        ],
        env={"IM_GATEWAY_JWT_SECRET": SECRET[:20]},  # short: a WARNING line
    )
    try:

        async def healthy() -> bool:
            assert proc.poll() is None, err.read_text()
            try:
                status, _, _ = await http_get(port, "/healthz")
            except OSError:
                return False
            return status == 200

        await wait_until(healthy, timeout=30, what="the gateway to be healthy")
        from im_gateway import auth

        token = auth.mint(1, SECRET[:20], ttl=60)
        client = Client(await connect(f"ws://127.0.0.1:{port}/ws?token={token}"), 1)
        await client.wait_for(lambda f: f["type"] == 14)
        await client.close()
    finally:
        assert await stop(proc) == 0
    banner = records(out)
    assert [r["message"] for r in banner] == [f"im_gateway gw-json listening on 127.0.0.1:{port}"]
    logged = records(err)
    assert any(r["level"] == "WARNING" and "shorter than 32 bytes" in r["message"] for r in logged)
    assert any("stopping gateway gw-json" in r["message"] for r in logged)


CRASHING_HUB = textwrap.dedent(
    """
    import sys, warnings
    from transmit_hub import __main__ as hub_main
    from transmit_hub.server import HubServer

    async def start(self):
        warnings.warn("a deprecated thing", DeprecationWarning, stacklevel=1)
        raise RuntimeError("injected start failure")

    HubServer.start = start
    sys.exit(hub_main.main(sys.argv[1:]))
    """
)


def test_a_traceback_and_a_warning_are_json_records(tmp_path: Path) -> None:
    """An exception nobody catches is one CRITICAL record whose ``traceback`` field holds
    the traceback, and a Python warning is a ``py.warnings`` record: no raw lines."""
    proc, out, err = start(
        tmp_path,
        ["-W", "always", "-c", CRASHING_HUB, "--listen", "127.0.0.1:0", "--log-format", "json"],
    )
    assert proc.wait(60) == 1
    logged = records(err)
    crash = [r for r in logged if r["level"] == "CRITICAL"]
    assert len(crash) == 1, logged
    assert "injected start failure" in crash[0]["message"]
    assert crash[0]["traceback"].startswith("Traceback (most recent call last)")
    assert "RuntimeError: injected start failure" in crash[0]["traceback"]
    warned = [r for r in logged if r["logger"] == "py.warnings"]
    assert len(warned) == 1, logged
    assert "a deprecated thing" in warned[0]["message"]
    assert records(out) == []


def test_a_bad_flag_is_one_json_line_when_json_is_asked(tmp_path: Path) -> None:
    """Even a usage error, found before the settings are read, is one JSON record when
    --log-format json (or its variable) is given; both programs."""
    for argv, env, named in (
        (["-m", "transmit_hub", "--log-format", "json", "--queue-size", "many"], {}, "'many'"),
        (["-m", "im_gateway", "--rate-limit", "x"], {"IM_GATEWAY_LOG_FORMAT": "json"}, "'x'"),
    ):
        proc, out, err = start(tmp_path, argv, env={"IM_GATEWAY_JWT_SECRET": SECRET, **env})
        assert proc.wait(60) == 2
        (record,) = records(err)
        assert record["level"] == "ERROR"
        assert named in record["message"]
        assert records(out) == []
