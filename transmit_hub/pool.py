"""HubPool: a gateway's links to several transmit hubs, looking like one link.

::

    async with HubPool(["10.0.0.1:50051", "10.0.0.2:50051"], GatewayId("gw-1")) as pool:
        pool.send(tmap)                       # through one attached hub
        async for event in pool.events():     # from every hub, merged
            ...

Every gateway attaches to every hub (one :class:`~transmit_hub.link.HubLink` each),
takes deliveries from all of them and sends each map through one. The pure parts are
in :mod:`transmit_hub.pool_plan`:

- **Which hub.** :func:`rank` orders the hubs for a map by rendezvous hashing of this
  gateway's id and the map's target gateways; the first attached hub in that order
  carries the map. So load spreads over the hubs, the maps from this gateway to one
  target travel one path while it is healthy (their order is kept), and when a hub goes
  only the maps that used it move. A group map goes whole through one hub ("1 frame in,
  one delivery per target gateway out"); :func:`plan` splits off a target's share only
  when that hub said lately that the target is not attached there (:class:`Absences`).
- **What to send again.** :class:`SendLog` remembers what went through each hub for
  ``resend_window`` seconds (at most ``resend_max`` maps). When a hub's stream breaks,
  the maps written to it in that window, and those still waiting for it, go at once
  through the other hubs (or wait in the pool until one attaches): a map written to a
  dying stream may never have been routed. Receivers drop repeats by inbox position.
  The window must cover the time a silent hub takes to be noticed (keepalive).
- **Not attached here, maybe there.** A ``NOT_ATTACHED`` notice from one hub sends that
  share through the next hub that has not been tried; only when no attached hub is left
  does the notice reach the consumer, which may then clear presence. A hub is not
  trusted further than the send log: a notice about a share this gateway did not send
  through that hub (in the window) is ignored and counted (:attr:`HubPool.ignored_notices`).

Events toward the consumer: :class:`LinkUp` whenever a hub (re)attaches (a chance to
catch up), :class:`LinkLost` when a hub's stream ends while another hub is still
attached, :class:`LinkDown` when the last attached hub goes, ``Delivered`` and
``NotDelivered`` as from one link. Every lost stream, whichever event says so, may have
swallowed deliveries that hub wrote into it before it broke (a silent connection takes
seconds to be noticed, by either end): a consumer that needs every message reads its
inboxes again then. :attr:`HubPool.connected` is true while at least one
hub is attached. The event queue is bounded; a slow consumer backpressures the hubs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

from .errors import ConfigError, LinkClosed
from .lifecycle import AsyncLifecycle
from .link import DeliveryHandler, HubLink, RowHandler
from .link_events import (
    Delivered,
    LinkDown,
    LinkEvent,
    LinkLost,
    LinkUp,
    NotDelivered,
    close_events,
    read_events,
)
from .pool_plan import RANK_CACHE, Absences, SendLog, merge_resend, plan, rank, route_key
from .throttle import Every
from .transport import CHANNEL_OPTIONS
from .types import GatewayId, TransmitMap, Undeliverable, UndeliverableReason

__all__ = ["Absences", "HubPool", "SendLog", "merge_resend", "plan", "rank", "route_key"]

log = logging.getLogger(__name__)

RESEND_PATIENCE: Final = 2.0
"""After a break, how long sending again may wait for room in the other hubs' buffers."""
IGNORED_LOG_INTERVAL: Final = 10.0
"""Notices about shares never sent are logged in one line at most this often, counted."""


# -- the pool ------------------------------------------------------------------------------


