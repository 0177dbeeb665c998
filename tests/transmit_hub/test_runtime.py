"""Process-wide settings of the command-line servers (run in a child process, so the
test process keeps its own)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import with_nofile
from transmit_hub.runtime import GC_GEN0_THRESHOLD


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    code = (
        "import gc; from transmit_hub.runtime import tune_gc; tune_gc(); "
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(GC_GEN0_THRESHOLD), "True"]


def test_loop_factory_picks_uvloop() -> None:
    """uvloop is a dependency, so the servers run on it."""
    from transmit_hub.runtime import loop_factory

    factory = loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def _raise_in_child(soft: int, hard: int) -> list[str]:
    """Run raise_open_file_limit in a child started with (soft, hard): its sentence and
    the soft limit after."""
    code = (
        "import resource; from transmit_hub.runtime import raise_open_file_limit; "
        "print(raise_open_file_limit()); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        with_nofile(soft, hard, "-c", code),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.splitlines()


def test_raise_open_file_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    """Soft 1,024 under a hard 2,048 becomes 2,048, and the sentence says so."""
    assert _raise_in_child(1024, 2048) == [
        "open-file limit raised from 1024 to 2048 (the hard limit)",
        "2048",
    ]


def test_raise_open_file_limit_at_the_hard_limit_changes_nothing() -> None:
    """A soft limit already at the hard one stays; the sentence says so."""
    assert _raise_in_child(1024, 1024) == [
        "open-file limit: 1024 (already the hard limit)",
        "1024",
    ]


def test_use_poll_io_asks_grpc_for_its_poll_based_io() -> None:
    """Unset: set to the poll-based I/O's experiments, and the sentence says so."""
    from transmit_hub.runtime import GRPC_POLL_IO, use_poll_io

    env: dict[str, str] = {}
    note = use_poll_io(env, "1.85.4")
    assert env == {"GRPC_EXPERIMENTS": GRPC_POLL_IO}
    assert note == f"gRPC I/O: poll-based (GRPC_EXPERIMENTS={GRPC_POLL_IO})"


def test_use_poll_io_leaves_an_operators_setting_alone() -> None:
    """Set, even empty (grpcio's default I/O), it stays as the operator set it."""
    from transmit_hub.runtime import use_poll_io

    for value in ("", "-event_engine_client"):
        env = {"GRPC_EXPERIMENTS": value}
        assert use_poll_io(env, "1.85.4") == f"gRPC I/O: GRPC_EXPERIMENTS={value!r} (as set)"
        assert env == {"GRPC_EXPERIMENTS": value}


def test_use_poll_io_leaves_an_unchecked_grpcio_alone() -> None:
    """A grpcio these experiment names were not checked on keeps its default I/O."""
    from transmit_hub.runtime import use_poll_io

    env: dict[str, str] = {}
    assert "grpcio 1.99.0's default" in use_poll_io(env, "1.99.0")
    assert env == {}


def _grpc_stderr(experiments: str) -> str:
    """A child that starts a grpc.aio server and a channel to it with
    ``GRPC_EXPERIMENTS=experiments``: what gRPC wrote on stderr."""
    code = (
        "import asyncio, grpc\n"
        "async def main():\n"
        "    server = grpc.aio.server()\n"
        "    port = server.add_insecure_port('127.0.0.1:0')\n"
        "    await server.start()\n"
        "    async with grpc.aio.insecure_channel(f'127.0.0.1:{port}') as channel:\n"
        "        await asyncio.wait_for(channel.channel_ready(), 30)\n"
        "    await server.stop(0)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "GRPC_EXPERIMENTS": experiments},
    )
    return done.stderr


def test_the_installed_grpcio_knows_the_poll_io_experiments() -> None:
    """What use_poll_io relies on: the installed grpcio is one the names were checked on,
    and it knows each of them (an unknown one is logged at every start; the bogus name
    shows that the check can fail). After a grpcio upgrade this fails: check the names
    (grpcio's experiments.yaml), re-measure (bench/RESULTS.md section 20), and update
    GRPC_POLL_IO_VERSIONS."""
    import importlib.metadata

    from transmit_hub.runtime import GRPC_POLL_IO, GRPC_POLL_IO_VERSIONS

    assert importlib.metadata.version("grpcio").startswith(GRPC_POLL_IO_VERSIONS)
    assert "Unknown experiment" not in _grpc_stderr(GRPC_POLL_IO)
    assert "Unknown experiment: no_such_experiment" in _grpc_stderr("no_such_experiment")
