"""``python -m im_gateway --workers N``: N gateway processes on one port, supervised.

One gateway process uses one core. With ``--workers N`` the process started by the user
becomes a supervisor (the *parent*); it serves nothing itself and starts N workers, each
``python -m im_gateway`` with the same flags plus:

- ``--reuse-port --listen HOST:PORT``: every worker binds the same port with
  ``SO_REUSEPORT``; the kernel spreads new connections over the workers by a hash of
  the client's address. ``--api-listen`` is shared the same way: every server API call
  is answered correctly by any worker (publish, groups, presence and history go through
  Redis and the hubs; ``disconnect`` reaches every gateway through the hubs).
- ``--gateway-id <id>-<i>``, i = 0 .. N-1 (``<id>``: ``--gateway-id``, or the default
  derived from the host and the port): each worker is a gateway of its own on every hub,
  with its own hub links, Redis connections, presence and sockets; they share nothing
  but the port. Worker i keeps its id across restarts, so the hubs take it back at once.
- ``--metrics-listen HOST:PORT+i``: ``/metrics`` on the users' port answers from whichever
  worker took that connection, so Prometheus scrapes each worker on its own port.

The parent binds the ports first (``SO_REUSEPORT``, never listening): a port 0 becomes a
concrete one that every worker, and a restarted one, binds again; a port held by another
program fails the start at once with one line.

A worker that exits is started again after a pause (0.2 s, doubling with each exit of
that worker within the last minute, at most 10 s); each restart is logged with its count.
More than ``--worker-restarts`` exits of one worker within a minute (a worker that cannot
start: Redis unreachable, say) make the parent give up: it stops the others and exits 1
with one line naming the worker and its last exit.

A worker that stops serving without exiting (its event loop stuck, or the process
stopped) would keep its share of the port, and the kernel would go on handing it new
connections. Each worker's event loop writes a byte to a pipe from the parent every
quarter of ``--worker-heartbeat`` (:func:`beat`); a worker silent for that long (the first
byte may take :data:`FIRST_BEAT` more, for the start) is killed, logged, and started again
like one that died.

SIGTERM (SIGINT) to the parent goes to every worker: each drains (closes its sockets with
1012; SIGINT: 1001) within ``--drain-timeout``; a worker still running
:data:`KILL_GRACE` seconds after that is killed. The parent's exit code says what
happened: :data:`EXIT_OK` (every worker stopped cleanly), :data:`EXIT_GAVE_UP`,
:data:`EXIT_UNCLEAN` (a worker was killed or failed while stopping).

The pure parts (:class:`Restarts`, :func:`worker_argv`, :func:`exit_code`) are tested
without processes; :class:`Supervisor` is the I/O around them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from . import backlog
from .config import GatewayConfig, default_gateway_id, parse_host_port
from .errors import StartupError

logger = logging.getLogger(__name__)

__all__ = [
    "EXIT_GAVE_UP",
    "EXIT_OK",
    "EXIT_UNCLEAN",
    "Restarts",
    "Supervisor",
    "describe_exit",
    "exit_code",
    "worker_argv",
]

EXIT_OK: Final = 0
"""Stopped by SIGTERM or SIGINT, and every worker exited 0 in time."""
EXIT_GAVE_UP: Final = 1
"""A worker exited more than ``--worker-restarts`` times within a minute."""
EXIT_UNCLEAN: Final = 3
"""Stopped, but a worker had to be killed or exited non-zero while stopping."""

WINDOW: Final = 60.0
"""Seconds over which a worker's exits are counted against ``--worker-restarts``."""
BACKOFF_FIRST: Final = 0.2
BACKOFF_MAX: Final = 10.0
KILL_GRACE: Final = 5.0
"""Seconds past ``--drain-timeout`` a stopping worker gets before it is killed (its
hub links and Redis close after the sockets)."""
FIRST_BEAT: Final = 30.0
"""Seconds a new worker may take, beyond ``--worker-heartbeat``, to send its first
heartbeat (its imports and start, on a busy host)."""
HEARTBEAT_ENV: Final = "IM_GATEWAY_HEARTBEAT_FD"
"""The descriptor a worker's heartbeats go to (set by the parent, not a setting)."""


# --- pure decisions -------------------------------------------------------------------------


