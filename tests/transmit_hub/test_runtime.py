"""Process-wide settings of the command-line servers (run in a child process, so the
test process keeps its own)."""

from __future__ import annotations

import subprocess
import sys

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
