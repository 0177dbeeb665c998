"""The router: client message frames in, acks and deliveries out, in batches.

Pipeline. Sessions put accepted frames (with a fresh message id and the server time)
into one bounded queue. A single worker takes everything available (up to
``batch_size``) and stores it with one :meth:`Store.submit` call, so an idle gateway
adds no latency and a busy one shares each Redis round trip among many frames. Full
policy: a session whose frame finds the queue full waits (it stops reading its
socket, which pushes back on that client); nothing is dropped. One worker keeps each
sender's messages in order.

Linger. At moderate load frames arrive one at a time, and each would pay a Redis
round trip, a hub frame and several wake-ups on every hop for itself alone (about
four times the CPU of a message in a full batch). So while traffic flows (the last
batch started less than ``busy_window`` seconds ago) the worker waits ``linger``
seconds before taking a small batch, letting frames from many clients share it. An
idle gateway (no batch lately) stores a frame at once: no added latency.

Then, per stored message: the sender's connection gets the ack (type 10), and its
position in the sender's inbox (without a frame: it has the message); every recipient's
sockets on this gateway (the sender's other devices included) get the message directly;
the recipients' other gateways get one :class:`~transmit_hub.types.TransmitMap` through
the hub link. A duplicate (a resend with the same client id, after a gateway died
between storing and answering, or a store reply that was lost) is answered with the
first message's id and pushed again, with its first positions: receivers drop what they
have. When the link's buffer is full the push is skipped (logged, counted): the message
is already in every inbox, and a receiving session that sees the next position fills
the hole from there.

From the hub: deliveries are checked as strictly as client frames
(:mod:`im_gateway.inbound`; a bad one is dropped and counted, the rest go on) and go to
the named users' local sockets; undeliverable notices clear the stale presence they
name; after each (re)connect every local session reads its inbox to the end, so pushes
missed while the hub was away arrive live even when nothing follows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from transmit_hub.link import Delivered, LinkDown, LinkEvent, LinkUp, NotDelivered
from transmit_hub.types import (
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    UndeliverableReason,
    UserId,
)

from . import frames, inbound
from .faults import Faults
from .ids import MessageIds
from .presence import Presence
from .sessions import Session
from .store import Accepted, Refused, Store, Submission
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

_Item = tuple[Session, Submission]


class Link(Protocol):
    """The part of :class:`transmit_hub.link.HubLink` the router uses."""

    @property
    def connected(self) -> bool: ...

    def send(self, tmap: TransmitMap) -> bool: ...

    def events(self) -> AsyncIterator[LinkEvent]: ...


def _take(queue: asyncio.Queue[_Item], batch: list[_Item], limit: int) -> None:
    """Move what ``queue`` holds into ``batch``, up to ``limit`` items in all."""
    while len(batch) < limit and not queue.empty():
        batch.append(queue.get_nowait())


class Relay:
    """Routes messages between local sessions, the store and the hub link."""

    def __init__(
        self,
        *,
        gateway_id: GatewayId,
        store: Store,
        link: Link,
        queue_size: int = 10_000,
        batch_size: int = 256,
        linger: float = 0.003,
        busy_window: float = 0.02,
        forget_grace: float = 10.0,
        presence: Presence | None = None,
        max_content: int = frames.DEFAULT_MAX_CONTENT,
        faults: Faults | None = None,
    ) -> None:
        """``forget_grace``: seconds after each (re)attach during which the hub's
        "not attached" notices are not acted on. After a hub restart the other gateways
        re-attach one by one; until they have, the hub calls them missing, and clearing
        their (live) presence then would stop pushes to them until their next refresh.
        """
        self.gateway_id = gateway_id
        self._store = store
        self._link = link
        self._batch_size = batch_size
        self._linger = linger
        self._busy_window = busy_window
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._ids = MessageIds()
        self._sessions: dict[UserId, list[Session]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._link_full = Throttled(
            logger, "hub link buffer full: %d pushes skipped (the inboxes hold those messages)"
        )
        self._bad_delivery = Throttled(
            logger, "dropped %d malformed deliveries from the hub (DEBUG logs each)"
        )
        self._store_failed = Throttled(logger, "storing a batch failed %d times; retrying once")
        self._batch_failed = Throttled(
            logger,
            "storing a batch failed again %d times; senders told to send again",
            level=logging.ERROR,
        )
        self._max_content = max_content
        self._faults = faults
        self._forget_grace = forget_grace
        self._presence = presence
        self._linked_at = time.monotonic()
        self._closed = False
        self.batches = 0
        """Store round trips made by the worker (for tests and stats)."""
        self.submitted = 0
        """Frames handed to the store."""

    # --- registry ---------------------------------------------------------------------

    def add(self, session: Session) -> None:
        """Route live messages for ``session.user`` to ``session`` from now on."""
        self._sessions.setdefault(session.user, []).append(session)

    def discard(self, session: Session) -> None:
        """Stop routing to ``session``."""
        sessions = self._sessions.get(session.user)
        if sessions is None:
            return
        with contextlib.suppress(ValueError):
            sessions.remove(session)
        if not sessions:
            del self._sessions[session.user]

    def sessions(self) -> list[Session]:
        """Every local session."""
        return [s for group in self._sessions.values() for s in group]

    @property
    def connections(self) -> int:
        """The number of local sessions."""
        return sum(len(group) for group in self._sessions.values())

    @property
    def queued(self) -> int:
        """Frames waiting for the batch worker."""
        return self._queue.qsize()

    # --- the Router protocol (used by sessions) ---------------------------------------

    def new_id(self) -> tuple[MessageId, int]:
        """A fresh system-wide unique message id and the server time in ms."""
        return self._ids.next()

    @property
    def busy(self) -> bool:
        """True while the queue is full (:meth:`submit_nowait` would refuse)."""
        return self._queue.full()

    def submit_nowait(self, session: Session, frame: frames.SendMessage) -> bool:
        """Queue a message frame; False (nothing queued) when the queue is full."""
        if self._queue.full():
            return False
        self._queue.put_nowait(self._item(session, frame))
        return True

    async def submit(self, session: Session, frame: frames.SendMessage) -> None:
        """Queue a message frame; waits while the queue is full."""
        await self._queue.put(self._item(session, frame))

    def _item(self, session: Session, frame: frames.SendMessage) -> _Item:
        msg_id, now_ms = self._ids.next()
        message = Message(
            id=msg_id,
            sender=session.user,
            to=frame.to,
            type=frame.type,
            content_type=frame.content_type,
            time=now_ms,
            content=frame.content,
        )
        return (session, Submission(client_id=frame.id, message=message))

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batch worker and the link event consumer."""
        self._tasks = [
            asyncio.create_task(self._batch_loop(), name="relay-batches"),
            asyncio.create_task(self._event_loop(), name="relay-link-events"),
        ]

    async def close(self) -> None:
        """Stop the worker (frames still queued are answered ``internal``); idempotent."""
        if self._closed:
            return
        self._closed = True
        await cancel_and_wait(*self._tasks)
        while not self._queue.empty():
            session, sub = self._queue.get_nowait()
            session.push(
                frames.encode_error(frames.INTERNAL, "gateway stopping; send again", sub.client_id)
            )

    # --- the batch worker -------------------------------------------------------------

    async def _batch_loop(self) -> None:
        queue = self._queue
        limit = self._batch_size
        loop = asyncio.get_running_loop()
        last_start = -1e9
        while True:
            batch = [await queue.get()]
            _take(queue, batch, limit)
            now = loop.time()
            linger = len(batch) < limit and now - last_start < self._busy_window
            last_start = now
            try:
                if linger and self._linger > 0:
                    await asyncio.sleep(self._linger)  # traffic flows: let more frames join
                    _take(queue, batch, limit)
                await self._process(batch)
            except asyncio.CancelledError:
                for session, sub in batch:
                    session.push(
                        frames.encode_error(
                            frames.INTERNAL, "gateway stopping; send again", sub.client_id
                        )
                    )
                raise
            except Exception as exc:
                self._batch_failed.hit(exc=exc)
                for session, sub in batch:
                    session.push(
                        frames.encode_error(
                            frames.INTERNAL, "storage unavailable; send again", sub.client_id
                        )
                    )

    async def _process(self, batch: Sequence[_Item]) -> None:
        submissions = [sub for _, sub in batch]
        try:
            results = await self._store.submit(submissions)
        except Exception as exc:
            # Once more (a timeout: the batch may have been stored with its reply lost).
            # Safe: a batch is stored atomically and deduped by client id, and duplicates
            # are pushed again below.
            self._store_failed.hit(exc=exc)
            results = await self._store.submit(submissions)
        if self._faults is not None:
            self._faults.stored()
        self.batches += 1
        self.submitted += len(batch)
        for (session, _), result in zip(batch, results, strict=True):
            if isinstance(result, Refused):
                session.push(frames.encode_error(result.code, result.reason, result.client_id))
                continue
            session.push(
                frames.encode_accepted(result.client_id, result.message.id, result.message.time)
            )
            # A duplicate too: its first push may have died with the gateway that stored it.
            self._route(session, result)

    def _route(self, sender: Session, accepted: Accepted) -> None:
        prefix: str | None = None  # encoded once, and only when a local socket needs it
        local = self._sessions
        me = self.gateway_id
        remote: dict[GatewayId, list[Recipient]] = {}
        for recipient in accepted.recipients:
            sessions = local.get(recipient.user_id)
            if sessions:
                pos = int(recipient.seq)  # from our own store
                if len(sessions) == 1 and sessions[0] is sender:
                    sender.own(pos)
                else:
                    if prefix is None:
                        prefix = frames.message_prefix(accepted.message)
                    text = frames.with_seq(prefix, recipient.seq)
                    for session in sessions:
                        if session is sender:
                            session.own(pos)
                        else:
                            session.deliver(pos, text)
            for gateway in accepted.presence.get(recipient.user_id, ()):
                if gateway != me:
                    remote.setdefault(gateway, []).append(recipient)
        if remote:
            tmap = TransmitMap(
                message=accepted.message,
                users={gateway: tuple(rs) for gateway, rs in remote.items()},
            )
            if self._faults is not None and self._faults.drop():
                return
            if not self._link.send(tmap):
                self._link_full.hit()

    # --- events from the hub ----------------------------------------------------------

    async def _event_loop(self) -> None:
        async for event in self._link.events():
            try:
                if isinstance(event, Delivered):
                    for delivery in event.deliveries:
                        self._deliver(delivery)
                elif isinstance(event, NotDelivered):
                    await self._forget(event)
                elif isinstance(event, LinkUp):
                    self._linked_at = time.monotonic()
                    logger.info("linked to hub %s: local sessions catch up", event.hub_id)
                    if self._presence is not None:
                        try:
                            await self._presence.refresh_now()
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            logger.exception("re-asserting presence after attach failed")
                    for session in self.sessions():
                        session.catch_up()
                elif isinstance(event, LinkDown):
                    logger.info("hub link down: %s", event.reason)
                    for session in self.sessions():
                        session.link_down()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("handling a hub event failed")

    def _deliver(self, delivery: Delivery) -> None:
        problem = inbound.message_problem(delivery.message, max_content=self._max_content)
        if problem is not None:
            logger.debug("dropped a delivery from the hub: %s", problem)
            self._bad_delivery.hit()
            return
        good, bad = inbound.recipients(delivery)
        if bad:
            logger.debug("dropped %d malformed recipients of a delivery from the hub", bad)
            self._bad_delivery.hit(bad)
        prefix: str | None = None
        local = self._sessions
        for user, pos in good:
            sessions = local.get(user)
            if not sessions:
                continue
            if prefix is None:
                prefix = frames.message_prefix(delivery.message)
            text = frames.with_seq(prefix, str(pos))
            for session in sessions:
                session.deliver(pos, text)

    async def _forget(self, event: NotDelivered) -> None:
        if time.monotonic() - self._linked_at < self._forget_grace:
            return  # other gateways may still be re-attaching; their TTL covers the rest
        stale: dict[GatewayId, set[UserId]] = {}
        for notice in event.notices:
            if (
                notice.reason == UndeliverableReason.NOT_ATTACHED
                and notice.gateway_id
                and notice.gateway_id != self.gateway_id
            ):
                stale.setdefault(notice.gateway_id, set()).update(notice.user_ids)
        for gateway, users in stale.items():
            logger.info(
                "hub: gateway %s is gone; clearing %d presence entries", gateway, len(users)
            )
            await self._store.forget(gateway, users)
