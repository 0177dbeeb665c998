"""One :class:`Session` per WebSocket connection: reading, writing, replay and limits.

Writing. A frame is written to the socket at once while the socket keeps up (no task,
no await). Once the transport is backed up, frames go into a bounded send queue
drained by the session's own writer task (started when there is a backlog, gone when
it is drained, so an idle connection costs no task). Full policy: a client that does
not read is disconnected (close 1013) instead of growing memory or stalling the
gateway; everything it missed is in its inbox and replayed when it reconnects.

Positions and replays. Inbox positions are consecutive; a
:class:`~im_gateway.replayer.Replayer` (the I/O around the pure
:class:`~im_gateway.cursor.Cursor`) keeps where this connection stands, fills holes from
the inbox, and runs the connect replay and the replays the client asks for (type 14).
So each connection sees its messages in order and without holes, and a client may
always acknowledge the highest seq it has seen.

Reading. Every frame, valid or not, takes a token from the rate limit; frames are
parsed by :mod:`im_gateway.frames` and handed to the router; errors go back as type 99
and the socket stays open, until a client has had ``max_refused`` frames refused in a
minute: then it is closed with 1008 (policy violation). Frames that need no await (messages while the router has room, heartbeats,
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
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from transmit_hub.types import MessageId, UserId

from . import frames
from .close_codes import CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_POLICY, CLOSE_SEND_QUEUE_FULL
from .errors import FrameError, GroupLimitError
from .group_policy import FORBIDDEN, SERVER_RIGHTS, GroupRights, group_limit_reason
from .metrics import GatewayMetrics, NullMetrics
from .pipeline import Rejected
from .ratelimit import TokenBucket
from .replayer import Replayer
from .store import Accepted, Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)


_ack_failed = Throttled(logger, "ack writes failed %d times")
_group_failed = Throttled(logger, "group changes failed %d times")
_closed_refused = Throttled(
    logger, "%d connections closed (1008) for sending too many refused frames", level=logging.INFO
)


class WebSocketLike(Protocol):
    """The part of ``websockets.asyncio.server.ServerConnection`` a session uses."""

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    def send_now(self, message: str) -> bool:
        """Write ``message`` without waiting; False when it must wait (then use ``send``)."""
        ...

    def ping_now(self) -> bool:
        """Write a WebSocket ping without waiting; False when the socket is not open."""
        ...

    def frame_waiter(self) -> asyncio.Future[None] | None:
        """A future done once ``recv`` would not wait; None when it would not now."""
        ...

    @property
    def heard_at(self) -> float:
        """Loop time of the last ping or pong from the client (0: none yet)."""
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

    async def follow(self, session: Session, groups: Collection[int]) -> None:
        """Live posts of these large groups go to ``session`` from now on."""
        ...

    def unfollow(self, session: Session, groups: Collection[int]) -> None:
        """No more live posts of these groups to ``session``."""
        ...

    async def membership_changed(
        self, group: int, changed: Collection[UserId], *, was_large: bool, left: bool = False
    ) -> None:
        """``changed`` joined (or, ``left``, left) ``group``: connections follow its
        stream, or stop."""
        ...


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits (see :class:`im_gateway.config.GatewayConfig`)."""

    send_queue: int = 1024
    replay_page: int = 200
    held_max: int = 1024
    fill_delay: float = 0.05
    """Seconds a hole may wait for its push before it is read from the inbox."""
    replay_budget: int = 20_000
    """Inbox entries per minute a connection may ask to be replayed (type 14); 0: no limit."""
    max_refused: int = 100
    """Refused frames per minute before the connection is closed (1008); 0: never."""
    idle_timeout: float = 300.0
    rate: float = 200.0
    burst: float = 400.0
    max_content: int = frames.DEFAULT_MAX_CONTENT
    close_timeout: float = 3.0


