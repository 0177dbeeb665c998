"""Running the JavaScript client's Node tests from pytest (so ``scripts/test`` covers them).

Node 20+ comes from the system; the ``ws`` package (a WebSocket for Node 20, which has no
global one) is installed by npm, by name, into the project-local ``.tools`` folder, as
``scripts/test`` installs buf there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / ".tools"
WS_PACKAGE = "ws@8"
CLIENT_JS = ROOT / "im_gateway" / "static" / "client.js"


def node() -> str:
    """The ``node`` executable (20 or later); fails the test when missing."""
    path = shutil.which("node")
    assert path, "node (20 or later) is missing: apt-get install nodejs"
    version = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    assert major >= 20, f"node {version} is too old: the client needs 20 or later"
    return path


def ensure_ws() -> Path:
    """``.tools`` with ``node_modules/ws`` in it, installed with npm when missing."""
    if not (TOOLS / "node_modules" / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        assert npm, "npm is missing: it installs the 'ws' package the Node tests need"
        TOOLS.mkdir(exist_ok=True)
        command = [npm, "install", "--silent", "--no-audit", "--no-fund"]
        subprocess.run(
            [*command, "--prefix", str(TOOLS), WS_PACKAGE],
            check=True,
            timeout=300,
        )
    return TOOLS


def run_node_tests(
    *files: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``node --test FILES``; the test fails (with node's report) when any Node test does."""
    full_env = {**os.environ, "CLIENT_TOOLS": str(ensure_ws()), **(env or {})}
    done = subprocess.run(
        [node(), "--test", "--test-reporter=spec", *map(str, files)],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    report = done.stdout[-20_000:] + done.stderr[-5_000:]
    assert done.returncode == 0, f"node --test failed ({done.returncode}):\n{report}"
    return done
