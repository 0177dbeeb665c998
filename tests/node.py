"""Running the JavaScript client's Node tests from pytest (so ``scripts/test`` covers them).

Node 20+ comes from the system; the ``ws`` package (a WebSocket for Node 20, which has no
global one) is installed by npm, by name, into the project-local ``.tools`` folder, as
``scripts/test`` installs buf there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
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


Control = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""Serves one control connection from a Node end-to-end test (one line each way)."""


@contextlib.asynccontextmanager
async def control_server(serve: Control) -> AsyncIterator[int]:
    """A loopback server for the control connections of ``tests/js/*.e2e.mjs`` (each line
    asks this side to act on the processes it owns); yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()


async def node_e2e(script: str, config: Mapping[str, object], *, within: float) -> str:
    """``node --test tests/js/SCRIPT`` with ``config`` (and the module's file) as the JSON
    of ``CLIENT_E2E``, without blocking the loop (the processes it drives are this side's);
    the test fails (with node's report) when any Node test does, or when it runs past
    ``within`` seconds. Returns the report."""
    settings = {**config, "moduleFile": str(CLIENT_JS)}
    env = {**os.environ, "CLIENT_E2E": json.dumps(settings), "CLIENT_TOOLS": str(ensure_ws())}
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            node(),
            "--test",
            "--test-reporter=spec",
            str(ROOT / "tests" / "js" / script),
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=output,
        )
        try:
            await asyncio.wait_for(proc.wait(), within)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        output.seek(0)
        report = output.read().decode(errors="replace")[-20_000:]
    assert proc.returncode == 0, f"node --test failed:\n{report}"
    return report
