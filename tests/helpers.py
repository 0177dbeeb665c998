"""Small helpers shared by the tests: waiting on conditions (and the launcher's free ports)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable

from devtools.launch import free_port

__all__ = ["IN_CI", "free_port", "wait_until", "wait_until_sync"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


NOFILE_LAUNCHER = (
    "import os, resource, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)


def with_nofile(soft: int, hard: int, *args: str) -> list[str]:
    """``python *args`` started with these open-file limits (set by a tiny launcher that
    then execs: no ``preexec_fn``, whose fork can abort a child of a process running
    gRPC threads)."""
    return [sys.executable, "-c", NOFILE_LAUNCHER, str(soft), str(hard), *args]


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - a test helper's deadline, not an I/O timeout
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """The blocking twin of :func:`wait_until`, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def endless_file(directory: str | os.PathLike[str], kind: str) -> str:
    """A path that never ends when read: a FIFO no one writes (``kind`` "fifo", made in
    ``directory``) or an endless device ("device": ``/dev/zero``)."""
    if kind == "device":
        return "/dev/zero"
    path = os.path.join(directory, "endless.pem")
    os.mkfifo(path)
    return path


def one_error_line(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``argv`` (a program that should refuse to start) and return its one line on
    stderr; fails unless it exits non-zero within 20 s with exactly one line."""
    import subprocess

    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env, check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def tls_behind_handshake(
    sock: socket.socket, context: ssl.SSLContext, data: bytes
) -> tuple[ssl.SSLObject, ssl.MemoryBIO]:
    """Run a TLS client handshake on the blocking ``sock``, then send ``data`` in the same
    TCP write as the client's Finished (the bytes arrive right behind the handshake);
    returns the TLS object and its incoming BIO (for the caller to feed what it reads)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if pending := outgoing.read():
                sock.sendall(pending)
            received = sock.recv(65536)
            assert received, "the server closed during the handshake"
            incoming.write(received)
    tls.write(data)
    sock.sendall(outgoing.read())  # the client's Finished and ``data``, one write
    return tls, incoming