class Session:
    """A user's WebSocket connection on this gateway."""

    __slots__ = (
        "_ack_target",
        "_acking",
        "_bucket",
        "_closing",
        "_draining",
        "_group_acks",
        "_group_rights",
        "_handling",
        "_limits",
        "_loop",
        "_metrics",
        "_pinged_at",
        "_queue",
        "_refused",
        "_replayer",
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
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """``slots`` bounds the store calls in flight across all sessions (replays, acks,
        group changes), so thousands of sockets reconnecting at once queue here instead
        of opening thousands of Redis connections. ``group_rights``: which type 12/13
        frames this connection may send (the gateway passes its ``--group-join``;
        by default none: membership is the server's)."""
        self._group_rights = group_rights
        self._metrics = metrics = metrics if metrics is not None else NullMetrics()
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
        self._draining = False
        now = self._loop.time()
        self._bucket = TokenBucket(limits.rate, limits.burst, now)
        self._refused: TokenBucket | None = None  # made on the first refused frame
        self._replayer = Replayer(
            self,
            user,
            store=store,
            slots=self._slots,
            replay_page=limits.replay_page,
            held_max=limits.held_max,
            fill_delay=limits.fill_delay,
            replay_budget=limits.replay_budget,
            metrics=metrics,
        )
        self._ack_target: int | None = None
        self._group_acks: dict[int, int] | None = None
        """Group stream acks waiting to be written: group -> the highest position."""
        self._acking: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None
        self.last_seen = self._loop.time()
        """Loop time of the last frame from the client (for the idle and ping sweep)."""
        self._pinged_at = 0.0
        """Loop time of the last keepalive ping (0: none yet)."""
        self._handling = False  # run() is handling a frame: receive_now() must defer

    # --- writing ----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once the session is closing: nothing more is queued."""
        return self._closing

    @property
    def replaying(self) -> bool:
        """True while a replay or a hole fill is running or queued."""
        return self._replayer.replaying

    @property
    def position(self) -> int:
        """Everything up to this inbox position is delivered on this connection."""
        return self._replayer.position

    @property
    def queued(self) -> int:
        """Frames waiting in the send queue."""
        return len(self._queue) if self._queue else 0

    @property
    def settled_down(self) -> bool:
        """No frame is being handled and nothing waits in the send queue (for a drain)."""
        return not self._handling and self._writer is None

    def drain(self) -> None:
        """The gateway is going away: take no more frames from this client (acks still
        count), while the answers to those already taken go out. The client resends what
        is unanswered once the socket closes (1012) and it is connected elsewhere."""
        self._draining = True

    def _ignore(self, data: str | bytes) -> None:
        """A frame that came during a drain: not taken (an ack is still recorded)."""
        try:
            frame = frames.parse(data, max_content=self._limits.max_content)
        except FrameError:
            return
        if isinstance(frame, frames.Ack):
            self._ack(frame.upto)

    def push(self, text: str) -> bool:
        """Queue a frame for the client; False when the session is closing or overflowed."""
        if self._closing:
            return False
        self._metrics.frame_out(text)
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
            self._spawn(self.close_socket(CLOSE_INTERNAL, "internal error"))
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

    async def close_socket(self, code: int, reason: str, within: float | None = None) -> None:
        """Close the WebSocket; abort the TCP connection if the client does not take part.

        (A peer that does not read never lets the close frame drain, and
        ``websockets`` would wait for it without a deadline.)
        """
        try:
            async with asyncio.timeout(within or self._limits.close_timeout):
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

    async def room(self) -> None:
        """Wait until the send queue is empty (replay pages are flow-controlled)."""
        while self._writer is not None and not self._closing:
            await asyncio.shield(self._writer)

    # --- answers from the pipeline (the Caller protocol) ---------------------------------

    def settled(self, result: Accepted | Rejected) -> None:
        """This connection's message is stored (type 10) or refused (type 99)."""
        if isinstance(result, Rejected):
            self._metrics.refused(result.code)
            self.push(frames.encode_error(result.code, result.reason, result.client_id))
        else:
            self.push(
                frames.encode_accepted(result.client_id, result.message.id, result.message.time)
            )

    def failed(self, code: str, reason: str, client_id: str) -> None:
        """This connection's message could not be stored: it may send it again."""
        self._metrics.refused(code)
        self.push(frames.encode_error(code, reason, client_id))

    def disconnect(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` (the server API's ``disconnect``)."""
        if self._closing:
            return
        self._closing = True
        self._queue = None
        self._spawn(self.close_socket(code, reason))

    # --- positions and replays (the Replayer's) ----------------------------------------

    def deliver(self, pos: int, text: str) -> None:
        """A pushed message at inbox position ``pos``: sent in order, repeats dropped."""
        self._replayer.live(pos, text)

    def own(self, pos: int) -> None:
        """This connection sent the message at ``pos`` (it got type 10, not the message)."""
        self._replayer.own(pos)

    def deliver_group(self, group: int, pos: int, text: str) -> None:
        """A post at ``pos`` in large group ``group``'s stream: in order, repeats dropped."""
        self._replayer.live_group(group, pos, text)

    def own_group(self, group: int, pos: int) -> None:
        """This connection sent the post at ``pos`` in ``group``'s stream."""
        self._replayer.live_group(group, pos, "", own=True)

    def regroup(self, left: int | None = None) -> None:
        """The user's large groups may have changed (a join or leave): read them again;
        ``left``: the user left that group (no more of its posts, from now)."""
        self._replayer.regroup(left)

    async def follow(self, groups: Collection[int]) -> None:
        """(The replayer's) live posts of these groups to this connection from now on."""
        await self._router.follow(self, groups)

    def unfollow(self, groups: Collection[int]) -> None:
        """(The replayer's) no more live posts of these groups."""
        self._router.unfollow(self, groups)

    def start(self) -> None:
        """Begin the connect replay: after the acknowledged position, with an end marker."""
        self._replayer.start()

    def catch_up(self, end: int | None = None) -> None:
        """Read the inbox to its end (``end``, when known) unless this connection has it
        (after a hub link came back or was lost: pushes may be missed)."""
        self._replayer.catch_up(end)

    def rebase(self) -> None:
        """The store lost its data and numbers inboxes from 1 again: start over from 0."""
        self._replayer.rebase()

    # --- reading ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read and handle frames until the client leaves (or :func:`sweep_idle` closes it)."""
        loop = self._loop
        try:
            while True:
                waiter = self._ws.frame_waiter()
                if waiter is not None:
                    await waiter  # (cheaper to hold while idle than a waiting recv())
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
        if self._draining:
            self._ignore(text)
            return True
        now = self._loop.time()
        try:
            frame = frames.parse(text, max_content=self._limits.max_content)
        except FrameError as exc:
            self._metrics.frame_in(None)
            self.last_seen = now
            self._bucket.allow(now)  # a refused frame counts toward the rate too
            self._refuse(exc, now)
            return True
        if isinstance(frame, frames.SendMessage):
            if self._router.busy:
                return False
        elif not isinstance(frame, (frames.Heartbeat, frames.Ack)):
            return False
        self._metrics.frame_in(frame)
        self.last_seen = now
        try:
            self._check_rate(frame, now)
            self._act_now(frame)
        except FrameError as exc:
            self._refuse(exc, now)
        except Exception:
            logger.exception("handling a frame from user %s failed; closing", self.user)
            self._closing = True
            self._queue = None
            self._spawn(self.close_socket(CLOSE_INTERNAL, "internal error"))
        return True

    def _refuse(self, exc: FrameError, now: float) -> None:
        """Answer a refused frame (type 99); close a client that keeps sending them."""
        if self._closing:
            return
        self._metrics.refused(exc.code)
        limit = self._limits.max_refused
        if limit and exc.code != frames.RATE_LIMITED:  # a fast client is slowed, not closed
            if self._refused is None:
                self._refused = TokenBucket(limit / 60.0, limit, now)
            allowed = self._refused.allow(now)
        else:
            allowed = True
        if not allowed:
            _closed_refused.hit()
            self._closing = True
            self._queue = None
            self._spawn(self.close_socket(CLOSE_POLICY, "too many refused frames"))
            return
        self.push(frames.encode_error(exc.code, exc.message, exc.frame_id))

    def keepalive(self, now: float, interval: float, pong_timeout: float) -> None:
        """Ping a client that sent nothing for ``interval`` seconds; close it (1011) when
        nothing (no pong, no frame) came ``pong_timeout`` seconds after the ping. Called
        by :func:`sweep_idle`, so the gateway needs no keepalive task per connection, and
        no future per ping: a pong (or a ping of the client's) shows in ``heard_at``."""
        if self._closing or interval <= 0:
            return
        seen = max(self.last_seen, self._ws.heard_at)
        pinged = self._pinged_at
        if pinged > seen:  # no answer yet
            if pong_timeout > 0 and now - pinged > pong_timeout:
                logger.info("user %s: no pong for %ss, closing", self.user, pong_timeout)
                self._closing = True
                self._queue = None
                self._spawn(self.close_socket(CLOSE_INTERNAL, "keepalive ping timeout"))
            return
        if now - max(seen, pinged) >= interval and self._ws.ping_now():
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
        if self._draining:
            self._ignore(data)
            return
        allowed = self._bucket.allow(now)  # every frame counts, valid or not
        try:
            frame = frames.parse(data, max_content=self._limits.max_content)
            self._metrics.frame_in(frame)
            if not allowed:
                raise FrameError(
                    frames.RATE_LIMITED, "too many frames; slow down", getattr(frame, "id", None)
                )
            if isinstance(frame, frames.SendMessage):
                if not self._router.submit_nowait(self, frame):
                    await self._router.submit(self, frame)
            elif isinstance(frame, frames.GroupChange):
                await self._group_change(frame)
            elif isinstance(frame, frames.Replay):
                if frame.group is not None and not self._replayer.follows(frame.group):
                    raise FrameError(frames.NOT_MEMBER, f"you are not in large group {frame.group}")
                if not self._replayer.ask(frame.after, frame.group):
                    raise FrameError(
                        frames.RATE_LIMITED, "a replay is running; ask again after its end marker"
                    )
            else:
                self._act_now(frame)
        except FrameError as exc:
            self._refuse(exc, now)

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
        elif frame.group is None:
            self._ack(frame.upto)
        else:
            self._ack_group(frame.group, frame.upto)

    async def _group_change(self, frame: frames.GroupChange) -> None:
        refusal = self._group_rights.refusal(frame.type, frame.to)
        if refusal is not None:
            raise FrameError(FORBIDDEN, refusal, frame.id)
        try:
            async with self._slots:
                was_large = await self._store.is_large(frame.to)
                if frame.type == frames.JOIN:
                    changed = await self._store.join(frame.to, self.user)
                else:
                    changed = await self._store.leave(frame.to, self.user)
        except asyncio.CancelledError:
            raise
        except GroupLimitError as exc:
            raise FrameError(FORBIDDEN, group_limit_reason(exc), frame.id) from exc
        except Exception as exc:
            _group_failed.hit(exc=exc)
            raise FrameError(frames.INTERNAL, "storage unavailable; retry", frame.id) from exc
        msg_id, now_ms = self._router.new_id()
        self.push(frames.encode_accepted(frame.id, msg_id, now_ms))
        try:  # connections follow the group's stream, or stop
            mine = [self.user] if changed else []
            await self._router.membership_changed(
                frame.to, mine, was_large=was_large, left=frame.type != frames.JOIN
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _group_failed.hit(exc=exc)

    def _ack(self, upto: int) -> None:
        """Coalesced: at most one ack write in flight per session, the highest wins (the
        store never moves a position back, nor past the inbox's end)."""
        if self._ack_target is None or upto > self._ack_target:
            self._ack_target = upto
        if self._acking is None:
            self._acking = self._loop.create_task(self._write_acks())

    def _ack_group(self, group: int, upto: int) -> None:
        """As :meth:`_ack`, per large group's stream (the store keeps a non-member's
        nothing, and never moves a position past the stream's end)."""
        acks = self._group_acks
        if acks is None:
            acks = self._group_acks = {}
        if group in acks or len(acks) < self._limits.held_max:
            acks[group] = max(acks.get(group, 0), upto)
        if self._acking is None:
            self._acking = self._loop.create_task(self._write_acks())

    async def _write_acks(self) -> None:
        try:
            while self._ack_target is not None or self._group_acks:
                seq, self._ack_target = self._ack_target, None
                groups, self._group_acks = self._group_acks, None
                try:
                    async with self._slots:
                        if seq is not None:
                            await self._store.ack(self.user, seq)
                        for group, upto in (groups or {}).items():
                            await self._store.ack_group(self.user, group, upto)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    _ack_failed.hit(exc=exc)
                    self._metrics.refused(frames.INTERNAL)
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
        await self._replayer.close()
        await cancel_and_wait(self._writer, self._acking, *(self._tasks or ()))


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
                if not session.expire_if_idle(now):
                    session.keepalive(now, ping_interval, ping_timeout)
            except Exception:
                logger.exception("keepalive of user %s failed", session.user)
