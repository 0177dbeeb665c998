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