class Restarts:
    """One worker's exits: how long to wait before starting it again, or give up.

    ``cap`` exits within ``window`` seconds are restarted, each after a pause that
    doubles from ``first`` up to ``most``; one more exit within the window gives up.
    """

    def __init__(
        self,
        cap: int,
        *,
        window: float = WINDOW,
        first: float = BACKOFF_FIRST,
        most: float = BACKOFF_MAX,
    ) -> None:
        self.cap = cap
        self._window = window
        self._first = first
        self._most = most
        self._exits: collections.deque[float] = collections.deque()
        self.total = 0
        """Restarts decided since the start."""

    def recent(self, now: float) -> int:
        """Exits within the window before ``now``."""
        while self._exits and self._exits[0] <= now - self._window:
            self._exits.popleft()
        return len(self._exits)

    def exited(self, now: float) -> float | None:
        """Record an exit at ``now``: the pause before the restart, or None to give up."""
        self._exits.append(now)
        recent = self.recent(now)
        if recent > self.cap:
            return None
        self.total += 1
        return min(self._most, self._first * 2.0 ** (recent - 1))


def describe_exit(returncode: int) -> str:
    """A process's return code in words: ``exit code 1``, ``signal SIGKILL``."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def exit_code(returncodes: Sequence[int | None]) -> int:
    """The parent's exit code after a stop, from the workers' return codes: 0 when every
    one exited 0 (a killed one has a negative code)."""
    return EXIT_OK if all(code == 0 for code in returncodes) else EXIT_UNCLEAN


def silent_for(last: float, now: float, started: bool, timeout: float) -> float | None:
    """How long a worker has been silent when that is over its allowance (``timeout``;
    :data:`FIRST_BEAT` more before its first heartbeat, ``started`` False), else None."""
    quiet = now - last
    allowed = timeout if started else timeout + FIRST_BEAT
    return quiet if quiet > allowed else None


async def beat(config: GatewayConfig) -> None:
    """In a worker: a byte to the parent every quarter of ``--worker-heartbeat``, from
    the event loop (so a stuck loop sends none); returns at once outside ``--workers``."""
    fd_text = os.environ.pop(HEARTBEAT_ENV, "")
    if not fd_text.isdigit() or config.worker_heartbeat <= 0:
        return
    fd = int(fd_text)
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                os.write(fd, b".")
            except BlockingIOError:
                pass  # the parent is behind: the pipe holds plenty of beats
            except OSError:
                return  # the parent is gone (and its death signal on the way)
            await asyncio.sleep(config.worker_heartbeat / 4)
    finally:
        os.close(fd)


class _Beats(asyncio.Protocol):
    """The parent's end of a worker's heartbeat pipe: the time of the last byte."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.last = clock()
        self.started = False

    def data_received(self, data: bytes) -> None:
        self.last = self._clock()
        self.started = True


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Plan:
    """What the workers share, resolved by the parent."""

    listen: str
    """``--listen`` with its concrete port."""
    api_listen: str | None
    base_id: str
    """``--gateway-id``, or the default one for the concrete port."""


def worker_argv(args: Sequence[str], config: GatewayConfig, plan: Plan, index: int) -> list[str]:
    """The command line of worker ``index``: the user's flags, then the worker's own
    (later flags win)."""
    argv = [sys.executable, "-m", "im_gateway", *args, "--workers", "1", "--reuse-port"]
    argv += ["--listen", plan.listen, "--gateway-id", config.worker_id(index, plan.base_id)]
    if plan.api_listen is not None:
        argv += ["--api-listen", plan.api_listen]
    if config.metrics_listen is not None:
        host, port = parse_host_port(config.metrics_listen, "--metrics-listen")
        argv += ["--metrics-listen", _address(host, port + index if port else 0)]
    return argv


# --- the processes --------------------------------------------------------------------------


def _reserve(value: str, what: str) -> tuple[socket.socket, str]:
    """Bind ``HOST:PORT`` with SO_REUSEPORT (not listening: the kernel hands connections
    to listening sockets only), holding the port for the workers; StartupError if taken."""
    host, port = parse_host_port(value, what)
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {value}: {exc.strerror or exc}") from None
    return sock, _address(host, sock.getsockname()[1])


