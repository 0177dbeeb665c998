"""The pipeline: messages in, stored in batches, callers answered, results handed on.

Callers are anything that implements :class:`Caller`: a client's
:class:`~im_gateway.sessions.Session` (its answers are type 10 and 99 frames) or a call
of the server API (its answer completes an HTTP response). The pipeline knows nothing of
sockets or the hub: each stored message goes to a :class:`Route` (the gateway's
:class:`~im_gateway.fanout.Fanout`), with the caller it came from.

Batches. Callers put submissions (with a fresh message id and the server time) into one
bounded queue. A single worker takes everything available (up to ``batch_size``) and
stores it with one :meth:`Store.submit` call. Full policy: a caller whose message finds
the queue full waits (a session stops reading its socket, which pushes back on that
client); nothing is dropped. One worker keeps each sender's order.

Batching. A message that finds the worker idle is stored at once (a quiet gateway adds
no latency), and whatever arrives while a store call is out makes the next batch.
``linger`` (``--batch-linger``, 3 ms in the gateway's settings, 0 in this class) adds a
wait: while traffic flows (the last batch started less than ``busy_window`` seconds ago)
and at least one more message is expected within the linger at the rate seen so far
(:class:`Pace`), the worker waits ``linger`` seconds before taking a small batch, trading
latency for fewer Redis round trips and hub frames per message. Measured on 2 cores
(bench/RESULTS.md sections 14 and 20): at 2,000 msgs/s, no linger cost 20% more server
CPU per message and, with the machine then near saturation, a worse p50 and p99, so the
gateway keeps 3 ms; at a few hundred msgs/s a linger gathers less than one message and
only adds its wait, so it is skipped.

Retry. A batch whose store call fails is tried once more (a timeout: it may have been
stored with its reply lost). That is safe: a batch is stored atomically and
deduplicated by client id, and a duplicate comes back with its first recipients, so it
is routed again like a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from transmit_hub import timeline
from transmit_hub.types import MessageId, UserId, new_message

from . import frames
from .faults import Faults
from .ids import MessageIds
from .metrics import GatewayMetrics, NullMetrics
from .store import Accepted, Refusal, Refused, Store, Submission
from .store.contract import new_submission
from .throttle import Throttled

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A submission the store refused, in the wire's words: a type 99 ``code`` and a
    ``reason`` for the client (:func:`rejected` makes one from the store's answer)."""

    client_id: str
    code: str
    reason: str


def rejected(refused: Refused, sub: Submission) -> Rejected:
    """The store's refusal of ``sub`` as the client hears it."""
    why = refused.why
    if why is Refusal.NOT_MEMBER:
        return Rejected(sub.client_id, frames.NOT_MEMBER, f"you are not in group {sub.message.to}")
    if why is Refusal.UNENCODABLE:
        return Rejected(sub.client_id, frames.BAD_REQUEST, "content is not valid Unicode")
    if why is Refusal.UNAVAILABLE:
        return Rejected(sub.client_id, frames.INTERNAL, "storage unavailable; send again")
    return Rejected(sub.client_id, frames.INTERNAL, "not replicated; send again")


class Caller(Protocol):
    """Who submitted a message, and hears how it went."""

    def settled(self, result: Accepted | Rejected) -> None:
        """The message is stored for every recipient (or refused, with a code)."""
        ...

    def failed(self, code: str, reason: str, client_id: str) -> None:
        """The message could not be stored (``internal``): the caller may send it again."""
        ...


class Route(Protocol):
    """Where stored messages go next (to local sockets and the hub)."""

    def route(self, accepted: Accepted, caller: object) -> None: ...


_Item = tuple[Caller, Submission]


@dataclass(slots=True)
class Pace:
    """The rate the worker has seen while traffic flows: moving averages (1/8 each) of the
    batch sizes and of the time between batch starts. A batch lingers only when at this
    rate at least one more message is expected within the linger."""

    sizes: float = 0.0
    gaps: float = 0.0

    def observe(self, size: int, gap: float) -> None:
        """The last batch had ``size`` messages and started ``gap`` seconds before this one."""
        self.sizes += (size - self.sizes) / 8
        self.gaps += (gap - self.gaps) / 8

    def reset(self) -> None:
        """Traffic stopped: start over."""
        self.sizes = self.gaps = 0.0

    def worth(self, linger: float) -> bool:
        """At least one message expected within ``linger`` seconds (rate x linger >= 1)."""
        return self.sizes * linger >= self.gaps


def _take(queue: deque[_Item], batch: list[_Item], limit: int) -> None:
    """Move what ``queue`` holds into ``batch``, up to ``limit`` items in all."""
    if len(batch) + len(queue) <= limit:
        batch += queue
        queue.clear()
        return
    while len(batch) < limit:
        batch.append(queue.popleft())


