"""A dedicated Redis connection for the store's frequent calls: batch, ack and presence
scripts, and the presence watcher's beacon.

redis-py's asyncio client costs about 100 µs of CPU per command on top of the round trip
(its connection pool's checkout and release, a health check, a ``wait_for`` per read,
asyncio streams, its event hooks), measured on the 2-core machine against 15-25 µs for a
bare protocol doing the same ``PING``. The pipeline makes one ``EVALSHA`` per batch, so at
moderate load (small batches) that overhead was most of what a store call cost the
gateway. A :class:`Lane` is one TCP connection with an :class:`asyncio.Protocol` and
hiredis's reader (both public API: ``hiredis.Reader``, ``hiredis.pack_command``):
commands are written at once and their replies matched in order, so any number may be in
flight (the pipeline's batch and the acks share it without waiting for each other).

It behaves as the client configured by :func:`~im_gateway.store.redis.client_options`
does: a command that finds the connection dead (or loses it) is sent again on a fresh one,
up to 3 times with a short backoff; a reply late by more than the socket timeout fails
every command in flight with ``redis.exceptions.TimeoutError`` and drops the connection
(replies could no longer be matched), and is not retried here. Error replies raise
``redis.exceptions.ResponseError`` (``NoScriptError`` for ``NOSCRIPT``), as redis-py's do.

Only a plain TCP connection is handled (host, port, db, username and password, client
name, from the client's connection pool); for anything else (TLS, a Unix socket, a
credential provider) :meth:`Lane.of` answers None and the store uses the client.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Lane"]

_RETRIES = 3
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 0.5
_TIMER_SLACK = 0.002
"""A loop's timer may run its callback this early (uvloop counts in milliseconds)."""


T = TypeVar("T")

Arg = str | bytes | int | float | memoryview
"""A command's word, as hiredis packs it (str as UTF-8)."""


def _pack(args: tuple[Arg, ...]) -> bytes:
    """``args`` as one RESP command."""
    packed: bytes = hiredis.pack_command(cast(Any, args))  # its stub wants a 1-tuple
    return packed


