"""The README cannot rot: its commands run here, as written, with real processes.

Each fenced ``sh`` block of README.md carries a marker comment saying how it is tested:

- ``<!-- test: quickstart -->``: the two Quickstart commands (``scripts/demo`` is run by
  tests/end_to_end/test_demo.py, ``scripts/test`` is what CI runs);
- ``<!-- test: run NAME -->``: runs to completion and must succeed;
- ``<!-- test: help -->``: commands run on demand only (benchmarks): each must answer
  ``--help`` and know the flags it is given;
- ``<!-- test: service NAME PORT -->``: a long-running process, ready when PORT answers;
- ``<!-- test: tokens -->``: shell lines whose variables the client blocks use;
- ``<!-- test: client NAME -->``: the interactive ``python -m websockets`` client, driven
  through its stdin with the lines of the ``<!-- test: type NAME -->`` block, and checked
  against the ``<!-- test: expect NAME -->`` block (``"..."`` matches any value).

The walk-through uses fixed ports (6390, 50051, 8081, 8082); the test replaces them with free
ones, so it runs next to anything.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, wait_until_sync

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
README_PORTS = (6390, 50051, 8081, 8082)
WILDCARD = "..."

MARKED = re.compile(
    r"^<!-- test: (?P<spec>[^>]*?) -->\n```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
FLAGS_TABLE = re.compile(r"^<!-- flags: (?P<module>[\w. ]+) -->\n(?P<table>(?:\|.*\n)+)", re.M)


@dataclass(frozen=True, slots=True)
class Block:
    """A marked fenced block of the README."""

    kind: str
    args: tuple[str, ...]
    lang: str
    body: str


def readme_blocks() -> list[Block]:
    """Every marked block, in the README's order."""
    text = README.read_text()
    found = []
    for m in MARKED.finditer(text):
        kind, *args = m["spec"].split()
        found.append(Block(kind, tuple(args), m["lang"], m["body"]))
    return found


def the_block(kind: str, *args: str) -> Block:
    """The one block with this marker."""
    matches = [b for b in readme_blocks() if b.kind == kind and b.args[: len(args)] == args]
    assert len(matches) == 1, f"README needs exactly one <!-- test: {kind} {' '.join(args)} -->"
    return matches[0]