class HubPool(AsyncLifecycle):
    """Links to every hub in ``targets``, used as one link; an async context manager."""

    def __init__(
        self,
        targets: Sequence[str],
        gateway_id: GatewayId,
        *,
        token: str | None = None,
        max_pending: int = 10_000,
        resend_window: float = 6.0,
        resend_max: int = 50_000,
        event_queue: int = 1024,
        channel_options: tuple[tuple[str, Any], ...] = CHANNEL_OPTIONS,
        **link_options: Any,
    ) -> None:
        """``link_options`` go to each :class:`HubLink` (``backoff_max``, ``linger``...)."""
        if not targets:
            raise ConfigError("a hub pool needs at least one hub")
        if len(set(targets)) != len(targets):
            raise ConfigError(f"a hub is listed twice: {', '.join(targets)}")
        if max_pending < 1 or event_queue < 1:
            raise ConfigError("max_pending and event_queue must be at least 1")
        self.gateway_id = gateway_id
        self.targets = tuple(targets)
        self.members: Mapping[str, HubLink] = {
            target: HubLink(
                target,
                gateway_id,
                token=token,
                max_pending=max_pending,
                event_queue=event_queue,
                channel_options=channel_options,
                **link_options,
            )
            for target in targets
        }
        self._max_pending = max_pending
        self._log = SendLog(window=resend_window, max_entries=resend_max)
        self._absent = Absences()
        self._ranks: dict[object, tuple[str, ...]] = {}
        self._only = {target: frozenset({target}) for target in targets}
        self._backlog: deque[TransmitMap] = deque()
        self._events: asyncio.Queue[object] = asyncio.Queue(maxsize=event_queue)
        self._up = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self.resent = 0
        """Maps sent again through another hub after a stream broke."""
        self.rerouted = 0
        """Shares tried on another hub after a "not attached" notice."""
        self.ignored_notices = 0
        """NOT_ATTACHED notices (per message id) about shares never sent through that hub
        (or no longer in the send log): ignored."""
        self._ignored_log = Every(IGNORED_LOG_INTERVAL)

    # -- the Link protocol -----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether at least one hub is attached."""
        return any(link.connected for link in self.members.values())

    @property
    def hubs(self) -> dict[str, str]:
        """Each hub's address and ``"up"`` or ``"down"`` (for ``/healthz``)."""
        return {t: "up" if link.connected else "down" for t, link in self.members.items()}

    @property
    def down_reasons(self) -> dict[str, str]:
        """Each hub down, by address, and how its last attempt or stream ended (for
        ``/healthz``)."""
        reasons = {t: link.down_reason for t, link in self.members.items()}
        return {t: why for t, why in reasons.items() if why}

    @property
    def conflict(self) -> str | None:
        """Why a hub refuses this gateway's id (another live process holds it), if any
        hub does; for ``/healthz``."""
        for link in self.members.values():
            if link.conflict:
                return link.conflict
        return None

    @property
    def refused(self) -> str | None:
        """Why hubs refuse this gateway (its certificate or token), if any does; for
        ``/healthz``."""
        reasons = [link.refused for link in self.members.values() if link.refused]
        return "; ".join(reasons) if reasons else None

    @property
    def pending(self) -> int:
        """Maps waiting: in the pool (no hub attached) and in the links' buffers."""
        return len(self._backlog) + sum(link.pending for link in self.members.values())

    def send(self, tmap: TransmitMap) -> bool:
        """Send ``tmap`` through an attached hub; ``False`` (not queued) when full."""
        if self._closed:
            raise LinkClosed("the hub pool is closed")
        return self._dispatch(tmap, frozenset())

    def send_everywhere(self, tmap: TransmitMap) -> bool:
        """Send ``tmap`` through every attached hub, not one: a control that must arrive
        even when a target's link to one hub went silent and that hub has not noticed (it
        writes into the dead stream, and nothing sends it again); the receivers act on it
        once. ``False`` when no hub took it and the pool has no room to keep it."""
        if self._closed:
            raise LinkClosed("the hub pool is closed")
        now, sent = time.monotonic(), False
        for hub, link in self.members.items():
            if link.connected and link.send(tmap):
                self._log.record(tmap, hub, now, self._only[hub])
                sent = True
        return sent or self._dispatch(tmap, frozenset())

    def events(self) -> AsyncIterator[LinkEvent]:
        """The merged events of every hub, for one consumer; ends after :meth:`close`."""
        return read_events(self._events, lambda: self._closed)

    def deliver_to(self, handler: DeliveryHandler | None) -> None:
        """Every hub's deliveries straight to ``handler`` (:meth:`HubLink.deliver_to`)."""
        for link in self.members.values():
            link.deliver_to(handler)

    def deliver_rows_to(self, handler: RowHandler | None) -> None:
        """Every hub's deliveries as rows to ``handler`` (:meth:`HubLink.deliver_rows_to`)."""
        for link in self.members.values():
            link.deliver_rows_to(handler)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every link and the tasks that take their events."""
        if self._closed:
            raise LinkClosed("the hub pool is closed")
        if self._started:
            return
        self._started = True
        for target, link in self.members.items():
            await link.start()
            self._pumps.append(asyncio.create_task(self._pump(target, link), name=f"pool-{target}"))

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - as HubLink's
        """Wait until one hub is attached; :class:`TimeoutError` after ``timeout`` s."""
        await asyncio.wait_for(self._up.wait(), timeout)

    async def close(self) -> list[TransmitMap]:
        """Close every link; return the maps never written (each once)."""
        if self._closed:
            return []
        self._closed = True
        for pump in self._pumps:
            pump.cancel()
        if self._pumps:
            await asyncio.wait(self._pumps)
        unsent = list(self._backlog)
        self._backlog.clear()
        for link in self.members.values():
            unsent.extend(await link.close())
        self._up.clear()
        close_events(self._events)
        return unsent

    # -- routing ---------------------------------------------------------------------------

    def _ranking(self, tmap: TransmitMap) -> tuple[str, ...]:
        """Every hub, in the order ``tmap`` prefers them (cached per target set)."""
        users = tmap.users
        cache_key: object
        if len(users) == 1:
            (cache_key,) = users  # the one target: no key string to build
        else:
            cache_key = frozenset(users)
        order = self._ranks.get(cache_key)
        if order is None:
            if len(self._ranks) >= RANK_CACHE:
                self._ranks.clear()
            order = self._ranks[cache_key] = rank(route_key(self.gateway_id, tmap), self.targets)
        return order

    def _order(self, tmap: TransmitMap, exclude: frozenset[str]) -> list[str]:
        members = self.members
        return [h for h in self._ranking(tmap) if h not in exclude and members[h].connected]

    def _dispatch(self, tmap: TransmitMap, tried: frozenset[str]) -> bool:
        """Send through the best attached hub not in ``tried``; else keep it for later."""
        if not tried and not self._absent:
            # The common case: the first attached hub takes the whole map.
            members = self.members
            for hub in self._ranking(tmap):
                link = members[hub]
                if link.connected:
                    if not link.send(tmap):
                        break  # full: let the general path try the others
                    self._log.record(tmap, hub, time.monotonic(), self._only[hub])
                    return True
        order = self._order(tmap, tried)
        if not order:
            if len(self._backlog) >= self._max_pending:
                return False
            self._backlog.append(tmap)
            return True
        now = time.monotonic()
        absent = self._absent
        parts = plan(tmap, order, (lambda h, g: absent.absent(h, g, now)) if absent else None)
        for hub, part in parts:
            for candidate in (hub, *(h for h in order if h != hub)):
                if self.members[candidate].send(part):
                    self._log.record(part, candidate, now, tried | {candidate})
                    break
            else:
                return False  # every attached hub's buffer is full
        return True

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        while backlog and self.connected:
            if not self._dispatch(backlog.popleft(), frozenset()):
                break

    # -- events from one hub ---------------------------------------------------------------

    async def _pump(self, target: str, link: HubLink) -> None:
        async for event in link.events():
            try:
                if isinstance(event, Delivered):
                    await self._events.put(event)
                elif isinstance(event, NotDelivered):
                    forward = self._not_attached(target, event.notices)
                    if forward:
                        await self._events.put(NotDelivered(tuple(forward)))
                elif isinstance(event, LinkUp):
                    if not self._up.is_set():
                        self._up.set()
                    self._flush_backlog()
                    await self._events.put(event)
                elif isinstance(event, LinkDown):
                    await self._down(target, link)
                    if not self.connected:
                        self._up.clear()
                        await self._events.put(event)
                    else:
                        await self._events.put(LinkLost(target, event.reason))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "pool %s: handling an event of hub %s failed", self.gateway_id, target
                )

    async def _down(self, target: str, link: HubLink) -> None:
        """``target``'s stream broke: what it had goes through the other hubs now.

        When their buffers are full, wait for room (up to ``RESEND_PATIENCE`` s).
        """
        maps = merge_resend(self._log.through(target, time.monotonic()), link.take_pending())
        kept = 0
        deadline = time.monotonic() + RESEND_PATIENCE
        skip = self._only[target]
        for tmap in maps:
            while not self._dispatch(tmap, skip):
                if time.monotonic() > deadline or self._closed:
                    break
                await asyncio.sleep(0.001)  # the writers make room
            else:
                kept += 1
        self.resent += kept
        others = sum(1 for other in self.members.values() if other.connected)
        log.info(
            "pool %s: hub %s down; %d recent maps sent again (%d hubs attached)",
            self.gateway_id,
            target,
            kept,
            others,
        )
        if kept < len(maps):
            log.warning(
                "pool %s: %d maps not sent again (every buffer full; the inboxes hold them)",
                self.gateway_id,
                len(maps) - kept,
            )

    def _not_attached(self, target: str, notices: Sequence[Undeliverable]) -> list[Undeliverable]:
        """Try each NOT_ATTACHED share on another hub; return the notices to pass on.

        Only shares this gateway sent through ``target`` (in the send log) count, and a
        notice passed on names only the users that share went to: a hub's word about
        anything else (a map never sent, a gateway or users it did not carry) is ignored
        and counted, so it can neither clear presence nor steer routing.
        """
        forward: list[Undeliverable] = []
        now = time.monotonic()
        ignored = 0
        for notice in notices:
            gateway = notice.gateway_id
            if notice.reason != UndeliverableReason.NOT_ATTACHED or not gateway:
                forward.append(notice)
                continue
            for message_id in notice.message_ids:
                found = self._log.share(message_id, gateway, target)
                if found is None:
                    ignored += 1
                    continue
                self._absent.mark(target, gateway, now)
                part, tried = found
                if self._retry(part, tried):
                    self.rerouted += 1
                else:
                    users = tuple(r.user_id for r in part.users[gateway])
                    forward.append(Undeliverable(gateway, (message_id,), users, notice.reason))
        if ignored:
            self._ignored(target, ignored)
        return forward

    def _ignored(self, target: str, n: int) -> None:
        """Count notices about shares never sent; one line at most every
        ``IGNORED_LOG_INTERVAL`` seconds."""
        self.ignored_notices += n
        if self._ignored_log.due():
            log.warning(
                "pool %s: hub %s said NOT_ATTACHED for %d shares this gateway did not send "
                "through it (lately); ignored (%d in all)",
                self.gateway_id,
                target,
                n,
                self.ignored_notices,
            )

    def _retry(self, part: TransmitMap, tried: frozenset[str]) -> bool:
        """Send ``part`` through an attached hub not yet tried; False when none is left."""
        order = self._order(part, tried)
        if not order:
            return False
        for hub in order:
            if self.members[hub].send(part):
                self._log.record(part, hub, time.monotonic(), tried | {hub})
                return True
        return False