def _reply_error(message: str) -> Exception:
    """An error reply as redis-py raises it."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Link(asyncio.Protocol):
    """One connection: commands out in order, replies matched to them in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self._loop = loop
        self._timeout = timeout
        self._reader = hiredis.Reader(replyError=_reply_error)
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        """Commands in flight: their futures and the loop times their replies are due by."""
        self._timer: asyncio.TimerHandle | None = None
        """One timer for all of them (not one per command: about 2.5 µs each to arm and
        cancel), due when the oldest reply is; it re-arms itself for the next one."""
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        """Why the connection is unusable (None while it works)."""
        self.gone: asyncio.Future[None] = loop.create_future()
        """Done once the connection is closed (its socket too)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, packed: list[bytes]) -> list[asyncio.Future[Any]]:
        """Write packed commands in one write; a future per command gets its reply."""
        if self.lost is not None:
            raise self.lost
        assert self._transport is not None
        loop = self._loop
        due = 0.0 if self._timeout is None else loop.time() + self._timeout
        futures = [loop.create_future() for _ in packed]
        self._waiting.extend((f, due) for f in futures)
        if self._timeout is not None and self._timer is None and futures:
            self._timer = loop.call_at(due, self._check_due)
        self._transport.write(b"".join(packed))
        return futures

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(ConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                self.abort(ConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiting.popleft()[0]
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc or 'closed by the server'}"))
        if not self.gone.done():
            self.gone.set_result(None)

    def _check_due(self) -> None:
        """The timer: fail everything when the oldest reply in flight is overdue, else
        wait for it (or for nothing, when no command is in flight)."""
        self._timer = None
        if not self._waiting:
            return
        due = self._waiting[0][1]
        if self._loop.time() + _TIMER_SLACK >= due:
            self.abort(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self._loop.call_at(due, self._check_due)

    def abort(self, exc: Exception) -> None:
        """Fail every command in flight with ``exc`` and drop the connection."""
        self._fail(exc)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future = self._waiting.popleft()[0]
            if not future.done():
                future.set_exception(exc)


class Lane:
    """One dedicated connection to a Redis server (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._setup: list[tuple[Arg, ...]] = []
        if password is not None:
            self._setup.append(
                ("AUTH", password) if username is None else ("AUTH", username, password)
            )
        if db:
            self._setup.append(("SELECT", db))
        if client_name is not None:
            self._setup.append(("CLIENT", "SETNAME", client_name))
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        """``HOST:PORT``, as redis-py names a cluster node."""
        return f"{self._host}:{self._port}"

    @classmethod
    def of(cls, client: aioredis.Redis) -> Lane | None:
        """A lane to the server ``client`` talks to, with its settings; None when its
        connections are not plain TCP with a password at most (see the module docstring)."""
        pool = client.connection_pool
        return cls._like(pool.connection_class, pool.connection_kwargs)

    @classmethod
    def of_node(cls, node: ClusterNode) -> Lane | None:
        """A lane to a Redis Cluster node, with the settings of the cluster client's
        connections to it; None as for :meth:`of`."""
        return cls._like(
            node.connection_class, {**node.connection_kwargs, "host": node.host, "port": node.port}
        )

    @classmethod
    def _like(cls, connection_class: type[Any], kw: dict[str, Any]) -> Lane | None:
        """A lane as redis-py's connections of ``connection_class`` made with ``kw``."""
        if connection_class is not Connection or kw.get("credential_provider") is not None:
            return None
        if kw.get("encoding", "utf-8").lower().replace("_", "-") not in ("utf-8", "utf8"):
            return None
        if kw.get("encoding_errors", "strict") != "strict":
            return None
        return cls(
            str(kw.get("host", "localhost")),
            int(kw.get("port", 6379)),
            db=int(kw.get("db", 0) or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            client_name=kw.get("client_name"),
            timeout=kw.get("socket_timeout"),
            connect_timeout=kw.get("socket_connect_timeout") or kw.get("socket_timeout"),
        )

    async def call(self, *args: Arg) -> Any:
        """Send one command and return its reply (see the module docstring for errors)."""
        packed = [_pack(args)]

        async def reply(link: _Link) -> Any:
            return await link.send(packed)[0]

        return await self._retrying(reply)

    async def pipeline(self, commands: Sequence[tuple[Arg, ...]]) -> list[Any]:
        """Send ``commands`` in one write and return their replies in order, an error
        reply or a lost connection as the exception in its place (nothing is sent again
        once written: the caller decides). Connecting is retried as for :meth:`call`."""
        packed = [_pack(args) for args in commands]

        async def written(link: _Link) -> list[asyncio.Future[Any]]:
            return link.send(packed)

        futures = await self._retrying(written)
        if futures:
            try:
                # Replies come in order (a lost connection fails them in order too), so
                # the last one done means all are.
                await asyncio.wait((futures[-1],))
            except asyncio.CancelledError:
                for f in futures:
                    f.cancel()  # their replies, when they come, are dropped
                raise
        return [f.exception() or f.result() for f in futures]

    async def _retrying(self, attempt: Callable[[_Link], Awaitable[T]]) -> T:
        """``attempt`` on a working connection; when it raises ConnectionError (the
        connection was dead, or died under it), again on a fresh one, up to
        :data:`_RETRIES` times with a short random backoff."""
        for n in range(_RETRIES + 1):
            try:
                link = self._link
                if link is None or link.lost is not None:
                    link = await self._connect()
                return await attempt(link)
            except ConnectionError:
                if n == _RETRIES or self._closed:
                    raise
            cap = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**n)
            await asyncio.sleep(random.uniform(0, cap))
        raise AssertionError("unreachable")

    async def _connect(self) -> _Link:
        async with self._connecting:
            link = self._link
            if link is not None and link.lost is None:
                return link
            if self._closed:
                raise ConnectionError("the store is closed")
            loop = asyncio.get_running_loop()
            link = None
            try:
                async with asyncio.timeout(self._connect_timeout):
                    _, link = await loop.create_connection(
                        lambda: _Link(loop, self._timeout), self._host, self._port
                    )
                    for command in self._setup:
                        await link.send([_pack(command)])[0]
            except BaseException as exc:
                if link is not None:
                    link.abort(ConnectionError("connection setup failed"))
                if isinstance(exc, (OSError, TimeoutError)):
                    raise ConnectionError(
                        f"Error connecting to Redis at {self._host}:{self._port}: {exc}"
                    ) from exc
                raise
            self._link = link
            return link

    async def close(self) -> None:
        """Drop the connection (commands in flight fail); idempotent."""
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.abort(ConnectionError("the store is closed"))
            await asyncio.wait([link.gone], timeout=1.0)
