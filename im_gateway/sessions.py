"""One :class:`Session` per WebSocket connection: reading, writing, replay and limits.

Writing. A frame is written to the socket at once while the socket keeps up (no task,
no await). Once the transport is backed up, frames go into a bounded send queue
drained by the session's own writer task (started when there is a backlog, gone when
it is drained, so an idle connection costs no task). Full policy: a client that does
not read is disconnected (close 1013) instead of growing memory or stalling the
gateway; everything it missed is in its inbox and replayed when it reconnects.

Replay. On connect the session replays the inbox after the acknowledged position in
pages, then sends ``{"type":14,"seq":...}``. While a replay runs, live messages are
held (bounded) and flushed after it. Live messages already sent are dropped: the
session remembers the last few positions it sent (a small window) and everything at
or below the oldest position it forgot; a live message that arrives out of order
(a lower position from another gateway) but was never sent is still delivered.

Reading. Frames are parsed by :mod:`im_gateway.frames`, rate limited by a token
bucket, and handed to the router; errors go back as type 99 and the socket stays
open. Frames that need no await (messages while the router has room, heartbeats,
acks) are handled by :meth:`Session.receive_now` straight from the connection's data
callback: no reader task wakes up per frame. The rest (group changes and replay
requests wait for the store) go through :meth:`Session.run`, and so does every frame
behind them until it has caught up, which keeps a client's frames in order.

Upkeep. One :func:`sweep_idle` task per gateway (not a timer and a keepalive task per
connection, which would cost about 2 KB each) closes connections that sent no frame
for ``idle_timeout`` seconds, pings quiet ones every ``ping_interval`` seconds and
closes those whose pong is ``ping_timeout`` seconds late.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from transmit_hub.types import MessageId, UserId

from . import frames
from .errors import FrameError, GroupLimitError
from .group_policy import FORBIDDEN, SERVER_RIGHTS, GroupRights
from .ratelimit import TokenBucket
from .store import START, Store, seq_key
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

SeqKey = tuple[int, int]

CLOSE_SEND_QUEUE_FULL = 1013
"""Try Again Later: the client stopped reading and its send queue filled up."""
CLOSE_IDLE = 1000
MAX_REPLAY_REQUESTS = 8


def _packed(key: SeqKey) -> int:
    """An inbox position as one int (a short list of ints is far smaller than a set of
    tuples; stream ids never have 2**32 entries in one millisecond)."""
    return (key[0] << 32) | (key[1] & 0xFFFFFFFF)


def _position(key: SeqKey) -> str:
    return START if key == (0, 0) else f"{key[0]}-{key[1]}"


class WebSocketLike(Protocol):
    """The part of ``websockets.asyncio.server.ServerConnection`` a session uses."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    def send_now(self, message: str) -> bool:
        """Write ``message`` without waiting; False when it must wait (then use ``send``)."""
        ...

    async def ping(self) -> Awaitable[float]:
        """Send a WebSocket ping; the result completes when the pong arrives."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Router(Protocol):
    """What a session needs from the gateway's router."""

    def submit(self, session: Session, frame: frames.SendMessage) -> Awaitable[None]:
        """Accept a message frame (waits only when the router's queue is full)."""
        ...

    def submit_nowait(self, session: Session, frame: frames.SendMessage) -> bool:
        """Accept a message frame at once; False when the router's queue is full."""
        ...

    @property
    def busy(self) -> bool:
        """True while :meth:`submit_nowait` would refuse (the queue is full)."""
        ...

    def new_id(self) -> tuple[MessageId, int]:
        """A fresh message id and the server time in ms."""
        ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits (see :class:`im_gateway.config.GatewayConfig`)."""

    send_queue: int = 1024
    replay_page: int = 200
    held_max: int = 1024
    recent_window: int = 32
    idle_timeout: float = 300.0
    rate: float = 200.0
    burst: float = 400.0
    max_content: int = frames.DEFAULT_MAX_CONTENT
    close_timeout: float = 3.0


CONNECT = "connect"
CLIENT = "client"
CATCH_UP = "catch_up"


@dataclass(frozen=True, slots=True)
class _ReplayRequest:
    kind: str
    """CONNECT: after the acknowledged position, then an end marker. CLIENT: after
    ``after`` (or the acknowledged position), then an end marker. CATCH_UP: after
    ``after`` (or what this session was sent before the link dropped), skipping what
    was already sent, without a marker."""
    after: str | None = None


class Session:
    """A user's WebSocket connection on this gateway."""

    __slots__ = (
        "_ack_target",
        "_acking",
        "_bucket",
        "_closing",
        "_floor",
        "_group_rights",
        "_handling",
        "_held",
        "_last_key",
        "_limits",
        "_link_mark",
        "_loop",
        "_missed",
        "_pinged_at",
        "_pong",
        "_queue",
        "_recent",
        "_replay_requests",
        "_replay_task",
        "_replaying",
        "_router",
        "_slots",
        "_store",
        "_tasks",
        "_writer",
        "_ws",
        "last_seen",
        "user",
    )

    def __init__(
        self,
        ws: WebSocketLike,
        user: UserId,
        *,
        store: Store,
        router: Router,
        limits: SessionLimits,
        slots: asyncio.Semaphore | None = None,
        group_rights: GroupRights = SERVER_RIGHTS,
    ) -> None:
        """``slots`` bounds the store calls in flight across all sessions (replays, acks,
        group changes), so thousands of sockets reconnecting at once queue here instead
        of opening thousands of Redis connections. ``group_rights``: which type 12/13
        frames this connection may send (the gateway passes its ``--group-join``;
        by default none: membership is the server's)."""
        self._group_rights = group_rights
        self._ws = ws
        self._slots = slots if slots is not None else asyncio.Semaphore(16)
        self.user = user
        self._store = store
        self._router = router
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._queue: collections.deque[str] | None = None  # allocated on a backlog only
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._bucket = TokenBucket(limits.rate, limits.burst, self._loop.time())
        self._last_key: SeqKey = (0, 0)
        self._floor: SeqKey = (0, 0)
        self._recent: list[int] | None = None  # positions sent lately, as _packed() ints
        self._replaying = True  # until the connect replay is done, live messages are held
        self._held: list[tuple[SeqKey, str]] = []
        self._missed: SeqKey | None = None
        self._replay_requests: list[_ReplayRequest] = []
        self._replay_task: asyncio.Task[None] | None = None
        self._link_mark: str | None = None
        self._ack_target: str | None = None
        self._acking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self.last_seen = self._loop.time()
        """Loop time of the last frame from the client (for the idle and ping sweep)."""
        self._pong: asyncio.Future[float] | None = None
        self._pinged_at = 0.0
        self._handling = False  # run() is handling a frame: receive_now() must defer

    # --- writing ----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once the session is closing: nothing more is queued."""
        return self._closing

    @property
    def replaying(self) -> bool:
        """True while a replay or catch-up is running or queued."""
        return self._replay_task is not None

    @property
    def queued(self) -> int:
        """Frames waiting in the send queue."""
        return len(self._queue) if self._queue else 0

    def push(self, text: str) -> bool:
        """Queue a frame for the client; False when the session is closing or overflowed."""
        if self._closing:
            return False
        queue = self._queue
        if not queue and self._writer is None and self._ws.send_now(text):
            return True  # the common case: written at once, no task
        if queue is None:
            queue = self._queue = collections.deque()
        if len(queue) >= self._limits.send_queue:
            self._overflow()
            return False
        queue.append(text)
        if self._writer is None:
            self._writer = self._loop.create_task(self._write())
        return True

    async def _write(self) -> None:
        try:
            while not self._closing and self._queue:
                await self._ws.send(self._queue.popleft())
        except ConnectionClosed:
            self._closing = True
        except Exception:
            logger.exception("writing to user %s failed; closing", self.user)
            self._closing = True
            self._spawn(self.close_socket(1011, "internal error"))
        finally:
            self._writer = None
            if self._closing or not self._queue:
                self._queue = None  # free the backlog's memory

    def _overflow(self) -> None:
        logger.info("user %s does not read: send queue full, disconnecting", self.user)
        self._closing = True
        self._queue = None
        self._spawn(
            self.close_socket(CLOSE_SEND_QUEUE_FULL, "send queue full; reconnect to resume")
        )

    async def close_socket(self, code: int, reason: str) -> None:
        """Close the WebSocket; abort the TCP connection if the client does not take part.

        (A peer that does not read never lets the close frame drain, and
        ``websockets`` would wait for it without a deadline.)
        """
        try:
            async with asyncio.timeout(self._limits.close_timeout):
                await self._ws.close(code, reason)
        except TimeoutError:
            transport = getattr(self._ws, "transport", None)
            if transport is not None:
                transport.abort()

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = self._loop.create_task(run())
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _room(self) -> None:
        """Wait until the send queue is empty (replay pages are flow-controlled)."""
        while self._writer is not None and not self._closing:
            await asyncio.shield(self._writer)

    # --- live delivery ----------------------------------------------------------------

    def deliver(self, key: SeqKey, text: str) -> None:
        """A live message at inbox position ``key``; dropped when already sent."""
        if self._replaying:
            if len(self._held) < self._limits.held_max:
                self._held.append((key, text))
            elif self._missed is None or key < self._missed:
                self._missed = key
            return
        if key <= self._floor or (self._recent is not None and _packed(key) in self._recent):
            return
        self._sent(key, text)

    def _sent(self, key: SeqKey, text: str) -> None:
        recent = self._recent
        if recent is None:
            recent = self._recent = []
        recent.append(_packed(key))
        if len(recent) > self._limits.recent_window:
            oldest = recent.pop(0)
            self._floor = max(self._floor, (oldest >> 32, oldest & 0xFFFFFFFF))
        if self._last_key < key:
            self._last_key = key
        self.push(text)

    # --- replay -----------------------------------------------------------------------

    def start(self) -> None:
        """Begin the connect replay: after the acknowledged position, with an end marker."""
        self._request(_ReplayRequest(CONNECT))

    def link_down(self) -> None:
        """The hub link dropped: remember what was sent so far, to catch up from there."""
        if self._link_mark is None:
            self._link_mark = _position(self._last_key)

    def catch_up(self) -> None:
        """Send what the inbox holds after what this session was last sent (after LinkUp)."""
        self._request(_ReplayRequest(CATCH_UP))

    def _request(self, request: _ReplayRequest) -> bool:
        if self._closing or len(self._replay_requests) >= MAX_REPLAY_REQUESTS:
            return False
        self._replay_requests.append(request)
        if self._replay_task is None:
            self._replaying = True
            self._replay_task = self._loop.create_task(self._replay_loop())
        return True

    async def _replay_loop(self) -> None:
        try:
            while self._replay_requests and not self._closing:
                request = self._replay_requests.pop(0)
                try:
                    await self._replay(request)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("replay for user %s failed", self.user)
                    self.push(
                        frames.encode_error(
                            frames.INTERNAL, "replay failed; ask again with type 14"
                        )
                    )
                finally:
                    self._flush_held()
        finally:
            self._replaying = False
            self._replay_task = None

    async def _replay(self, request: _ReplayRequest) -> None:
        self._replaying = True
        dedupe = request.kind == CATCH_UP
        if request.kind == CATCH_UP:
            if request.after is not None:
                after = request.after
            else:
                after = (
                    self._link_mark if self._link_mark is not None else _position(self._last_key)
                )
                self._link_mark = None
        elif request.after is not None:
            after = request.after
        else:
            async with self._slots:
                after = await self._store.acked(self.user)
            if request.kind == CONNECT:
                # The client has everything up to its acknowledged position.
                self._floor = max(self._floor, seq_key(after))
                self._last_key = max(self._last_key, seq_key(after))
        page = self._limits.replay_page
        position = after
        while not self._closing:
            async with self._slots:
                entries = await self._store.read_inbox(self.user, position, page)
            if not entries:
                break
            await self._room()
            for entry in entries:
                key = seq_key(entry.seq)
                # Only the window, not the floor: a catch-up may repeat an old message
                # (at least once) but never skips one that was not sent.
                if dedupe and self._recent is not None and _packed(key) in self._recent:
                    continue
                self._sent(key, frames.encode_message(entry.message, entry.seq))
            position = entries[-1].seq
            if len(entries) < page:
                break
        if request.kind != CATCH_UP:
            self.push(frames.encode_replay_end(position))

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        missed, self._missed = self._missed, None
        self._replaying = False
        for key, text in held:
            self.deliver(key, text)
        if missed is not None:
            # Live messages overflowed the hold buffer: read them from the inbox.
            ms, n = missed
            before = f"{ms}-{n - 1}" if n > 0 else f"{ms - 1}-18446744073709551615"
            self._replay_requests.append(_ReplayRequest(CATCH_UP, after=before))
        if self._replay_requests:
            self._replaying = True

    # --- reading ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read and handle frames until the client leaves (or :func:`sweep_idle` closes it)."""
        loop = self._loop
        try:
            while True:
                data = await self._ws.recv()
                self._handling = True
                try:
                    self.last_seen = now = loop.time()
                    await self._handle(data, now)
                finally:
                    self._handling = False
        except ConnectionClosed:
            pass

    def receive_now(self, text: str) -> bool:
        """Handle a text frame without awaiting, from the connection's data callback.

        True when handled. False when the frame needs :meth:`run` (it waits on the
        store or on a full router queue) or :meth:`run` is still busy with an earlier
        frame; the connection then hands it to ``recv()``, in order, and keeps doing so
        for later frames until ``recv()`` has caught up.
        """
        if self._handling:
            return False
        now = self._loop.time()
        try:
            frame = frames.parse(text, max_content=self._limits.max_content)
        except FrameError as exc:
            self.last_seen = now
            self.push(frames.encode_error(exc.code, exc.message, exc.frame_id))
            return True
        if isinstance(frame, frames.SendMessage):
            if self._router.busy:
                return False
        elif not isinstance(frame, (frames.Heartbeat, frames.Ack)):
            return False
        self.last_seen = now
        try:
            self._check_rate(frame, now)
            self._act_now(frame)
        except FrameError as exc:
            self.push(frames.encode_error(exc.code, exc.message, exc.frame_id))
        except Exception:
            logger.exception("handling a frame from user %s failed; closing", self.user)
            self._closing = True
            self._queue = None
            self._spawn(self.close_socket(1011, "internal error"))
        return True

    async def keepalive(self, now: float, interval: float, pong_timeout: float) -> None:
        """Ping a client that sent nothing for ``interval`` seconds; close it (1011) when
        the pong is more than ``pong_timeout`` seconds late. Called by :func:`sweep_idle`, so
        the gateway needs no keepalive task per connection."""
        if self._closing or interval <= 0:
            return
        pong = self._pong
        if pong is not None:
            if not pong.done():
                if pong_timeout > 0 and now - self._pinged_at > pong_timeout:
                    logger.info("user %s: no pong for %ss, closing", self.user, pong_timeout)
                    self._closing = True
                    self._queue = None
                    self._spawn(self.close_socket(1011, "keepalive ping timeout"))
                return
            self._pong = None
        if now - max(self.last_seen, self._pinged_at) < interval:
            return
        try:
            waiter = await self._ws.ping()
        except ConnectionClosed:
            return
        if isinstance(waiter, asyncio.Future):
            waiter.add_done_callback(_consume)
            self._pong = waiter
        self._pinged_at = now

    def expire_if_idle(self, now: float) -> bool:
        """Close the socket when no frame came for ``idle_timeout`` seconds (0: never)."""
        idle = self._limits.idle_timeout
        if idle <= 0 or self._closing or now - self.last_seen < idle:
            return False
        logger.info("user %s idle for %ss: closing", self.user, idle)
        self._closing = True
        self._queue = None
        self._spawn(self.close_socket(CLOSE_IDLE, "idle timeout"))
        return True

    async def _handle(self, data: str | bytes, now: float) -> None:
        try:
            frame = frames.parse(data, max_content=self._limits.max_content)
            self._check_rate(frame, now)
            if isinstance(frame, frames.SendMessage):
                if not self._router.submit_nowait(self, frame):
                    await self._router.submit(self, frame)
            elif isinstance(frame, frames.GroupChange):
                await self._group_change(frame)
            elif isinstance(frame, frames.Replay):
                if not self._request(_ReplayRequest(CLIENT, after=frame.seq)):
                    raise FrameError(frames.RATE_LIMITED, "too many replay requests pending")
            else:
                self._act_now(frame)
        except FrameError as exc:
            self.push(frames.encode_error(exc.code, exc.message, exc.frame_id))

    def _check_rate(self, frame: frames.ClientFrame, now: float) -> None:
        if not self._bucket.allow(now):
            raise FrameError(
                frames.RATE_LIMITED, "too many frames; slow down", getattr(frame, "id", None)
            )

    def _act_now(self, frame: frames.SendMessage | frames.Heartbeat | frames.Ack) -> None:
        """The frames handled without waiting (a message only while the router has room)."""
        if isinstance(frame, frames.SendMessage):
            if not self._router.submit_nowait(self, frame):
                raise FrameError(frames.INTERNAL, "gateway overloaded; send again", frame.id)
        elif isinstance(frame, frames.Heartbeat):
            self.push(frames.HEARTBEAT_REPLY)
        else:
            self._ack(frame.seq)

    async def _group_change(self, frame: frames.GroupChange) -> None:
        refusal = self._group_rights.refusal(frame.type, frame.to)
        if refusal is not None:
            raise FrameError(FORBIDDEN, refusal, frame.id)
        try:
            async with self._slots:
                if frame.type == frames.JOIN:
                    await self._store.join(frame.to, self.user)
                else:
                    await self._store.leave(frame.to, self.user)
        except asyncio.CancelledError:
            raise
        except GroupLimitError as exc:
            raise FrameError(FORBIDDEN, str(exc), frame.id) from exc
        except Exception as exc:
            logger.exception("group change for user %s failed", self.user)
            raise FrameError(frames.INTERNAL, "storage unavailable; retry", frame.id) from exc
        msg_id, now_ms = self._router.new_id()
        self.push(frames.encode_accepted(frame.id, msg_id, now_ms))

    def _ack(self, seq: str) -> None:
        """Coalesced: at most one ack write in flight per session, the latest wins."""
        self._ack_target = seq
        if self._acking is None:
            self._acking = self._loop.create_task(self._write_acks())

    async def _write_acks(self) -> None:
        try:
            while self._ack_target is not None:
                seq, self._ack_target = self._ack_target, None
                try:
                    async with self._slots:
                        await self._store.ack(self.user, seq)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("ack for user %s failed", self.user)
                    self.push(frames.encode_error(frames.INTERNAL, "ack not stored; send it again"))
        finally:
            self._acking = None

    # --- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        """Stop replay, writer and ack tasks; idempotent. The socket is closed by its owner."""
        self._closing = True
        self._queue = None
        if self._acking is not None:
            # Let a pending ack finish: it records what the client confirmed.
            await asyncio.wait([self._acking], timeout=2.0)
        await cancel_and_wait(self._replay_task, self._writer, self._acking, *(self._tasks or ()))


def _consume(future: asyncio.Future[float]) -> None:
    """Retrieve a pong future's outcome so a closed connection logs nothing."""
    if not future.cancelled():
        future.exception()


async def sweep_idle(
    sessions: Callable[[], Iterable[Session]],
    idle_timeout: float,
    *,
    ping_interval: float = 0.0,
    ping_timeout: float = 0.0,
) -> None:
    """Forever, one task per gateway instead of timers and tasks per connection: close
    sessions idle for ``idle_timeout`` seconds (0: never), ping those quiet for
    ``ping_interval`` seconds and close those whose pong is ``ping_timeout`` late."""
    periods = [p for p in (idle_timeout / 4, ping_interval / 4, ping_timeout / 2) if p > 0]
    if not periods:
        return
    period = max(min(periods), 0.01)
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(period)
        now = loop.time()
        for session in sessions():
            try:
                session.expire_if_idle(now)
                await session.keepalive(now, ping_interval, ping_timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("keepalive of user %s failed", session.user)
