"""The Quickstart's ``scripts/demo``: a working local cluster, and no process left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.helpers import IN_CI, free_port, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
URL_LINE = re.compile(
    r"^\s*(?P<user>alice|bob)\s+\(user (?P<id>\d+)\) on (?P<gw>gw-\d+): (?P<url>http://\S+)$"
)
WORKDIR_LINE = re.compile(r"^\s*logs\s+(?P<dir>\S+)")
READY_TIMEOUT = 240.0  # scripts/demo may install the project into .venv first

pytestmark = pytest.mark.slow

if not Path("/proc/self/stat").exists():  # the orphan checks read /proc
    if IN_CI:
        pytest.fail("the demo tests need Linux /proc, and CI runs on Linux", pytrace=False)
    pytest.skip("needs Linux /proc", allow_module_level=True)


class Demo:
    """The demo command as a child process, its output collected by a thread."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self._stderr = log.open("wb")
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.children: list[int] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines) + "\n--- stderr ---\n" + self.log.read_text(errors="replace")

    def urls(self) -> dict[tuple[str, str], str]:
        """(user, gateway id) -> chat page URL, from the printed lines."""
        found = {}
        for line in list(self.lines):
            m = URL_LINE.match(line)
            if m:
                found[(m["user"], m["gw"])] = m["url"]
        return found

    def wait_ready(self) -> dict[tuple[str, str], str]:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the demo exited ({self.proc.returncode}):\n{self.output()}")
            return len(self.urls()) == 4

        wait_until_sync(ready, timeout=READY_TIMEOUT, what="the demo's four chat URLs")
        self.children = children_of(self.proc.pid)
        return self.urls()

    def printed_command(self, word: str) -> list[str]:
        """The printed command line that contains ``word``, split like a shell does."""
        for line in self.lines:
            if word in line and ("grpcurl" in line or "-m im_gateway " in line):
                return shlex.split(line)
        raise AssertionError(f"the demo printed no command with {word}:\n{self.output()}")

    def workdir(self) -> Path:
        for line in self.lines:
            m = WORKDIR_LINE.match(line)
            if m:
                return Path(m["dir"])
        raise AssertionError(f"the demo printed no logs directory:\n{self.output()}")

    def close(self) -> None:
        """Kill whatever is left (only on failure paths; the tests stop it themselves)."""
        for pid in [self.proc.pid, *self.children]:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def children_of(parent: int) -> list[int]:
    """The live child processes of ``parent``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == parent and stat[0] != "Z":
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped counts as gone)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


@pytest.fixture
def demos(tmp_path: Path) -> Iterator[list[Demo]]:
    """Demo processes started by a test; killed with their children if still there."""
    started: list[Demo] = []
    try:
        yield started
    finally:
        for demo in started:
            demo.close()


def start_demo(demos: list[Demo], tmp_path: Path, argv: list[str]) -> Demo:
    demo = Demo(argv, tmp_path / f"demo-{len(demos)}.log")
    demos.append(demo)
    return demo


def http_get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports that are free right now."""
    for _ in range(100):
        base = free_port()
        if base + count < 65536 and all(port_free(base + i) for i in range(count)):
            return base
    raise AssertionError(f"found no {count} consecutive free ports")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def run_printed(argv: list[str]) -> str:
    """Run a command line the demo printed, from the repository root; its output."""
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv} failed: {done.stderr}"
    return done.stdout.strip()


def ws_url(page_url: str) -> str:
    parts = urlsplit(page_url)
    token = parse_qs(parts.query)["token"][0]
    return f"ws://{parts.netloc}/ws?token={token}"


async def next_frame(ws: ClientConnection, match: Callable[[dict[str, Any]], bool]) -> Any:
    async with asyncio.timeout(15):
        while True:
            frame = json.loads(await ws.recv())
            if match(frame):
                return frame


async def pass_message(alice_page: str, bob_page: str, cid: str = "demo-1") -> dict[str, Any]:
    """Alice (on one gateway) writes to bob (on the other); what bob receives."""
    async with connect(ws_url(bob_page)) as bob, connect(ws_url(alice_page)) as alice:
        await next_frame(bob, lambda f: f["type"] == 14)
        await next_frame(alice, lambda f: f["type"] == 14)
        await alice.send(
            json.dumps(
                {
                    "type": 1,
                    "id": cid,
                    "to": 2,
                    "contentType": 0,
                    "content": "hi from the demo",
                }
            )
        )
        accepted = await next_frame(alice, lambda f: f["type"] in (10, 99))
        assert accepted["type"] == 10, accepted
        got: dict[str, Any] = await next_frame(bob, lambda f: f["type"] == 1)
        assert got["id"] == accepted["msgId"]
        return got


