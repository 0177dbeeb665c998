"""The committed generated protobuf code is what scripts/gen_protos.py produces now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "transmit_hub" / "v1"


def test_generated_code_is_current(tmp_path: Path) -> None:
    """Regenerating from protos/ gives byte-identical files: the generated code is not stale."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in GENERATED.iterdir() if p.is_file())
    assert fresh == committed
    stale = [n for n in fresh if (tmp_path / n).read_bytes() != (GENERATED / n).read_bytes()]
    assert not stale, f"stale generated files {stale}: run python scripts/gen_protos.py"
