"""``python -m transmit_hub`` as a real process: help, bad flags, port in use, signals;
and a gateway process killed with SIGKILL is detached in seconds."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import free_port, wait_until, wait_until_sync
from transmit_hub import HubServer, UndeliverableReason
from transmit_hub.config import HubConfig, parse_config
from transmit_hub.errors import ConfigError

from .conftest import LinkFactory, tmap

HUB = [sys.executable, "-m", "transmit_hub"]


def run_hub(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HUB, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_help_explains_every_flag() -> None:
    """--help exits 0 and names every flag and the environment variable convention."""
    result = run_hub("--help")
    assert result.returncode == 0
    for flag in ("--listen", "--auth-token", "--queue-size", "--grace", "--hub-id", "--log-level"):
        assert flag in result.stdout
    assert "TRANSMIT_HUB_AUTH_TOKEN" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--queue-size", "many"],
        ["--queue-bytes", "100"],
        ["--queue-bytes-total", "0"],
        ["--listen", "nowhere"],
        ["--grace", "-1"],
        ["--gateway-write-timeout", "-1"],
        ["--metrics-max-clients", "0"],
        ["--metrics-timeout", "0"],
    ],
)
def test_bad_flag_exits_nonzero_with_one_line(args: list[str]) -> None:
    """A bad flag or value exits non-zero with exactly one line on stderr, no traceback."""
    result = run_hub(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("transmit_hub: error:")


async def test_port_in_use_exits_nonzero_with_one_line() -> None:
    """Starting on a port another hub holds exits non-zero with one clear line."""
    async with HubServer(HubConfig(listen="127.0.0.1:0")) as hub:
        proc = await asyncio.create_subprocess_exec(
            *HUB,
            "--listen",
            hub.address,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0
        lines = err.decode().strip().splitlines()
        assert len(lines) == 1, err.decode()
        assert "cannot listen on" in lines[0]
        assert "in use" in lines[0]


def test_sigterm_and_sigint_stop_cleanly() -> None:
    """SIGTERM (and SIGINT) make a running hub log its stop and exit 0."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        proc = subprocess.Popen(
            [*HUB, "--listen", f"127.0.0.1:{port}", "--grace", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until_sync(
                functools.partial(listening, port), timeout=20, what="the hub to listen"
            )
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        assert f"listening on 127.0.0.1:{port}" in err
        assert "stopped" in err
        assert "Traceback" not in err


def test_env_fills_flags_and_flags_win() -> None:
    """TRANSMIT_HUB_<FLAG> variables set options; a flag on the command line wins."""
    env = {
        "TRANSMIT_HUB_AUTH_TOKEN": "from-env",
        "TRANSMIT_HUB_QUEUE_SIZE": "7",
        "TRANSMIT_HUB_LISTEN": "127.0.0.1:6000",
    }
    config = parse_config(["--listen", "127.0.0.1:7000"], env)
    assert config == HubConfig(listen="127.0.0.1:7000", auth_token="from-env", queue_size=7)
    with pytest.raises(ConfigError, match="queue-size"):
        parse_config([], {"TRANSMIT_HUB_QUEUE_SIZE": "0"})


GATEWAY_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from transmit_hub import GatewayId, HubLink

    async def main():
        link = HubLink(sys.argv[1], GatewayId("gw-victim"))
        await link.start()
        await link.wait_connected(20)
        print("attached", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_dead_gateway_is_detached_and_reported_undeliverable(
    hub: HubServer, make_link: LinkFactory, how: str
) -> None:
    """A gateway process killed with SIGKILL, or frozen with SIGSTOP (its socket stays open but
    nothing answers: keepalive must notice), is detached in seconds; maps to it then come back
    as NOT_ATTACHED notices."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GATEWAY_SCRIPT,
        hub.address,
        stdout=asyncio.subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"attached"
        assert hub.registry.is_attached("gw-victim")  # type: ignore[arg-type]
        sender = await make_link(hub.address, "gw-s")
        killed_at = time.monotonic()
        if how == "kill":
            proc.kill()
            await proc.wait()
        else:
            proc.send_signal(signal.SIGSTOP)
        await wait_until(
            lambda: not hub.registry.is_attached("gw-victim"),  # type: ignore[arg-type]
            timeout=15,
            what="the dead gateway to be detached",
        )
        assert time.monotonic() - killed_at < 15
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert sender.link.send(tmap("m-late", {"gw-victim": (3,)}))
    (notice,) = await sender.wait_notices(1)
    assert notice.reason is UndeliverableReason.NOT_ATTACHED
    assert notice.message_ids == ("m-late",)


def test_metrics_listen_is_checked_and_named() -> None:
    """A bad --metrics-listen is refused with an error naming that flag; a good one is kept."""
    with pytest.raises(ConfigError, match="--metrics-listen"):
        parse_config(["--metrics-listen", "nowhere"], {})
    env = {"TRANSMIT_HUB_METRICS_LISTEN": "127.0.0.1:9100"}
    assert parse_config([], env).metrics_listen == "127.0.0.1:9100"
    assert HubConfig().metrics_listen is None
