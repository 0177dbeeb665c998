"""One :class:`Session` per WebSocket connection: reading frames, answering them, limits.

A session owns the two halves of its connection's output: a
:class:`~im_gateway.writer.Writer` (the socket's send queue, and the one place the
socket is closed) and a :class:`~im_gateway.replayer.Replayer` (where this connection
stands in its inbox, around the pure :class:`~im_gateway.cursor.Cursor`: it fills holes
from the inbox and runs the connect replay and the replays the client asks for, type
14). The fan-out's pushes go straight to the replayer, which writes to the writer: so
each connection sees its messages in order and without holes, and a client may always
acknowledge the highest seq it has seen.

Reading. Every frame, valid or not, takes a token from the rate limit; frames are
parsed by :mod:`im_gateway.frames` and handed to the pipeline; errors go back as type 99
and the socket stays open, until a client has had ``max_refused`` frames refused in a
minute: then it is closed with 1008 (policy violation). Frames that need no await
(messages while the pipeline has room, heartbeats, acks) are handled by
:meth:`Session.receive_now` straight from the connection's data callback: no reader task
wakes up per frame. The rest (group changes and replay requests wait for the store) go
through :meth:`Session.run`, and so does every frame behind them until it has caught up,
which keeps a client's frames in order. Upkeep: see :mod:`im_gateway.keepalive`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Protocol

from websockets.exceptions import ConnectionClosed

from transmit_hub.types import MessageId, UserId

from . import frames
from .acks import AckRounds, Acks
from .close_codes import CLOSE_INTERNAL, CLOSE_POLICY
from .errors import FrameError
from .group_changes import Members, change_group
from .group_policy import SERVER_RIGHTS, GroupRights
from .keepalive import upkeep
from .metrics import GatewayMetrics, NullMetrics
from .pipeline import Caller, Rejected
from .ratelimit import TokenBucket
from .replayer import Replayer
from .session_limits import SessionLimits
from .store import Accepted, Store, Submission
from .tasks import cancel_and_wait
from .throttle import Throttled
from .writer import WebSocketLike, Writer

logger = logging.getLogger(__name__)

_closed_refused = Throttled(
    logger, "%d connections closed (1008) for sending too many refused frames", level=logging.INFO
)


class Submit(Protocol):
    """What a session needs of the gateway's :class:`~im_gateway.pipeline.Pipeline`."""

    @property
    def busy(self) -> bool:
        """True while :meth:`offer` would refuse (the queue is full)."""
        ...

    def new_id(self) -> tuple[MessageId, int]:
        """A fresh message id and the server time in ms."""
        ...

    def submission(self, sender: UserId, frame: frames.SendMessage) -> Submission:
        """A submission for ``frame`` from ``sender``, with a fresh id and the time now."""
        ...

    def offer(self, caller: Caller, submission: Submission) -> bool:
        """Queue a submission at once; False when the queue is full."""
        ...

    async def put(self, caller: Caller, submission: Submission) -> None:
        """Queue a submission (waits only while the queue is full)."""
        ...


class Following(Protocol):
    """Which large groups' live posts a session gets
    (:class:`~im_gateway.following.Following`)."""

    async def follow(self, connection: Session, groups: Collection[int]) -> None:
        """Live posts of these large groups go to ``connection`` from now on."""
        ...

    def unfollow(self, connection: Session, groups: Collection[int]) -> None:
        """No more live posts of these groups to ``connection``."""
        ...


class Groups(Members, Protocol):
    """What a session needs of the gateway's :class:`~im_gateway.fanout.Fanout`: its
    large groups' live posts, and telling other connections of a join or leave."""

    @property
    def following(self) -> Following: ...


