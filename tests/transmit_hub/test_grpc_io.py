"""gRPC's I/O engine (transmit_hub/grpc_io.py): the poll-based one that the
README offers is still honoured by the gRPC installed (this pins the experiment names),
and the hub says at start which engine runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from transmit_hub import grpc_io

from .conftest import LinkFactory, hub_process_with_link

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_offer_the_value_the_code_pins() -> None:
    """The README and the systemd units spell the value out for operators; each spelling is
    :data:`grpc_io.POLL_BASED`, which the tests here pin against the installed gRPC."""
    files = [ROOT / "README.md", *sorted((ROOT / "deploy" / "systemd").glob("*.service"))]
    found = {
        (path.name, value)
        for path in files
        for value in re.findall(r"GRPC_EXPERIMENTS=([\w,-]+)", path.read_text("utf-8"))
    }
    assert {name for name, _ in found} >= {
        "README.md",
        "im-gateway.service",
        "transmit-hub.service",
    }
    assert {value for _, value in found} == {grpc_io.POLL_BASED}


def test_the_start_line_names_the_engine() -> None:
    """Unset or empty: gRPC's default, and the value that selects the other; the value
    itself: the poll-based engine; anything else: as the operator set it."""
    default = grpc_io.engine_note({})
    assert "gRPC's default engine" in default
    assert grpc_io.POLL_BASED in default
    assert grpc_io.engine_note({"GRPC_EXPERIMENTS": ""}) == default
    assert "the poll-based engine" in grpc_io.engine_note({"GRPC_EXPERIMENTS": grpc_io.POLL_BASED})
    assert (
        grpc_io.engine_note({"GRPC_EXPERIMENTS": "-x"}) == "gRPC I/O: as GRPC_EXPERIMENTS=-x says"
    )


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
    """The stderr of ``python -m transmit_hub`` with gRPC's TCP traces on and a link
    attached; ``env`` on top of this process's environment less GRPC_EXPERIMENTS."""
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    environ |= {"GRPC_TRACE": "tcp,event_engine_endpoint", "GRPC_VERBOSITY": "debug", **env}
    return await hub_process_with_link(make_link, env=environ)


async def test_a_hub_started_with_poll_based_does_its_tcp_io_there(
    make_link: LinkFactory,
) -> None:
    """gRPC's traces name the file that did the socket work: the poll-based engine's
    (tcp_posix.cc), not the EventEngine's (posix_endpoint.cc); the hub logs its engine."""
    err = await hub_trace(make_link, GRPC_EXPERIMENTS=grpc_io.POLL_BASED)
    assert "tcp_posix.cc" in err
    assert "posix_endpoint.cc" not in err
    assert "gRPC I/O: the poll-based engine" in err
    assert "Unknown experiment" not in err


async def test_a_hub_started_without_runs_grpcs_default(make_link: LinkFactory) -> None:
    """The other side of the check above: gRPC's default engine shows as posix_endpoint.cc."""
    err = await hub_trace(make_link)
    assert "posix_endpoint.cc" in err
    assert "tcp_posix.cc" not in err
    assert "gRPC I/O: gRPC's default engine" in err