_PR_SET_PDEATHSIG: Final = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A worker gets SIGTERM (a drain) when the parent dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    """Runs the workers until a signal or a worker that keeps dying (:meth:`run`)."""

    def __init__(
        self,
        config: GatewayConfig,
        args: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._args = list(args)
        self._clock = clock
        self._restarts = [Restarts(config.worker_restarts) for _ in range(config.workers)]
        self._procs: list[asyncio.subprocess.Process | None] = [None] * config.workers
        self._stop = asyncio.Event()
        self._signal = signal.SIGTERM
        self._gave_up: str | None = None

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            self._signal = sig
            self._stop.set()

    async def run(self) -> int:
        """Start the workers, keep them running, stop them; the exit code."""
        cfg = self.config
        held = [_reserve(cfg.listen, "--listen")]
        try:
            if cfg.serves_api and cfg.api_listen is not None:
                held.append(_reserve(cfg.api_listen, "--api-listen"))
        except StartupError:
            held[0][0].close()
            raise
        listen = held[0][1]
        host, port = parse_host_port(listen, "--listen")
        plan = Plan(
            listen=listen,
            api_listen=held[1][1] if len(held) > 1 else None,
            base_id=cfg.gateway_id or default_gateway_id(host, port),
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            logger.info(
                "starting %d gateway workers on %s (ids %s to %s)",
                cfg.workers,
                listen,
                cfg.worker_id(0, plan.base_id),
                cfg.worker_id(cfg.workers - 1, plan.base_id),
            )
            backlog.check_workers_at_start(cfg.workers)
            keepers = [
                asyncio.create_task(self._keep(i, plan), name=f"worker-{i}")
                for i in range(cfg.workers)
            ]
            await self._stop.wait()
            for task in keepers:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            return await self._stop_all()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for sock, _ in held:
                sock.close()

    async def _keep(self, index: int, plan: Plan) -> None:
        """Start worker ``index`` and start it again whenever it exits."""
        name = f"worker {index} ({self.config.worker_id(index, plan.base_id)})"
        restarts = self._restarts[index]
        argv = worker_argv(self._args, self.config, plan, index)
        while True:
            read_fd, write_fd = os.pipe()
            try:
                proc = self._procs[index] = await asyncio.create_subprocess_exec(
                    *argv,
                    preexec_fn=_die_with_parent,
                    pass_fds=(write_fd,),
                    env={**os.environ, HEARTBEAT_ENV: str(write_fd)},
                )
            finally:
                os.close(write_fd)
            logger.info("%s started, pid %d", name, proc.pid)
            returncode = await self._watch(proc, name, read_fd)
            if self._stop.is_set():
                return
            pause = restarts.exited(self._clock())
            how = describe_exit(returncode)
            if pause is None:
                self._gave_up = (
                    f"{name} exited {restarts.cap + 1} times within {WINDOW:g} s "
                    f"(last: {how}; --worker-restarts {restarts.cap}); giving up"
                )
                logger.error("%s", self._gave_up)
                self._stop.set()
                return
            logger.warning(
                "%s, pid %d, exited (%s); starting it again in %.1f s "
                "(restart %d within %g s, at most %d; %d since the start)",
                name,
                proc.pid,
                how,
                pause,
                restarts.recent(self._clock()),
                WINDOW,
                restarts.cap,
                restarts.total,
            )
            await asyncio.sleep(pause)

    async def _watch(self, proc: asyncio.subprocess.Process, name: str, read_fd: int) -> int:
        """Wait for ``proc`` to exit; kill it when its heartbeats stop (its return code)."""
        loop = asyncio.get_running_loop()
        beats = _Beats(self._clock)
        transport, _ = await loop.connect_read_pipe(
            lambda: beats, os.fdopen(read_fd, "rb", buffering=0)
        )
        exited = asyncio.ensure_future(proc.wait())
        timeout = self.config.worker_heartbeat
        try:
            while not exited.done():
                await asyncio.wait([exited], timeout=timeout / 4 if timeout > 0 else None)
                quiet = silent_for(beats.last, self._clock(), beats.started, timeout)
                if timeout > 0 and not exited.done() and quiet is not None:
                    logger.error(
                        "%s, pid %d, sent no heartbeat for %.1f s (its event loop is stuck, "
                        "or the process is stopped; --worker-heartbeat %g): killing it",
                        name,
                        proc.pid,
                        quiet,
                        timeout,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await exited
            return exited.result()
        finally:
            exited.cancel()
            transport.close()

    async def _stop_all(self) -> int:
        """Forward the signal to every live worker, wait for them, kill the late ones."""
        sig = signal.SIGTERM if self._gave_up else self._signal
        live = [p for p in self._procs if p is not None and p.returncode is None]
        logger.info("stopping %d workers (%s)", len(live), sig.name)
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        deadline = self.config.drain_timeout + KILL_GRACE
        if live:
            _, late = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in live], timeout=deadline
            )
            for task in late:
                task.cancel()
        killed = 0
        for proc in live:
            if proc.returncode is None:
                killed += 1
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if killed:
            logger.error("%d workers still ran %g s after %s: killed", killed, deadline, sig.name)
        unclean = [describe_exit(p.returncode) for p in live if p.returncode]
        if unclean and not self._gave_up:
            logger.error("workers that did not stop cleanly: %s", ", ".join(unclean))
        total = sum(r.total for r in self._restarts)
        logger.info("gateway workers stopped (%d restarts since the start)", total)
        if self._gave_up:
            raise StartupError(self._gave_up)
        return exit_code([p.returncode for p in live])