class Session:
    """A user's WebSocket connection on this gateway."""

    __slots__ = (
        "_acks",
        "_bucket",
        "_draining",
        "_group_rights",
        "_groups",
        "_handling",
        "_limits",
        "_loop",
        "_metrics",
        "_out",
        "_pipeline",
        "_refused",
        "_replayer",
        "_slots",
        "_store",
        "_ws",
        "last_seen",
        "pinged_at",
        "upkeep_at",
        "user",
    )

    def __init__(
        self,
        ws: WebSocketLike,
        user: UserId,
        *,
        store: Store,
        pipeline: Submit,
        groups: Groups,
        limits: SessionLimits,
        slots: asyncio.Semaphore | None = None,
        group_rights: GroupRights = SERVER_RIGHTS,
        lists_groups: bool = False,
        metrics: GatewayMetrics | None = None,
        ack_rounds: AckRounds | None = None,
    ) -> None:
        """``slots`` bounds the store calls in flight across all sessions (replays, acks,
        group changes): a reconnect storm queues here, not in Redis. ``group_rights``:
        the type 12/13 frames it may send (``--group-join``; by default none).
        ``lists_groups``: ``?groups=1``. ``ack_rounds``: the gateway's (``--ack-linger``)."""
        self._group_rights = group_rights
        self._metrics = metrics = metrics if metrics is not None else NullMetrics()
        self._ws = ws
        self._slots = slots if slots is not None else asyncio.Semaphore(16)
        self.user = user
        self._store = store
        self._pipeline = pipeline
        self._groups = groups
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._draining = False
        now = self._loop.time()
        self._bucket = TokenBucket(limits.rate, limits.burst, now)
        self._refused: TokenBucket | None = None  # made by the first refused frame
        self._out = out = Writer(
            ws,
            user,
            send_queue=limits.send_queue,
            close_timeout=limits.close_timeout,
            metrics=metrics,
        )
        self._replayer = Replayer(
            out,
            user,
            store=store,
            slots=self._slots,
            follower=self,
            replay_page=limits.replay_page,
            held_max=limits.held_max,
            fill_delay=limits.fill_delay,
            replay_budget=limits.replay_budget,
            lists_groups=lists_groups,
            metrics=metrics,
            ack_rounds=ack_rounds,
        )
        self._acks = Acks(
            user,
            store=store,
            slots=self._slots,
            held_max=limits.held_max,
            out=out,
            metrics=metrics,
            rounds=ack_rounds,
        )
        self.last_seen = self._loop.time()
        """Loop time of the last frame from the client (for the idle and ping sweep)."""
        self.pinged_at = 0.0
        """Loop time of the last keepalive ping (0: none yet)."""
        self.upkeep_at = 0.0
        """Loop time before which the idle sweep has nothing to do here."""
        self._handling = False  # run() is handling a frame: receive_now() must defer

    # --- the fan-out's calls (its Connection protocol): the replayer's and the writer's ---
    # (methods, not attributes bound per session: about 0.7 KB less per idle connection)

    def deliver(self, pos: int, text: str) -> None:
        self._replayer.deliver(pos, text)

    def own(self, pos: int) -> None:
        self._replayer.own(pos)

    def deliver_group(self, group: int, pos: int, text: str, *, own: bool = False) -> None:
        self._replayer.deliver_group(group, pos, text, own=own)

    def own_group(self, group: int, pos: int) -> None:
        self._replayer.own_group(group, pos)

    def regroup(self, left: int | None = None) -> None:
        self._replayer.regroup(left)

    def catch_up(self, end: int | None = None) -> None:
        self._replayer.catch_up(end)

    @property
    def follows_groups(self) -> bool:
        return self._replayer.follows_groups

    def rebase(self) -> None:
        self._replayer.rebase()

    def start(self) -> None:
        """Begin the connect replay: after the acknowledged position, with an end marker."""
        self._replayer.start()

    async def close_socket(self, code: int, reason: str, within: float | None = None) -> None:
        await self._out.close_socket(code, reason, within)

    def push(self, text: str) -> bool:
        """Queue a frame for the client; False when the session is closing or overflowed."""
        return self._out.push(text)

    async def follow_groups(self, groups: Collection[int]) -> None:
        """Live posts of these large groups come to this session (for the replayer)."""
        await self._groups.following.follow(self, groups)

    def unfollow_groups(self, groups: Collection[int]) -> None:
        self._groups.following.unfollow(self, groups)

    # --- state ----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True once the session is closing: nothing more is queued."""
        return self._out.closing

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
        return self._out.queued

    @property
    def settled_down(self) -> bool:
        """No frame is being handled and nothing waits in the send queue (for a drain)."""
        return not self._handling and self._out.idle

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
            self._acks.ack(frame.upto)

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
        if not self._out.closing:
            self._out.close(code, reason)

    # --- reading ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read and handle frames until the client leaves (or the idle sweep closes it)."""
        loop = self._loop
        try:
            while True:
                await self._ws.wait_frame()  # idle: one future, not recv()'s coroutines
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
        store or on a full pipeline queue) or :meth:`run` is still busy with an earlier
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
            if self._pipeline.busy:
                return False
        elif not isinstance(frame, (frames.Heartbeat, frames.Ack)):
            return False
        self._metrics.frame_in(frame)
        self.last_seen = now
        try:
            if not self._bucket.allow(now):
                raise frames.too_fast(frame)
            self._act_now(frame)
        except FrameError as exc:
            self._refuse(exc, now)
        except Exception:
            logger.exception("handling a frame from user %s failed; closing", self.user)
            self._out.close(CLOSE_INTERNAL, "internal error")
        return True

    def _refuse(self, exc: FrameError, now: float) -> None:
        """Answer a refused frame (type 99); close a client that keeps sending them."""
        if self._out.closing:
            return
        self._metrics.refused(exc.code)
        limit = self._limits.max_refused
        if limit and exc.code != frames.RATE_LIMITED:  # a fast client is slowed, not closed
            if self._refused is None:  # full until the first refusal: made then
                self._refused = TokenBucket(limit / 60.0, limit, now)
            if not self._refused.allow(now):
                _closed_refused.hit()
                self._out.close(CLOSE_POLICY, "too many refused frames")
                return
        self.push(frames.encode_error(exc.code, exc.message, exc.frame_id))

    def upkeep(self, now: float, interval: float, pong_timeout: float) -> float:
        """The idle sweep's visit: close the socket when no frame came for
        ``idle_timeout`` seconds (1000), ping a client quiet for ``interval`` seconds,
        close it (1011) when its pong is ``pong_timeout`` late; when to look again
        (:func:`~im_gateway.keepalive.upkeep`: no task nor future per connection)."""
        return upkeep(
            self, self._ws, self._out, now, self._limits.idle_timeout, interval, pong_timeout
        )

    async def _handle(self, data: str | bytes, now: float) -> None:
        if self._draining:
            self._ignore(data)
            return
        allowed = self._bucket.allow(now)  # every frame counts, valid or not
        try:
            frame = frames.parse(data, max_content=self._limits.max_content)
            self._metrics.frame_in(frame)
            if not allowed:
                raise frames.too_fast(frame)
            if isinstance(frame, frames.SendMessage):
                submission = self._pipeline.submission(self.user, frame)
                if not self._pipeline.offer(self, submission):
                    await self._pipeline.put(self, submission)
            elif isinstance(frame, frames.GroupChange):
                await change_group(
                    frame,
                    self.user,
                    rights=self._group_rights,
                    store=self._store,
                    slots=self._slots,
                    ids=self._pipeline,
                    groups=self._groups,
                    push=self._out.push,
                )
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

    def _act_now(self, frame: frames.SendMessage | frames.Heartbeat | frames.Ack) -> None:
        """The frames handled without waiting (a message only while the pipeline has room)."""
        if isinstance(frame, frames.SendMessage):
            if not self._pipeline.offer(self, self._pipeline.submission(self.user, frame)):
                raise FrameError(frames.INTERNAL, "gateway overloaded; send again", frame.id)
        elif isinstance(frame, frames.Heartbeat):
            self.push(frames.HEARTBEAT_REPLY)
        elif frame.group is None:
            self._acks.ack(frame.upto)
        else:
            self._acks.ack_group(frame.group, frame.upto)

    # --- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        """Stop replay, writer and ack tasks; idempotent. The socket is closed by its owner."""
        self._out.stop()
        await self._acks.settle()
        await self._replayer.close()
        await cancel_and_wait(self._acks.task, *self._out.tasks())
