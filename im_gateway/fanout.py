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

Large groups. A post stored once (:attr:`~im_gateway.store.Accepted.post`) goes to the
local connections that follow that group (:meth:`Fanout.follow`, by their replayers,
which know the user's large groups) and, as one TransmitMap with one share per gateway,
to the other gateways that follow it; such a share names user 0 with the group seq
``g<group>:<n>``, and the receiving gateway hands it to its own followers of the group.
Which gateways follow a group is kept in the store (:meth:`~im_gateway.store.Store.watch`,
written when a gateway's first follower of a group arrives and refreshed every third of
the presence TTL, all groups in one call per slot), so a post costs one look-up in the
group's slot whatever the group's size. A user's join or leave reaches their gateways as
a :data:`CONTROL_REGROUP` share: their connections read their large groups again.

A leaver sees no post stored after the leave, whatever the order of arrival: the leave's
control share and a later post may go through different hubs, the post first. So a
gateway shows a post to its followers of the group only once the store says they are
still members (:meth:`~im_gateway.store.Store.are_members`, one call for all of this
gateway's followers of the group); a follower who is not stops following it. Cost: one
store round trip per post per gateway with followers (not per member), and posts of a
group that arrive while a check runs share the next one (at most ``SCREEN_HELD_MAX``
wait; beyond, the followers' hole fills read them). Hole fills and replays of a group's
stream check the reader's membership after each read, the same way.

Controls. The server API's ``disconnect`` reaches the gateways that hold a user's sockets
as an ordinary share whose message type is :data:`CONTROL_DISCONNECT`: the hub routes it
like any other, without knowing what it is; a receiving gateway closes that user's
sockets instead of delivering it.

From the hub: deliveries are checked as strictly as client frames
(:mod:`im_gateway.inbound`; a bad one is dropped and counted, the rest go on);
undeliverable notices clear the stale presence they name; after each (re)connect every
local session reads its inbox to the end, so pushes missed while the hub was away
arrive even when nothing follows them.

A lost hub link (the last one, or one of several while others still serve) may have
swallowed pushes: a hub writes into a stream that went silent until it notices, and so
does this gateway's link. So every local session reads its inbox to the end when the
loss is noticed, and once more ``resync_after`` seconds later: by then the hub has
noticed too (its keepalive deadline) and sends that gateway's shares elsewhere, so what
it wrote into the dead stream meanwhile is read as well. A session that gets nothing
more would otherwise wait for the next push to see its hole. Cost: one inbox read per
session per loss, twice: the store says where 1,000 inboxes end in one round trip, and
only the sessions behind theirs read (``bench/catch_up.py`` measures a sweep); losses
close together share the later sweep, and at most one immediate sweep runs per
``resync_after`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Final, Generic, Protocol, TypeVar

from transmit_hub.link import Delivered, LinkDown, LinkEvent, LinkLost, LinkUp, NotDelivered
from transmit_hub.types import (
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    UndeliverableReason,
    UserId,
    new_transmit_map,
)

from . import frames, inbound
from .close_codes import CLOSE_DISCONNECTED
from .errors import ConfigError
from .faults import Faults
from .metrics import GatewayMetrics, NullMetrics
from .positions import group_seq
from .presence import Presence
from .store import Accepted, Store
from .tasks import cancel_and_wait
from .throttle import Throttled

logger = logging.getLogger(__name__)

CONTROL_DISCONNECT: Final = CLOSE_DISCONNECTED
"""Message type of a control share: close the named users' sockets with the close code of
the same number (4001)."""
SWEEP_BATCH: Final = 1000
"""Users whose inbox ends one store call asks for, in a catch-up sweep."""
SCREEN_HELD_MAX: Final = 1000
"""Posts of one large group held while its followers' membership is checked (beyond: the
followers' hole fills read them)."""
_FROM_HUB: Final = object()
"""The caller of a post the hub pushed (not stored here)."""
CONTROL_REGROUP: Final = 4002
"""Message type of a control share: the named users' large groups changed (read them again)."""


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

    def deliver_group(self, group: int, pos: int, text: str) -> None:
        """A post at ``pos`` in large group ``group``'s stream."""
        ...

    def own_group(self, group: int, pos: int) -> None:
        """The connection sent the post at ``pos`` in ``group``'s stream itself."""
        ...

    def regroup(self, left: int | None = None) -> None:
        """The user's large groups changed: read them again; ``left``: the user left that
        group (stop following it at once)."""
        ...

    def catch_up(self, end: int | None = None) -> None:
        """Read the inbox to its end (pushes may have been missed); ``end``: the inbox's
        newest position when known (nothing to read when the connection has it)."""
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
        resync_after: float = 6.0,
        watch_ttl: float = 30.0,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """``watch_ttl``: the store's TTL of a gateway's mark on a group it follows (the
        presence TTL); refreshed every third of it. ``forget_grace``: seconds after each (re)attach during which the hub's
        "not attached" notices are not acted on. After a hub restart the other gateways
        re-attach one by one; until they have, the hub calls them missing, and clearing
        their (live) presence then would stop pushes to them until their next refresh.

        ``resync_after``: after a hub link is lost, the sessions read their inboxes to
        the end at once and again this many seconds later (the time a hub may take to
        notice the dead stream; the gateway gives it its ``--hub-resend-window``).
        """
        if resync_after <= 0:
            raise ConfigError("resync_after must be positive")
        self.gateway_id = gateway_id
        self._store = store
        self._link = link
        self._forget_grace = forget_grace
        self._presence = presence
        self._max_content = max_content
        self._faults = faults
        self._resync_after = resync_after
        self._resync: asyncio.TimerHandle | None = None
        self._swept_at = float("-inf")
        self._sweep: asyncio.Task[None] | None = None
        self._sweep_again = False
        self._sweep_failed = Throttled(
            logger, "reading inbox ends for a catch-up failed %d times; every session reads"
        )
        self._metrics = metrics if metrics is not None else NullMetrics()
        self._sessions: dict[UserId, list[C]] = {}
        self._groups: dict[int, list[C]] = {}
        """Large group -> the local connections that follow it."""
        self._follows: dict[C, set[int]] = {}
        self._watch_ttl = watch_ttl
        self._watcher: asyncio.Task[None] | None = None
        self._unwatching: set[asyncio.Task[None]] = set()
        self._watch_failed = Throttled(
            logger, "marking followed groups in the store failed %d times"
        )
        self._screening: dict[int, list[tuple[int, str, int, object]]] = {}
        """Large group -> posts waiting for its followers' membership check."""
        self._screeners: set[asyncio.Task[None]] = set()
        self._screen_failed = Throttled(
            logger, "checking followers' group membership failed %d times (posts held back)"
        )
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
        followed = self._follows.get(connection)
        if followed:
            self.unfollow(connection, list(followed))

    async def follow(self, connection: C, groups: Collection[int]) -> None:
        """Live posts of these large groups go to ``connection`` from now on; returns
        once the store names this gateway for each of them."""
        mine = self._follows.setdefault(connection, set())
        new = []
        for group in groups:
            if group in mine:
                continue
            mine.add(group)
            followers = self._groups.get(group)
            if followers is None:
                followers = self._groups[group] = []
                new.append(group)
            followers.append(connection)
        if new:
            await self._store.watch(self.gateway_id, new)

    def unfollow(self, connection: C, groups: Collection[int]) -> None:
        """No more live posts of these groups to ``connection``."""
        mine = self._follows.get(connection)
        if mine is None:
            return
        unwatched = []
        for group in groups:
            if group not in mine:
                continue
            mine.discard(group)
            followers = self._groups.get(group)
            if followers is not None:
                with contextlib.suppress(ValueError):
                    followers.remove(connection)
                if not followers:
                    del self._groups[group]
                    unwatched.append(group)
        if not mine:
            del self._follows[connection]
        if unwatched:
            task = asyncio.get_running_loop().create_task(self._unwatch(unwatched))
            self._unwatching.add(task)
            task.add_done_callback(self._unwatching.discard)

    async def _unwatch(self, groups: list[int]) -> None:
        try:
            await self._store.unwatch(self.gateway_id, [g for g in groups if g not in self._groups])
        except Exception as exc:  # the mark expires by itself
            self._watch_failed.hit(exc=exc)

    async def _watch_loop(self) -> None:
        """Refresh this gateway's marks on the groups it follows, all in one call per slot."""
        interval = max(self._watch_ttl / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            if not self._groups:
                continue
            try:
                await self._store.watch(self.gateway_id, list(self._groups))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._watch_failed.hit(exc=exc)

    # --- large group posts to followers, members only -----------------------------------

    def _screen(self, group: int, pos: int, text: str, sent_ms: int, caller: object) -> None:
        """A post of large ``group`` for its followers here, once the store says they
        are still members: a leaver's notice (a control share) may come through another
        hub than the post and arrive after it, so the post itself is checked. Posts that
        arrive while a check runs wait for the next one (one check covers them all)."""
        waiting = self._screening.get(group)
        if waiting is not None:
            if len(waiting) < SCREEN_HELD_MAX:
                waiting.append((pos, text, sent_ms, caller))
            # else: dropped; the followers' cursors see the hole and fill it (checked too)
            return
        self._screening[group] = [(pos, text, sent_ms, caller)]
        task = asyncio.get_running_loop().create_task(self._screen_loop(group))
        self._screeners.add(task)
        task.add_done_callback(self._screeners.discard)

    async def _screen_loop(self, group: int) -> None:
        """Check the followers' membership of ``group`` (one store call for all of them)
        and deliver the waiting posts to the members; the rest stop following it."""
        try:
            while True:
                posts = self._screening.get(group)
                if not posts:
                    return
                self._screening[group] = []  # posts arriving from now wait for the next check
                users = sorted({c.user for c in self._groups.get(group, ())})
                if not users:
                    continue
                try:
                    found = await self._store.are_members(group, users)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # not shown: the cursors fill the hole later
                    self._screen_failed.hit(exc=exc)
                    continue
                gone = {user for user, member in zip(users, found, strict=True) if not member}
                followers = list(self._groups.get(group, ()))
                for connection in followers:
                    if connection.user in gone:
                        connection.regroup(group)
                        self.unfollow(connection, (group,))
                checked = set(users)  # (a follower since then fills its hole itself)
                kept = [c for c in followers if c.user in checked and c.user not in gone]
                if not kept:
                    continue
                for pos, text, sent_ms, caller in posts:
                    for connection in kept:
                        if connection is not caller:
                            connection.deliver_group(group, pos, text)
                    if caller is not _FROM_HUB:  # stored here
                        self._metrics.pushed_local(sent_ms)
                    else:
                        self._metrics.pushed(sent_ms)
        finally:
            self._screening.pop(group, None)

    def followers(self, group: int) -> list[C]:
        """The local connections that follow large group ``group``."""
        return list(self._groups.get(group, ()))

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
        self._watcher = asyncio.create_task(self._watch_loop(), name="fanout-group-marks")

    async def close(self) -> None:
        """Stop consuming the link's events; idempotent."""
        if self._resync is not None:
            self._resync.cancel()
            self._resync = None
        await cancel_and_wait(
            self._sweep, self._task, self._watcher, *self._unwatching, *self._screeners
        )
        self._sweep = self._task = self._watcher = None

    # --- stored messages out ------------------------------------------------------------

    def route(self, accepted: Accepted, caller: object) -> None:
        """Push a stored message to its recipients' sockets, here and through the hub;
        ``caller``, when it is one of the recipient's connections, gets the position only."""
        if accepted.post is not None:
            self._route_post(accepted, caller)
            return
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
            tmap = new_transmit_map(
                accepted.message, {gateway: tuple(rs) for gateway, rs in remote.items()}
            )
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
            if others:  # shown once the store says they are still members (see _screen)
                text = frames.encode_message(accepted.message, post.seq)
                self._screen(post.group, post.position, text, accepted.message.time, caller)
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
        became large. Leavers' connections stop following at once, here and (the control
        goes before any later post through the same hub) on the other gateways."""
        large = await self._store.is_large(group)
        users: Collection[UserId]
        if large and not was_large:
            users = await self._store.members(group)
        elif large or was_large:
            users = changed
        else:
            return
        if users:
            await self.regroup(users, now_ms, control_id, left=group if left else None)

    async def regroup(
        self,
        users: Collection[UserId],
        now_ms: int,
        control_id: MessageId,
        *,
        left: int | None = None,
    ) -> None:
        """These users' large groups changed (``left``: they left that one): their
        connections here read them again, and their other gateways are told (one presence
        look-up, one map)."""
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
                    self._catch_up()
                elif isinstance(event, LinkLost):
                    logger.info(
                        "hub link to %s lost (%s): local sessions catch up",
                        event.hub,
                        event.reason,
                    )
                    self._lost()
                elif isinstance(event, LinkDown):
                    # Pushes are missed from now on; the next LinkUp reads every inbox to
                    # its end (above). What the hub wrote into the dead stream is read now.
                    logger.info("hub link down: %s", event.reason)
                    self._lost()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("handling a hub event failed")

    async def catch_up(self) -> None:
        """Every local session reads its inbox to the end, as after a lost or restored hub
        link; returns once every session behind has been asked to read."""
        self._catch_up()
        if self._sweep is not None:
            await asyncio.wait([self._sweep])

    def _catch_up(self) -> None:
        """Every local session reads its inbox to the end (pushes may have been missed):
        a sweep in the background; one asked for while one runs runs again after it."""
        if self._sweep is not None and not self._sweep.done():
            self._sweep_again = True
            return
        self._sweep = asyncio.create_task(self._sweep_all(), name="fanout-catch-up")

    async def _sweep_all(self) -> None:
        """Ask the store for the inbox ends of ``SWEEP_BATCH`` users at a time (one round
        trip per node) and make only the sessions behind them read: an idle session costs
        a few microseconds, not an inbox read. When the store cannot say, every session
        of the batch reads."""
        while True:
            self._sweep_again = False
            users = list(self._sessions)
            for start in range(0, len(users), SWEEP_BATCH):
                batch = users[start : start + SWEEP_BATCH]
                ends: list[int] | None
                try:
                    ends = await self._store.inbox_ends(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._sweep_failed.hit(exc=exc)
                    ends = None
                sessions = self._sessions
                for i, user in enumerate(batch):
                    end = None if ends is None else ends[i]
                    for session in sessions.get(user, ()):
                        session.catch_up(end)
            if not self._sweep_again:
                return

    def _lost(self) -> None:
        """A hub link was lost: catch up now, and once more ``resync_after`` s later.

        Bounded: at most one immediate sweep per ``resync_after`` seconds (a flapping hub
        does not keep every session reading), since the later sweep, pushed back to
        ``resync_after`` after the last loss, reads whatever the skipped ones would have.
        """
        now = time.monotonic()
        if now - self._swept_at >= self._resync_after:
            self._swept_at = now
            self._catch_up()
        if self._resync is not None:
            self._resync.cancel()  # one later read covers losses close together
        self._resync = asyncio.get_running_loop().call_later(self._resync_after, self._resynced)

    def _resynced(self) -> None:
        self._resync = None
        self._catch_up()

    def _deliver(self, delivery: Delivery) -> None:
        if delivery.message.type == CONTROL_DISCONNECT:
            for r in delivery.recipients:
                self._close_local(r.user_id)
            return
        if delivery.message.type == CONTROL_REGROUP:
            text = delivery.message.content
            left = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
            for r in delivery.recipients:
                for connection in self._sessions.get(r.user_id, ()):
                    connection.regroup(left)
            return
        problem = inbound.message_problem(delivery.message, max_content=self._max_content)
        if problem is not None:
            logger.debug("dropped a delivery from the hub: %s", problem)
            self._bad_delivery.hit()
            return
        post = inbound.group_post(delivery)
        if post is not None:
            group, pos = post
            if pos == 0:
                self._bad_delivery.hit()
                return
            if group in self._groups:
                text = frames.encode_message(delivery.message, group_seq(group, pos))
                self._screen(group, pos, text, delivery.message.time, _FROM_HUB)
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
