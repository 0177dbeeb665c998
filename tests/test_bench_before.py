"""The benchmarks' ``--before``: servers from another code tree, the clients from this one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the scripts import it as ``harness``

import harness  # noqa: E402 - after the path it comes from


@pytest.fixture
def restore_tree() -> Iterator[None]:
    saved = harness.TREE, harness.PROFILE_DIR
    yield
    harness.TREE, harness.PROFILE_DIR = saved


def worktrees() -> str:
    return subprocess.run(
        ["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


PRINT_PACKAGES = (
    "import os, im_gateway, transmit_hub; print(im_gateway.__file__, transmit_hub.__file__,"
    " flush=True); os._exit(0)"
)
"""The probe leaves with ``os._exit``: an interpreter exit right after importing grpc can
race gRPC's own poller thread (seen once in CI: SIGABRT, "epoll_wait error: Bad file
descriptor"), which is not what this test is about."""


def test_a_ref_becomes_a_temporary_worktree_the_servers_run_from(restore_tree: None) -> None:
    """A git ref is checked out into a temporary worktree; a server started inside
    ``servers_from`` imports that tree's packages (not the editable install's, this tree's);
    the worktree is gone once the block ends."""
    with harness.code_tree("HEAD") as tree:
        assert tree != ROOT
        assert (tree / "im_gateway" / "__main__.py").exists()
        assert str(tree) in worktrees()
        harness.check_tree(tree)
        with harness.servers_from(tree, "before"):
            child = harness.Child("probe", [harness.PYTHON, "-c", PRINT_PACKAGES]).start()
            try:
                assert child.proc.wait(60) == 0, child.output()
                files = [Path(f) for f in child.output().split()]
            finally:
                child.cleanup()
        assert len(files) == 2
        assert all(f.is_relative_to(tree) for f in files), files
        assert harness.TREE == ROOT  # restored after the block
    assert not tree.exists()
    assert str(tree) not in worktrees()


def test_a_directory_is_used_as_is_and_kept(tmp_path: Path) -> None:
    """A directory is the tree itself: not copied, not removed; one without the packages is
    refused before any server starts."""
    with harness.code_tree(str(tmp_path)) as tree:
        assert tree == tmp_path.resolve()
        with pytest.raises(RuntimeError, match="would not run its code"):
            harness.check_tree(tree)
    assert tmp_path.exists()


def test_an_unknown_ref_is_refused() -> None:
    """A name that is neither a directory nor a commit fails before anything starts."""
    with (
        pytest.raises(subprocess.CalledProcessError),
        harness.code_tree("no-such-ref-0123456789"),
    ):
        pass


def test_the_report_pairs_runs_by_round() -> None:
    """after/before is the median of per-round ratios; medians per side; a figure of 0
    before has no ratio."""
    runs = {
        "before": [{"p99 ms": 10.0, "lost": 0}, {"p99 ms": 20.0, "lost": 0}],
        "after": [{"p99 ms": 5.0, "lost": 0}, {"p99 ms": 12.0, "lost": 0}],
    }
    text = harness.compare_report(runs, {"before": "old", "after": "new"})
    row = next(line for line in text.splitlines() if line.startswith("| p99 ms"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == ["p99 ms", "15", "8.50", "0.550", "0.50, 0.60"]
    lost = next(line for line in text.splitlines() if line.startswith("| lost"))
    assert [c.strip() for c in lost.strip("|").split("|")][1:] == ["0", "0", "-", "-"]


def test_wakeups_count_each_sleep_of_every_thread_and_of_the_main_one_apart() -> None:
    """``harness.wakeups``: the e2e bench's wake-ups per message are /proc's voluntary
    context switches, summed over a process's threads, its main thread's apart."""
    import os
    import threading
    import time

    pid = os.getpid()
    total0, main0 = harness.wakeups(pid)
    for _ in range(20):
        time.sleep(0.001)  # each sleep gives the core up: a voluntary switch
    total1, main1 = harness.wakeups(pid)
    assert main1 - main0 >= 20
    assert total1 - total0 >= main1 - main0

    slept = threading.Event()
    release = threading.Event()

    def sleeper() -> None:
        for _ in range(30):
            time.sleep(0.001)
        slept.set()
        release.wait(10)

    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        assert slept.wait(10)
        total2, main2 = harness.wakeups(pid)
        # The thread's 30 sleeps count in all threads' sum, not in the main thread's
        # (which only waited on the event meanwhile: a few switches at most).
        assert (total2 - total1) - (main2 - main1) >= 30
    finally:
        release.set()
        thread.join()
