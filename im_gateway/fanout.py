"""The fan-out: stored messages to local sockets and to the hub; the hub's pushes to ours.

A :class:`Fanout` knows the local connections (anything that implements
:class:`Connection`) by user, and the hub link. It knows nothing of how a message was
stored or who asked (a client or the server API): the pipeline hands it each stored
message with its caller, and the caller's own connection gets the position without the
frame (it sent the message; it gets type 10).

Per stored message: every recipient's sockets on this gateway (the sender's other
devices included) get the message directly; the recipients' other gateways get one
:class:`~transmit_hub.types.TransmitMap` through the hub link. When the link's buffer is
full the push is skipped (counted, logged): the message is already in every inbox, and a
receiving session that sees the next position fills the hole from there.

Controls. The server API's ``disconnect`` reaches the gateways that hold a user's sockets
as an ordinary share whose message type is :data:`CONTROL_DISCONNECT`: the hub routes it
like any other, without knowing what it is; a receiving gateway closes that user's
sockets instead of delivering it.

From the hub: deliveries are checked as strictly as client frames
(:mod:`im_gateway.inbound`; a bad one is dropped and counted, the rest go on);
undeliverable notices clear the stale presence they name; after each (re)connect every
local session reads its inbox to the end, so pushes missed while the hub was away
arrive even when nothing follows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Final, Generic, Protocol, TypeVar

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
from .close_codes import CLOSE_DISCONNECTED
from .faults import Faults
from .metrics import GatewayMetrics, NullMetrics
from .presence import Presence
from .store import Accepted, Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

CONTROL_DISCONNECT: Final = CLOSE_DISCONNECTED
"""Message type of a control share: close the named users' sockets with the close code of
the same number (4001)."""


class Connection(Protocol):
    """What the fan-out needs of a local socket (a :class:`~im_gateway.sessions.Session`)."""

    @property
    def user(self) -> UserId: ...

    def deliver(self, pos: int, text: str) -> None:
        """A message at inbox position ``pos`` (``text`` is its frame)."""
        ...

    def own(self, pos: int) -> None:
        """The connection sent the message at ``pos`` itself."""
        ...

    def catch_up(self) -> None:
        """Read the inbox to its end (pushes may have been missed)."""
        ...

    def rebase(self) -> None:
        """The store lost its data: inbox positions start again from 1."""
        ...

    def disconnect(self, code: int, reason: str) -> None:
        """Close the socket with ``code``."""
        ...


C = TypeVar("C", bound=Connection)


class Link(Protocol):
    """The part of :class:`transmit_hub.link.HubLink` the fan-out uses."""

    @property
    def connected(self) -> bool: ...

    def send(self, tmap: TransmitMap) -> bool: ...

    def events(self) -> AsyncIterator[LinkEvent]: ...


class Fanout(Generic[C]):
    """Local connections by user, the route of stored messages, and the hub's events."""

    def __init__(
        self,
        *,
        gateway_id: GatewayId,
        store: Store,
        link: Link,
        forget_grace: float = 10.0,
        presence: Presence | None = None,
        max_content: int = frames.DEFAULT_MAX_CONTENT,
        faults: Faults | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """``forget_grace``: seconds after each (re)attach during which the hub's
        "not attached" notices are not acted on. After a hub restart the other gateways
        re-attach one by one; until they have, the hub calls them missing, and clearing
        their (live) presence then would stop pushes to them until their next refresh.
        """
        self.gateway_id = gateway_id
        self._store = store
        self._link = link
        self._forget_grace = forget_grace
        self._presence = presence
        self._max_content = max_content
        self._faults = faults
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._sessions: dict[UserId, list[C]] = {}
        self._task: asyncio.Task[None] | None = None
        self._linked_at = time.monotonic()
        self._link_full = Throttled(
            logger, "hub link buffer full: %d pushes skipped (the inboxes hold those messages)"
        )
        self._bad_delivery = Throttled(
            logger, "dropped %d malformed deliveries from the hub (DEBUG logs each)"
        )
        self._reassert_failed = Throttled(
            logger, "re-asserting presence after attach failed %d times"
        )

    # --- registry -----------------------------------------------------------------------

    def add(self, connection: C) -> None:
        """Route live messages for ``connection.user`` to it from now on."""
        self._sessions.setdefault(connection.user, []).append(connection)

    def discard(self, connection: C) -> None:
        """Stop routing to ``connection``."""
        sessions = self._sessions.get(connection.user)
        if sessions is None:
            return
        with contextlib.suppress(ValueError):
            sessions.remove(connection)
        if not sessions:
            del self._sessions[connection.user]

    def sessions(self) -> list[C]:
        """Every local connection."""
        return [s for group in self._sessions.values() for s in group]

    def of(self, user: UserId) -> list[C]:
        """The local connections of ``user``."""
        return list(self._sessions.get(user, ()))

    @property
    def connections(self) -> int:
        """The number of local connections."""
        return sum(len(group) for group in self._sessions.values())

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming the hub link's events."""
        self._task = asyncio.create_task(self._event_loop(), name="fanout-link-events")

    async def close(self) -> None:
        """Stop consuming the link's events; idempotent."""
        await cancel_and_wait(self._task)
        self._task = None

    # --- stored messages out ------------------------------------------------------------

    def route(self, accepted: Accepted, caller: object) -> None:
        """Push a stored message to its recipients' sockets, here and through the hub;
        ``caller``, when it is one of the recipient's connections, gets the position only."""
        prefix: str | None = None  # encoded once, and only when a local socket needs it
        local = self._sessions
        me = self.gateway_id
        remote: dict[GatewayId, list[Recipient]] = {}
        for recipient in accepted.recipients:
            sessions = local.get(recipient.user_id)
            if sessions:
                pos = int(recipient.seq)  # from our own store
                if len(sessions) == 1 and sessions[0] is caller:
                    sessions[0].own(pos)
                else:
                    if prefix is None:
                        prefix = frames.message_prefix(accepted.message)
                    text = frames.with_seq(prefix, recipient.seq)
                    for session in sessions:
                        if session is caller:
                            session.own(pos)
                        else:
                            session.deliver(pos, text)
            for gateway in accepted.presence.get(recipient.user_id, ()):
                if gateway != me:
                    remote.setdefault(gateway, []).append(recipient)
        if prefix is not None:  # once per message, however many local sockets got it
            self._metrics.pushed_local(accepted.message.time)
        if remote:
            tmap = TransmitMap(
                message=accepted.message,
                users={gateway: tuple(rs) for gateway, rs in remote.items()},
            )
            if self._faults is not None and self._faults.drop():
                return
            if not self._link.send(tmap):
                self._link_full.hit()

    def disconnect(
        self, user: UserId, gateways: Collection[GatewayId], control_id: MessageId, now_ms: int
    ) -> int:
        """Close ``user``'s sockets here (4001) and send the control to ``gateways``;
        returns how many local sockets were closed."""
        closed = self._close_local(user)
        remote = [gw for gw in gateways if gw != self.gateway_id]
        if remote:
            control = Message(control_id, UserId(0), user, CONTROL_DISCONNECT, 0, now_ms, "")
            tmap = TransmitMap(control, {gw: (Recipient(user, ""),) for gw in remote})
            if not self._link.send(tmap):
                self._link_full.hit()
        return closed

    def _close_local(self, user: UserId) -> int:
        sessions = self.of(user)
        for session in sessions:
            session.disconnect(CLOSE_DISCONNECTED, "disconnected by the server")
        return len(sessions)

    # --- events from the hub ------------------------------------------------------------

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
                        except Exception as exc:
                            self._reassert_failed.hit(exc=exc)
                    for session in self.sessions():
                        session.catch_up()
                elif isinstance(event, LinkDown):
                    # Pushes may be missed from now on; the next LinkUp reads every inbox
                    # to its end (above), and a hole heals at the next push anyway.
                    logger.info("hub link down: %s", event.reason)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("handling a hub event failed")

    def _deliver(self, delivery: Delivery) -> None:
        if delivery.message.type == CONTROL_DISCONNECT:
            for r in delivery.recipients:
                self._close_local(r.user_id)
            return
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
        if prefix is not None:
            self._metrics.pushed(delivery.message.time)

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