class Pipeline:
    """Batches submissions into the store, answers their callers, routes what is stored."""

    def __init__(
        self,
        *,
        store: Store,
        route: Route,
        queue_size: int = 10_000,
        batch_size: int = 256,
        linger: float = 0.0,
        busy_window: float = 0.02,
        faults: Faults | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._route = route
        self._batch_size = batch_size
        self._linger = linger
        self._busy_window = busy_window
        self._faults = faults
        # A plain deque (asyncio.Queue costs several calls per item): the worker waits on
        # _wakeup when it is empty, callers of put() on _room while it is full.
        self._queue: deque[_Item] = deque()
        self._queue_size = queue_size
        self._wakeup: asyncio.Future[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._ids = MessageIds()
        self._task: asyncio.Task[None] | None = None
        self._store_failed = Throttled(logger, "storing a batch failed %d times; retrying once")
        self._batch_failed = Throttled(
            logger,
            "storing a batch failed again %d times; senders told to send again",
            level=logging.ERROR,
        )
        self._not_replicated = Throttled(
            logger,
            "%d messages not confirmed on --redis-wait-replicas replicas within "
            "--redis-wait-timeout; senders told to send again",
        )
        self._route_failed = Throttled(
            logger, "answering or routing a stored message failed %d times", level=logging.ERROR
        )
        self._closed = False
        self._working = False
        self.batches = 0
        """Store round trips made by the worker (for tests and stats)."""
        self.submitted = 0
        """Submissions handed to the store."""

    # --- callers ------------------------------------------------------------------------

    def new_id(self) -> tuple[MessageId, int]:
        """A fresh system-wide unique message id and the server time in ms."""
        return self._ids.next()

    @property
    def busy(self) -> bool:
        """True while the queue is full (:meth:`offer` would refuse)."""
        return len(self._queue) >= self._queue_size

    @property
    def queued(self) -> int:
        """Submissions waiting for the worker."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch in the works: every caller has been answered."""
        return not self._working and not self._queue

    def submission(
        self, sender: UserId, frame: frames.SendMessage, *, check_member: bool = True
    ) -> Submission:
        """A submission for ``frame`` from ``sender``, with a fresh id and the time now."""
        msg_id, now_ms = self._ids.next()
        if timeline.ON:
            timeline.stamp("read", (msg_id,))
        message = new_message(
            msg_id, sender, frame.to, frame.type, frame.content_type, now_ms, frame.content
        )
        return new_submission(frame.id, message, check_member)

    def offer(self, caller: Caller, submission: Submission) -> bool:
        """Queue a submission; False (nothing queued) when the queue is full."""
        queue = self._queue
        if len(queue) >= self._queue_size:
            return False
        queue.append((caller, submission))
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)
        return True

    async def put(self, caller: Caller, submission: Submission) -> None:
        """Queue a submission; waits while the queue is full."""
        while not self.offer(caller, submission):
            self._room.clear()
            await self._room.wait()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batch worker."""
        self._task = asyncio.create_task(self._batch_loop(), name="pipeline-batches")

    async def close(self) -> None:
        """Stop the worker (what is still queued is answered ``internal``); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            caller, sub = self._queue.popleft()
            caller.failed(frames.INTERNAL, "gateway stopping; send again", sub.client_id)
        self._room.set()  # as asyncio.Queue did: callers waiting in put() are let go

    # --- the worker ---------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        queue = self._queue
        limit = self._batch_size
        loop = asyncio.get_running_loop()
        last_start = -1e9
        last_size = 0
        pace = Pace()
        room = self._room
        while True:
            if not queue:
                self._wakeup = wakeup = loop.create_future()
                await wakeup
            batch: list[_Item] = []
            self._working = True
            _take(queue, batch, limit)
            room.set()
            now = loop.time()
            if now - last_start < self._busy_window:
                pace.observe(last_size, now - last_start)
                linger = len(batch) < limit and pace.worth(self._linger)
            else:
                pace.reset()
                linger = False
            last_start = now
            try:
                if linger and self._linger > 0:
                    await asyncio.sleep(self._linger)  # traffic flows: let more join
                    _take(queue, batch, limit)
                    room.set()
                last_size = len(batch)
                await self._process(batch)
            except asyncio.CancelledError:
                for caller, sub in batch:
                    caller.failed(frames.INTERNAL, "gateway stopping; send again", sub.client_id)
                raise
            except Exception as exc:
                self._batch_failed.hit(exc=exc)
                for caller, sub in batch:
                    caller.failed(frames.INTERNAL, "storage unavailable; send again", sub.client_id)
            finally:
                self._working = False

    async def _process(self, batch: Sequence[_Item]) -> None:
        submissions = [sub for _, sub in batch]
        if timeline.ON:
            timeline.stamp("batched", [sub.message.id for sub in submissions])
        try:
            results = await self._store.submit(submissions)
        except Exception as exc:
            self._store_failed.hit(exc=exc)
            results = await self._store.submit(submissions)
        if timeline.ON:
            timeline.stamp("stored", [sub.message.id for sub in submissions])
        if self._faults is not None:
            self._faults.stored()
        self.batches += 1
        self._metrics.stored(len(batch), results)
        self.submitted += len(batch)
        late = 0
        route = self._route
        for (caller, sub), result in zip(batch, results, strict=True):
            try:
                if isinstance(result, Refused):
                    late += result.why is Refusal.NOT_REPLICATED
                    caller.settled(rejected(result, sub))
                    continue
                caller.settled(result)
                # A duplicate too: its first push may have died with the gateway that
                # stored it.
                route.route(result, caller)
            except Exception as exc:
                self._route_failed.hit(exc=exc)
        if late:
            self._not_replicated.hit(late)
