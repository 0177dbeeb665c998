"""HTTP endpoints on the gateway's port and the ``python -m im_gateway`` command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from im_gateway import auth
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import SECRET, GatewayProcess, http_get
from tests.helpers import free_port
from transmit_hub.server import HubServer
from transmit_hub.types import UserId

CLI = [sys.executable, "-m", "im_gateway"]


async def test_healthz_is_200_when_linked_and_503_when_the_hub_is_away(
    start_gateway: GatewayFactory,
) -> None:
    """/healthz: 200 with status ok when linked and Redis answers; 503 with a reason otherwise."""
    linked = await start_gateway("gw-1")
    status, body, headers = await http_get(linked.port, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["gatewayId"] == "gw-1"

    lonely = await start_gateway("gw-2", hub=f"127.0.0.1:{free_port()}", linked=False)
    status, body, _ = await http_get(lonely.port, "/healthz")
    assert status == 503
    report = json.loads(body)
    assert report["status"] != "ok"
    assert "hub" in report["reason"]


async def test_info_page_and_static_files(start_gateway: GatewayFactory) -> None:
    """/info names the gateway and its group policy; / serves the page; /static/ serves
    files and refuses traversal."""
    gw = await start_gateway("gw-info", group_join="token")
    status, body, _ = await http_get(gw.port, "/info")
    assert (status, json.loads(body)) == (200, {"gatewayId": "gw-info", "groupJoin": "token"})
    status, body, headers = await http_get(gw.port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"<" in body
    for path in (
        "/static/../gateway.py",
        "/static/%2e%2e/gateway.py",
        "/static/nope.js",
        "/nowhere",
    ):
        status, _, _ = await http_get(gw.port, path)
        assert status == 404, path


async def test_ws_path_without_token_is_401_json(start_gateway: GatewayFactory) -> None:
    """A plain GET /ws without a token is refused with 401 before any upgrade."""
    gw = await start_gateway("gw-1")
    status, body, headers = await http_get(gw.port, "/ws")
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert json.loads(body)["error"] == "unauthorized"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_explains_every_pinned_flag() -> None:
    """--help exits 0 and lists the pinned flags and the environment fallback."""
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in (
        "--listen",
        "--gateway-id",
        "--hub",
        "--hub-token",
        "--redis-url",
        "--jwt-secret",
        "--max-frame-size",
        "--rate-limit",
        "--idle-timeout",
        "--presence-ttl",
        "IM_GATEWAY_JWT_SECRET",
        "token --user",
    ):
        assert flag in result.stdout, flag


def test_token_subcommand_prints_a_verifiable_token() -> None:
    """`token --user ID` signs with --secret or IM_GATEWAY_JWT_SECRET; bad input is one line."""
    result = run_cli("token", "--user", "42", "--secret", SECRET, "--ttl", "60")
    assert result.returncode == 0, result.stderr
    assert auth.verify(result.stdout.strip(), SECRET) == 42
    result = run_cli("token", "--user", "7", env={"IM_GATEWAY_JWT_SECRET": SECRET})
    assert auth.verify(result.stdout.strip(), SECRET) == 7
    result = run_cli("token", "--user", "bob", "--secret", SECRET)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("--no-such-flag",),
        ("--listen", "nowhere"),
        ("--rate-limit", "fast"),
        ("--max-frame-size", "0"),
        (),  # no --jwt-secret
    ],
    ids=["unknown", "bad-listen", "bad-number", "bad-limit", "no-secret"],
)
def test_bad_flags_exit_non_zero_with_one_line(args: tuple[str, ...]) -> None:
    """A bad or missing flag: exit code 2 and exactly one line on stderr."""
    result = run_cli(*args, env={"IM_GATEWAY_JWT_SECRET": ""} if not args else None)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]


def test_unreachable_redis_and_taken_port_exit_with_one_line(redis_url: str) -> None:
    """Redis not answering, or the port in use: exit 1 with one clear line."""
    result = run_cli("--redis-url", f"redis://127.0.0.1:{free_port()}/0", "--jwt-secret", SECRET)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach Redis" in lines[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "--listen", f"127.0.0.1:{port}", "--redis-url", redis_url, "--jwt-secret", SECRET
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot listen" in lines[0]


def test_unusable_tls_files_exit_with_one_line(tmp_path: Path) -> None:
    """--tls-cert/--tls-key that cannot be loaded: exit 1 with one line naming the file,
    before Redis is even tried; one of the two alone is a usage error (exit 2)."""
    missing = tmp_path / "missing.pem"
    result = run_cli("--jwt-secret", SECRET, "--tls-cert", str(missing), "--tls-key", str(missing))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TLS certificate" in lines[0]
    assert str(missing) in lines[0]
    result = run_cli("--jwt-secret", SECRET, "--tls-cert", str(missing))
    assert result.returncode == 2
    assert "--tls-key" in result.stderr


def test_token_subcommand_writes_groups_audience_and_issuer() -> None:
    """`token --groups 7,8 --audience A --issuer I` puts those claims in the token."""
    result = run_cli(
        "token",
        "--user",
        "3",
        "--secret",
        SECRET,
        "--groups",
        "8, 7",
        "--audience",
        "chat",
        "--issuer",
        "backend",
    )
    assert result.returncode == 0, result.stderr
    identity = auth.verify_identity(
        result.stdout.strip(), SECRET, audience="chat", issuer="backend"
    )
    assert (identity.user, identity.groups) == (UserId(3), frozenset({7, 8}))
    result = run_cli("token", "--user", "3", "--secret", SECRET, "--groups", "7,x")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_the_gateway_cleanly(
    hub: HubServer, redis_url: str, sig: signal.Signals
) -> None:
    """SIGTERM drains the gateway (sockets closed with 1012, service restart), SIGINT closes
    them with 1001; either way it exits 0."""
    from tests.end_to_end.harness import Client

    proc = GatewayProcess(gateway_id="gw-sig", hub=hub.address, redis_url=redis_url)
    try:
        await proc.wait_healthy()
        client = await Client.open(proc.port, 1)
        await client.wait_for(lambda f: f["type"] == 14)
        proc.proc.send_signal(sig)
        await asyncio.wait_for(client.closed, 10)
        assert client.ws.close_code == (1012 if sig == signal.SIGTERM else 1001)
        code = await asyncio.to_thread(proc.proc.wait, 10)
        assert code == 0, proc.output()
        await client.close()
    finally:
        proc.stop()