def walkthrough_env() -> dict[str, str]:
    """The environment of a terminal where ``. .venv/bin/activate`` ran."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IM_GATEWAY_", "TRANSMIT_HUB_", "PYTEST_"))
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def substitute_ports(text: str, ports: dict[int, int]) -> str:
    """The README's fixed ports replaced by this run's free ones."""
    if not ports:
        return text
    pattern = "|".join(str(p) for p in ports)
    return re.sub(rf"(?<!\d)({pattern})(?!\d)", lambda m: str(ports[int(m[1])]), text)


def run_shell(
    body: str, ports: dict[int, int], env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a README block in bash (its fixed ports replaced), to completion."""
    return subprocess.run(
        ["bash", "-ec", substitute_ports(body, ports)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def start_shell(
    body: str, ports: dict[int, int], env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start a long-running README block in bash, in its own session, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            ["bash", "-ec", substitute_ports(body, ports)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_shell(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C a block started by :func:`start_shell` (SIGKILL if it does not stop)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- the shape of the README ------------------------------------------------------------


def test_every_shell_block_is_tested() -> None:
    """Every ``sh`` block of the README carries a test marker, so none goes unexercised."""
    text = README.read_text()
    marked = {m.start("lang") - 3 for m in MARKED.finditer(text)}
    unmarked = [
        m["body"].splitlines()[0]
        for m in FENCE.finditer(text)
        if m["lang"] in {"sh", "bash", "shell", "console"} and m.start() not in marked
    ]
    assert not unmarked, f"README shell blocks without a <!-- test: ... --> marker: {unmarked}"
    kinds = {b.kind for b in readme_blocks()}
    assert {"quickstart", "run", "service", "tokens", "client", "type", "expect", "help"} <= kinds


def test_quickstart_is_the_demo_and_the_tests() -> None:
    """The Quickstart is exactly ``scripts/demo`` and ``scripts/test``, both executable."""
    block = the_block("quickstart")
    commands = [line.split("#")[0].strip() for line in block.body.splitlines()]
    assert [c for c in commands if c] == ["scripts/demo", "scripts/test"]
    for command in ("scripts/demo", "scripts/test"):
        assert os.access(ROOT / command, os.X_OK), f"{command} is not executable"


def _help(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=walkthrough_env(),
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(argv)} --help failed: {result.stderr}"
    return result.stdout


@pytest.mark.parametrize("module", ["transmit_hub", "im_gateway", "im_gateway probe"])
def test_flags_tables_match_help(module: str) -> None:
    """The README's flag table and the program's ``--help`` list the same flags."""
    tables = {m["module"]: m["table"] for m in FLAGS_TABLE.finditer(README.read_text())}
    assert module in tables, f"README has no <!-- flags: {module} --> table"
    rows = tables[module].splitlines()[2:]
    flags = [re.match(r"\|\s*`(--[a-z0-9-]+)", row) for row in rows]
    documented = [m[1] for m in flags if m]
    assert len(documented) == len(rows), f"a row of the {module} table names no flag"
    help_text = _help("-m", *module.split())
    missing = [f for f in documented if not re.search(rf"{f}\b", help_text)]
    assert not missing, f"README documents {missing} but `python -m {module} --help` has not"
    offered = set(re.findall(r"^\s+(--[a-z0-9-]+)", help_text, re.M)) - {"--help"}
    undocumented = sorted(offered - set(documented))
    assert not undocumented, f"`python -m {module} --help` has {undocumented}; the README not"


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (("-m", "im_gateway", "token"), ("--user", "--secret", "--ttl")),
        (("-m", "devtools.demo"), ("--redis-url", "--port-base", "--jwt-secret")),
        (
            ("-m", "im_gateway", "probe"),
            ("--gateway", "--jwt-secret", "--user-base", "--interval", "--deadline"),
        ),
        (("-m", "im_gateway", "probe"), ("--summary-every", "--metrics-listen")),
    ],
)
def test_other_documented_flags_exist(argv: tuple[str, ...], flags: tuple[str, ...]) -> None:
    """The token command's and the demo's flags named in the README exist."""
    text = README.read_text()
    help_text = _help(*argv)
    for flag in flags:
        assert flag in text, f"README does not mention {flag}"
        assert flag in help_text, f"`python {' '.join(argv)} --help` lacks {flag}"


def test_benchmark_commands_exist() -> None:
    """Each README benchmark command answers ``--help`` and knows the flags it is given."""
    # Benchmarks run on demand, never in the suite: --help proves the command line only.
    lines = [line.split("#")[0].strip() for line in the_block("help").body.splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert commands, "the README's benchmark block is empty"
    for argv in commands:
        assert argv[0] == "python", argv
        help_text = _help(*argv[1:])
        for flag in (a for a in argv if a.startswith("--")):
            assert flag in help_text, f"`{' '.join(argv)}`: {flag} is not in its --help"


# ---- the walk-through -------------------------------------------------------------------


class Service:
    """A long-running README command in its own process group, logging to a file."""

    def __init__(self, name: str, script: str, log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-ec", script],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with code {self.proc.returncode}:\n{self.output()}"
            )
        return True

    def interrupt(self) -> int:
        """Ctrl-C, as in a terminal; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(15)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log_file.close()


class Client:
    """The interactive ``python -m websockets`` client, driven through pipes."""

    def __init__(self, name: str, script: str, env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            ["bash", "-ec", script],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    def output(self) -> str:
        return "".join(self._lines)

    def frames(self) -> list[dict[str, Any]]:
        """Every frame the client printed as received (``< {...}``)."""
        out = []
        for line in list(self._lines):
            at = line.find("< {")
            if at >= 0:
                out.append(json.loads(line[at + 2 :].strip()))
        return out

    def type_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_for(self, what: str, predicate: Any) -> dict[str, Any]:
        def seen() -> bool:
            if self.proc.poll() is not None and not any(predicate(f) for f in self.frames()):
                raise AssertionError(f"{self.name}'s client exited:\n{self.output()}")
            return any(predicate(f) for f in self.frames())

        wait_until_sync(seen, timeout=20, what=f"{what} on {self.name}'s client")
        return next(f for f in self.frames() if predicate(f))

    def close(self) -> int:
        """End of input (Ctrl-D): the client closes the connection and exits."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self._reader.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _matches(expected: Any, actual: Any) -> bool:
    """``actual`` has exactly ``expected``'s fields; ``"..."`` stands for any value."""
    if expected == WILDCARD:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(_matches(v, actual[k]) for k, v in expected.items())
        )
    return bool(expected == actual)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    """The walk-through's long-running processes; all stopped (Ctrl-C) at the end."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.kill()


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path: Path, services: list[Service]) -> None:
    """The README walk-through works as pasted, from Redis to grpcurl and Ctrl-C."""
    # Redis, hub, two gateways, tokens, two terminal clients passing a private and a group
    # message between the gateways, grpcurl on the hub, then Ctrl-C to every process.
    ports = {p: free_port() for p in README_PORTS}
    env = walkthrough_env()

    setup = the_block("run", "setup")
    done = subprocess.run(
        ["bash", "-ec", setup.body], cwd=ROOT, env=env, capture_output=True, timeout=600
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")

    for block in (b for b in readme_blocks() if b.kind == "service"):
        name, readme_port = block.args
        port = ports[int(readme_port)]
        service = Service(name, substitute_ports(block.body, ports), tmp_path / f"{name}.log", env)
        services.append(service)
        if name.startswith("gw"):
            ready = lambda port=port, s=service: s.alive() and _healthy(port)  # noqa: E731
        else:
            ready = lambda port=port, s=service: s.alive() and _tcp_open(port)  # noqa: E731
        wait_until_sync(ready, timeout=30, what=f"{name} (README walk-through) on port {port}")

    tokens = substitute_ports(the_block("tokens").body, ports)
    clients: dict[str, Client] = {}
    try:
        for name in ("bob", "alice"):
            script = tokens + "\n" + substitute_ports(the_block("client", name).body, ports)
            clients[name] = Client(name, script, env)
            first = clients[name].wait_for("the replay end marker", lambda f: True)
            assert first["type"] == 14, f"{name}'s first frame is not the replay end: {first}"
        bob, alice = clients["bob"], clients["alice"]
        for name, client in (("bob", bob), ("alice", alice)):
            for line in the_block("type", name).body.splitlines():
                frame = json.loads(line)
                client.type_line(line)
                client.wait_for(
                    f"the answer to {frame['id']}",
                    lambda f, i=frame["id"]: f.get("id") == i and f["type"] in (10, 99),
                )
                assert not [f for f in client.frames() if f["type"] == 99], client.output()

        expected = [
            json.loads(line.partition("< ")[2])
            for line in the_block("expect", "bob").body.splitlines()
        ]
        assert expected, "the expect block shows no frame"
        for frame in expected:
            bob.wait_for(f"{frame}", lambda f, e=frame: _matches(e, f))
        for client in (bob, alice):
            assert client.close() == 0, client.output()
    finally:
        for client in clients.values():
            client.close()

    grpcurl = the_block("run", "grpcurl")
    out = subprocess.run(
        ["bash", "-ec", substitute_ports(grpcurl.body, ports)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for text in ("transmit.v1.TransmitHubService", "rpc Connect", '"gw-1"', '"gw-2"'):
        assert text in out.stdout, f"grpcurl output lacks {text}:\n{out.stdout}"
    for counter in ("transmitMapsReceived", "deliveriesSent"):
        assert counter in out.stdout, f"GetStats shows no {counter}:\n{out.stdout}"

    for service in reversed(services):
        code = service.interrupt()
        assert code in (0, 130), f"{service.name} did not stop cleanly on Ctrl-C ({code}):\n" + (
            service.output()
        )