@pytest.mark.timeout(READY_TIMEOUT + 60)
def test_scripts_demo_serves_the_chat_and_ctrl_c_stops_everything(
    tmp_path: Path, demos: list[Demo]
) -> None:
    """scripts/demo's URLs, tokens and commands work, the chat goes on when a hub is killed as
    printed (the demo starts it again), and Ctrl-C leaves no process behind."""
    demo = start_demo(demos, tmp_path, [str(ROOT / "scripts" / "demo")])
    urls = demo.wait_ready()
    assert len(demo.children) == 5, f"expected redis, 2 hubs, gw-1, gw-2: {demo.children}"

    page = urls[("alice", "gw-1")]
    status, content_type, body = http_get(page)
    assert status == 200
    assert content_type.startswith("text/html")
    assert "/static/app.js" in body
    base = page.split("?")[0]
    assert http_get(base + "static/app.js")[0] == 200
    assert http_get(base + "healthz")[0] == 200
    # The demo runs with --group-join open, and /info tells the page so.
    assert json.loads(http_get(base + "info")[2]) == {"gatewayId": "gw-1", "groupJoin": "open"}

    got = asyncio.run(pass_message(page, urls[("bob", "gw-2")]))
    assert got["content"] == "hi from the demo"
    assert int(got["from"]) == 1

    printed = {name: demo.printed_command(name) for name in ("token", "ListGateways", "GetStats")}
    token = run_printed(printed["token"])
    assert token.count(".") == 2, f"not a JWT: {token!r}"
    gateways = run_printed(printed["ListGateways"])
    assert '"gw-1"' in gateways
    assert '"gw-2"' in gateways
    stats = run_printed(printed["GetStats"])  # of hub-1 (the message may have gone via hub-2)
    assert '"hubId"' in stats
    assert '"gw-1"' in stats

    # The printed way to kill a hub: the chat goes on through the other, and the demo
    # starts the killed one again.
    kill = next(line.split() for line in demo.lines if line.strip().startswith("kill -9 "))
    hub_pid = int(kill[2])
    assert hub_pid in demo.children
    os.kill(hub_pid, signal.SIGKILL)
    wait_until_sync(
        lambda: any("hub-1 exited" in line for line in demo.lines), timeout=10, what="the note"
    )
    again = asyncio.run(pass_message(urls[("alice", "gw-2")], urls[("bob", "gw-1")], "demo-2"))
    assert again["content"] == "hi from the demo"
    wait_until_sync(
        lambda: any("hub-1 is back" in line for line in demo.lines), timeout=30, what="hub-1 back"
    )
    demo.children = children_of(demo.proc.pid)
    assert len(demo.children) == 5

    os.kill(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(30) == 0, demo.output()
    wait_until_sync(
        lambda: not any(alive(pid) for pid in demo.children),
        timeout=5,
        what="every process the demo started to be gone",
    )
    assert "every process it started is gone" in demo.output()
    assert not demo.workdir().exists(), "the demo left its work directory behind"


def test_demo_children_die_with_it_and_a_rerun_just_works(
    tmp_path: Path, demos: list[Demo], redis_url: str
) -> None:
    """A SIGKILLed demo leaves no orphans, and a rerun right after starts cleanly."""
    # The rerun also covers --redis-url (no embedded Redis) and --port-base.
    command = [sys.executable, "-m", "devtools.demo"]
    crashed = start_demo(demos, tmp_path, command)
    crashed.wait_ready()
    assert len(crashed.children) == 5
    crashed.proc.kill()
    crashed.proc.wait()
    wait_until_sync(
        lambda: not any(alive(pid) for pid in crashed.children),
        timeout=10,
        what="the killed demo's children to exit",
    )
    assert crashed.workdir().exists()

    base = free_port_run(5)
    rerun = start_demo(
        demos, tmp_path, [*command, "--redis-url", redis_url, "--port-base", str(base)]
    )
    urls = rerun.wait_ready()
    assert len(rerun.children) == 4, "with --redis-url the demo starts no Redis of its own"
    assert urls[("alice", "gw-1")].startswith(f"http://127.0.0.1:{base + 1}/?token=")
    assert urls[("bob", "gw-2")].startswith(f"http://127.0.0.1:{base + 2}/?token=")
    assert f"hub-1  127.0.0.1:{base}" in rerun.output()
    assert f"hub-2  127.0.0.1:{base + 4}" in rerun.output()
    assert not crashed.workdir().exists(), "the rerun did not clear the crashed run's files"
    assert asyncio.run(pass_message(urls[("alice", "gw-2")], urls[("bob", "gw-1")]))

    rerun.proc.terminate()
    assert rerun.proc.wait(30) == 0, rerun.output()
    assert not any(alive(pid) for pid in rerun.children)


def test_demo_help() -> None:
    """``--help`` describes the demo and exits 0; a bad flag exits non-zero."""
    command = [sys.executable, "-m", "devtools.demo"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0
    assert "--redis-url" in shown.stdout
    bad = subprocess.run([*command, "--no-such-flag"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2


def test_a_secret_that_begins_with_a_dash_reaches_the_gateways() -> None:
    """The demo's random secret may begin with "-": its gateway command line still parses
    (a flaky start before: ``--jwt-secret -x...`` read as a missing value)."""
    from devtools.demo import Cluster
    from im_gateway.__main__ import build_parser

    cluster = Cluster(jwt_secret="-starts-with-a-dash-0123456789abcdef")
    argv = cluster._gateway_command("gw-1", 8081)
    args = build_parser().parse_args(argv[3:])
    assert args.jwt_secret == "-starts-with-a-dash-0123456789abcdef"
