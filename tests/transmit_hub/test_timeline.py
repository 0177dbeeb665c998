"""The opt-in timeline stamps: recorded and written at exit only when asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from transmit_hub import timeline

SCRIPT = (
    "from transmit_hub import timeline\n"
    "print(timeline.ON)\n"
    "if timeline.ON:\n"
    "    timeline.stamp('read', ['m1', 'm2'])\n"
    "    timeline.stamp('stored', ['m1'], 12345)\n"
)


def _run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_stamps_are_written_at_exit_when_the_variable_is_set(tmp_path: Path) -> None:
    """With TRANSMIT_HUB_TIMELINE=DIR, a process writes DIR/<pid>.tsv as it exits: one line
    per message and hop, with its monotonic nanoseconds (or the time given)."""
    assert _run({timeline.ENV: str(tmp_path)}) == "True"
    (path,) = tmp_path.glob("*.tsv")
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert [(hop, mid) for hop, mid, _ in rows] == [
        ("read", "m1"),
        ("read", "m2"),
        ("stored", "m1"),
    ]
    assert rows[0][2] == rows[1][2]
    assert int(rows[0][2]) > 0
    assert rows[2][2] == "12345"


def test_off_by_default_nothing_is_recorded(tmp_path: Path) -> None:
    """Without the variable, ON is False and no process writes anything."""
    env = {k: v for k, v in os.environ.items() if k != timeline.ENV}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    assert done.stdout.strip() == "False"
    assert list(tmp_path.iterdir()) == []
