"""The fan-out: stored messages to local sockets and to the hub; the hub's pushes to ours.

A :class:`Fanout` knows the local connections (:class:`~im_gateway.ports.Connection`) by
user, and the hub link. It knows nothing of how a message was stored or who asked (a
client or the server API): the pipeline hands it each stored message with its caller,
whose own connection gets the position without the frame (it gets type 10).

Per stored message: every recipient's sockets on this gateway (the sender's other
devices included) get the message directly; the recipients' other gateways get one
:class:`~transmit_hub.types.TransmitMap` through the hub link. When the link's buffer is
full the push is skipped (counted, logged): the message is already in every inbox, and a
receiving session that sees the next position fills the hole from there.

Large groups. A post stored once (:attr:`~im_gateway.store.Accepted.post`) goes to the
local connections that follow that group (:mod:`im_gateway.following`, by their
replayers, which know the user's large groups) and, as one TransmitMap with one share
per gateway, to the other gateways that follow it; such a share names user 0 with the
group seq ``g<group>:<n>``, and the receiving gateway hands it to its own followers of
the group. A user's join or leave reaches their gateways as a :data:`CONTROL_REGROUP`
share: their connections read their large groups again. Members only: a follower is shown
a post once the store says they are still a member (:mod:`im_gateway.screening`).

Controls. The server API's ``disconnect`` reaches the user's other gateways as a share of
type :data:`CONTROL_DISCONNECT` through every hub (one hub's silent link would swallow
it): the receiver closes the user's sockets, once per control (:mod:`im_gateway.once`).

From the hub: the link hands each frame's deliveries over as rows (no object built for an
ordinary message: :mod:`im_gateway.from_hub` pushes it from its fields); deliveries are
checked as strictly as client frames (:mod:`im_gateway.inbound`; a bad one is dropped and
counted, the rest go on); undeliverable notices clear the stale presence they name; after
each (re)connect every local session reads its inbox to the end, so pushes missed while
the hub was away arrive even when nothing follows them (:mod:`im_gateway.catch_up`; so
does a lost link).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from typing import Final, Generic, TypeVar

from transmit_hub.link import Delivered, LinkDown, LinkLost, LinkUp, NotDelivered
from transmit_hub.types import (
    Delivery,
    DeliveryRow,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    UndeliverableReason,
    UserId,
    delivery_row,
    new_transmit_map,
)

from . import frames, from_hub, inbound
from .catch_up import CatchUp
from .close_codes import CLOSE_DISCONNECTED
from .faults import Faults
from .following import Following
from .metrics import GatewayMetrics, NullMetrics
from .once import Once
from .ports import Connection, Link
from .positions import group_seq
from .presence import Presence
from .screening import DEFAULT_HELD_MAX, FROM_HUB, Screen
from .store import Accepted, Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=Connection)

CONTROL_DISCONNECT: Final = CLOSE_DISCONNECTED
"""Message type of a control share: close the named users' sockets with the close code of
the same number (4001)."""
CONTROL_REGROUP: Final = 4002
"""Message type of a control share: the named users' large groups changed (read them again)."""


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
        resync_after: float = 6.0,
        watch_ttl: float = 30.0,
        metrics: GatewayMetrics | None = None,
        held_max: int = DEFAULT_HELD_MAX,
    ) -> None:
        """``watch_ttl``: the store's TTL of a gateway's mark on a group it follows (the
        presence TTL); refreshed every third of it. ``forget_grace``: seconds after each
        (re)attach during which the hub's "not attached" notices are not acted on. After a
        hub restart the other gateways re-attach one by one; until they have, the hub calls
        them missing, and clearing their (live) presence would stop pushes to them.

        ``resync_after``: after a hub link is lost, the sessions read their inboxes to
        the end at once and again this many seconds later (the time a hub may take to
        notice the dead stream; the gateway gives it its ``--hub-resend-window``).

        ``held_max``: posts of one large group held while its followers' membership is
        checked (``--large-group-held``; :mod:`im_gateway.screening`).
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
        self.following = Following[C](gateway_id, store=store, watch_ttl=watch_ttl)
        """Which local connections follow which large groups (a session's ``Groups``)."""
        self._groups = self.following.groups
        self.catch_up = CatchUp(self._sessions, store=store, resync_after=resync_after)
        """Every local session reads its inbox to the end (after a hub link's loss or return)."""
        unfollow = self.following.unfollow
        self._screen = Screen(
            self._groups, store=store, unfollow=unfollow, metrics=self._metrics, held_max=held_max
        )
        self._task: asyncio.Task[None] | None = None
        self._disconnects = Once()
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
        self._forget_failed = Throttled(
            logger,
            "clearing the presence of gateways the hub calls gone failed %d times "
            "(the entries expire after --presence-ttl)",
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
        self.following.discard(connection)

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
        """Start consuming the hub link's events; its deliveries, when it can hand them
        over directly, are pushed to the sockets in its reader (no queue, no task switch)."""
        deliver_to = getattr(self._link, "deliver_rows_to", None)
        if callable(deliver_to):
            deliver_to(self._deliver_rows)
        self._task = asyncio.create_task(self._event_loop(), name="fanout-link-events")
        self.following.start()

    async def close(self) -> None:
        """Stop consuming the link's events; idempotent."""
        deliver_to = getattr(self._link, "deliver_rows_to", None)
        if callable(deliver_to):
            deliver_to(None)
        await self.catch_up.close()
        await self.following.close()
        await cancel_and_wait(self._task, *self._screen.tasks)
        self._task = None

    # --- stored messages out ------------------------------------------------------------

    def route(self, accepted: Accepted, caller: object) -> None:
        """Push a stored message to its recipients' sockets, here and through the hub;
        ``caller``, when it is one of the recipient's connections, gets the position only."""
        if accepted.post is not None:
            self._route_post(accepted, caller)
            if not accepted.recipients:
                return
            # The server API posted as a user who is not a member: their inbox's copy
            # (for their devices) goes as an ordinary message, below.
        prefix: str | None = None  # encoded once, and only when a local socket needs it
        local = self._sessions
        me = self.gateway_id
        presence = accepted.presence
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
            for gateway in presence.get(recipient.user_id, ()):
                if gateway != me:
                    remote.setdefault(gateway, []).append(recipient)
        if prefix is not None:  # once per message, however many local sockets got it
            self._metrics.pushed_local(accepted.message.time)
        if remote:
            if len(remote) == 1:  # the common case: one other gateway
                ((gateway, shares),) = remote.items()
                users = {gateway: tuple(shares)}
            else:
                users = {gateway: tuple(rs) for gateway, rs in remote.items()}
            tmap = new_transmit_map(accepted.message, users)
            if self._faults is not None and self._faults.drop():
                return
            if not self._link.send(tmap):
                self._link_full.hit()

    def _route_post(self, accepted: Accepted, caller: object) -> None:
        """A post stored once in a large group's stream: to the local followers, and one
        share per other gateway that follows the group."""
        post = accepted.post
        assert post is not None
        followers = self._groups.get(post.group, ())
        if followers:
            others = 0
            for connection in followers:
                if connection is caller:
                    connection.own_group(post.group, post.position)
                else:
                    others += 1
            if others:  # shown once the store says they are still members (see screening.py)
                text = frames.encode_message(accepted.message, post.seq)
                self._screen.post(post.group, post.position, text, accepted.message.time, caller)
        if caller not in followers:
            # A sender that does not follow the group yet (it joined a moment ago): its
            # connection notes the position, so the fill does not send its own post back.
            own = getattr(caller, "own_group", None)
            if callable(own):
                own(post.group, post.position)
        remote = [gw for gw in post.gateways if gw != self.gateway_id]
        if remote:
            share = (Recipient(UserId(0), post.seq),)
            tmap = TransmitMap(message=accepted.message, users={gw: share for gw in remote})
            if self._faults is not None and self._faults.drop():
                return
            if not self._link.send(tmap):
                self._link_full.hit()

    async def membership_changed(
        self,
        group: int,
        changed: Collection[UserId],
        *,
        was_large: bool,
        now_ms: int,
        control_id: MessageId,
        left: bool = False,
    ) -> None:
        """``changed`` joined (or, with ``left``, left) ``group``: their connections
        follow its stream or stop when it is (or was) large; every member's when it just
        became large, or did in a change answered with an error before all followed
        (:meth:`Store.to_regroup`; a leave leaves that to the next join). Leavers'
        connections stop following at once, here and (the control goes before any later
        post through the same hub) on the other gateways."""
        large = await self._store.is_large(group)
        if large and not left and (not was_large or await self._store.to_regroup(group)):
            users = await self._store.members(group)
            if await self.regroup(users, now_ms, control_id):
                await self._store.regrouped(group)
        elif (large or was_large) and changed:
            await self.regroup(changed, now_ms, control_id, left=group if left else None)

    async def regroup(
        self,
        users: Collection[UserId],
        now_ms: int,
        control_id: MessageId,
        *,
        left: int | None = None,
    ) -> bool:
        """These users' large groups changed (``left``: they left that one): their
        connections here read them again, and their other gateways are told (one presence
        look-up, one map). False when the link had no room for the map (counted)."""
        for user in users:
            for connection in self._sessions.get(user, ()):
                connection.regroup(left)
        found = await self._store.lookup(users)
        remote: dict[GatewayId, list[Recipient]] = {}
        for user, gateways in found.items():
            for gateway in gateways:
                if gateway != self.gateway_id:
                    remote.setdefault(gateway, []).append(Recipient(user, ""))
        if remote:
            content = "" if left is None else str(left)
            control = Message(control_id, UserId(0), 0, CONTROL_REGROUP, 0, now_ms, content)
            tmap = TransmitMap(control, {gw: tuple(rs) for gw, rs in remote.items()})
            if not self._link.send(tmap):
                self._link_full.hit()
                return False
        return True

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
            if not self._link.send_everywhere(tmap):
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
                    self._deliver_rows(tuple(map(delivery_row, event.deliveries)))
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
                    self.catch_up.linked()
                elif isinstance(event, LinkLost):
                    logger.info(
                        "hub link to %s lost (%s): local sessions catch up",
                        event.hub,
                        event.reason,
                    )
                    self.catch_up.lost()
                elif isinstance(event, LinkDown):
                    # Pushes are missed from now on; the next LinkUp reads every inbox to
                    # its end (above). What the hub wrote into the dead stream is read now.
                    logger.info("hub link down: %s", event.reason)
                    self.catch_up.lost(everywhere=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("handling a hub event failed")

    def _deliver_rows(self, rows: tuple[DeliveryRow, ...]) -> None:
        """One frame's deliveries from the hub to the local sockets (:mod:`.from_hub`)."""
        other, bad, most = self._deliver_other, self._bad_delivery, self._max_content
        pushed = from_hub.push(rows, self._sessions, other=other, bad=bad, max_content=most)
        self._metrics.pushed_all(pushed)  # one reading of the clock per frame

    def _deliver_other(self, delivery: Delivery) -> None:
        """No ordinary message: a control, a large group's post (to its followers here,
        once screened), or one refused."""
        message = delivery.message
        if message.type in (CONTROL_DISCONNECT, CONTROL_REGROUP):
            if message.type == CONTROL_DISCONNECT and not self._disconnects.first(message.id):
                return  # a copy (through another hub, or resent)
            text = message.content
            left = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
            for r in delivery.recipients:
                if message.type == CONTROL_DISCONNECT:
                    self._close_local(r.user_id)
                else:
                    for connection in self._sessions.get(r.user_id, ()):
                        connection.regroup(left)
            return
        problem = inbound.message_problem(message, max_content=self._max_content)
        post = inbound.group_post(delivery) if problem is None else (0, 0)
        if post is None or post[1] == 0:
            logger.debug("dropped a delivery from the hub: %s", problem or "bad group post")
            self._bad_delivery.hit()
            return
        group, pos = post
        if group in self._groups:
            text = frames.encode_message(message, group_seq(group, pos))
            self._screen.post(group, pos, text, message.time, FROM_HUB)

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
            try:
                await self._store.forget(gateway, users)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the entries expire by themselves (presence TTL)
                self._forget_failed.hit(exc=exc)
