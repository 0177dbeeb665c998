"""The hub's gRPC I/O engine (transmit_hub/grpc_io.py): chosen before gRPC loads, and
still honoured by the gRPC installed (this pins the experiment names the module uses)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tests.helpers import free_port
from transmit_hub import grpc_io

from .conftest import LinkFactory


def test_the_poll_based_engine_is_set_when_nothing_is() -> None:
    environ: dict[str, str] = {}
    note = grpc_io.choose(environ, modules={})
    assert environ == {"GRPC_EXPERIMENTS": grpc_io.POLL_BASED}
    assert note is not None
    assert "poll-based" in note


@pytest.mark.parametrize("value", ["", "-event_engine_listener"])
def test_an_operators_choice_is_kept(value: str) -> None:
    """Even an empty GRPC_EXPERIMENTS is a choice: gRPC's own default."""
    environ = {"GRPC_EXPERIMENTS": value}
    note = grpc_io.choose(environ, modules={})
    assert environ == {"GRPC_EXPERIMENTS": value}
    assert note is not None
    assert "set by the operator" in note


def test_nothing_is_set_once_grpc_is_loaded() -> None:
    """Too late to count: the variable is left alone (a child process would inherit it)."""
    environ: dict[str, str] = {}
    assert grpc_io.choose(environ, modules={"grpc": object()}) is None
    assert environ == {}


def test_grpc_knows_every_experiment_named() -> None:
    """gRPC logs "Unknown experiment" for a name it no longer has (here: a made-up one,
    to show the check can fail)."""
    script = "import grpc, grpc.aio; grpc.aio.server()"
    for value, known in ((grpc_io.POLL_BASED, True), ("no_such_experiment_x", False)):
        env = {**os.environ, "GRPC_EXPERIMENTS": value}
        result = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert ("Unknown experiment" not in result.stderr) is known, result.stderr


async def hub_trace(make_link: LinkFactory, **env: str) -> str:
    """The stderr of ``python -m transmit_hub`` with gRPC's TCP traces on, a link attached
    and detached; ``env`` on top of this process's environment less GRPC_EXPERIMENTS."""
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    environ |= {"GRPC_TRACE": "tcp,event_engine_endpoint", "GRPC_VERBOSITY": "debug", **env}
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "transmit_hub",
        "--listen",
        f"127.0.0.1:{port}",
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        gw = await make_link(f"127.0.0.1:{port}", "gw-1", connect=False)
        await gw.link.wait_connected(30)
        await gw.link.close()
    finally:
        proc.terminate()
        _, raw = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, raw.decode()[-2000:]
    return raw.decode()


async def test_the_hub_process_does_its_tcp_io_in_the_poll_based_engine(
    make_link: LinkFactory,
) -> None:
    """gRPC's traces name the file that did the socket work: the poll-based engine's
    (tcp_posix.cc), not the EventEngine's (posix_endpoint.cc); the hub logs its choice."""
    err = await hub_trace(make_link)
    assert "tcp_posix.cc" in err
    assert "posix_endpoint.cc" not in err
    assert "gRPC I/O: the poll-based engine" in err
    assert "Unknown experiment" not in err


async def test_an_empty_grpc_experiments_runs_grpcs_default(make_link: LinkFactory) -> None:
    """The other side of the check above: gRPC's default engine shows as posix_endpoint.cc."""
    err = await hub_trace(make_link, GRPC_EXPERIMENTS="")
    assert "posix_endpoint.cc" in err
    assert "tcp_posix.cc" not in err
    assert "set by the operator" in err
