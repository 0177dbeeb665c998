"""The hub's hot path: one gateway's maps, routed on wire bytes (:mod:`transmit_hub.wire`).

A map's message is forwarded as received and each delivery is encoded once, offered to
its target's :class:`~transmit_hub.outbox.Outbox` (never waiting). Maps the fast path
cannot vouch for (odd field order, no message id, an empty gateway id) take the slow
path through :func:`transmit_hub.routing.split`, which also defines the semantics both
follow. A map that cannot be read at all (truncated, a gateway id that is not UTF-8) or
whose message cannot be decoded is answered INVALID, and the stream goes on. Every map
costs time in proportion to its own size, whatever it names.

Undeliverable notices (target not attached, or its outbox closed as it is detached:
``NOT_ATTACHED``; target's outbox full, or all the outboxes together holding the hub's
``--queue-bytes-total``: ``QUEUE_FULL``; malformed map or target: ``INVALID``) go to the
sender's own outbox. Refusals for the total are also counted apart
(``Registry.budget.refused``) and logged, one line with a count at most every
:data:`BUDGET_LOG_INTERVAL` seconds.
When that is full too (its own bounds, or the shared total: an outbox whose writer is
writing a frame is not empty, so it takes no notice past the total), the notice is
counted (``Registry.notices_dropped``) and logged at most once a second per gateway.
Such a loss costs nothing a sender was told was delivered: the hub never confirms a
delivery, and the sender's client was answered once the message was in every
recipient's inbox. What goes is the fast path's repair: a lost NOT_ATTACHED is not
retried through another hub (the recipient gets the message from its inbox when its next
push shows the hole, or on its next replay) and does not clear stale presence (its TTL
does).
When it is closed (the sender itself is being detached), the notices go nowhere, and are
neither counted as dropped nor logged (the messages are in the recipients' inboxes all
the same).
"""

from __future__ import annotations

import logging
import time

from . import codec, routing, wire
from .outbox import Outbox
from .registry import Attachment, Registry
from .throttle import Every
from .types import (
    GatewayId,
    TransmitMap,
    Undeliverable,
    UndeliverableReason,
    gateway_id_problem,
)

__all__ = ["Forwarder"]

log = logging.getLogger(__name__)

NOTICES_PER_ITEM = 256
"""Notices share one outbox item up to this many (a map naming 10,000 absent gateways
takes 40 items of the sender's queue, not 10,000)."""
BUDGET_LOG_INTERVAL = 10.0
"""Seconds between two log lines about deliveries refused for ``--queue-bytes-total``."""


class Forwarder:
    """Routes the maps of the attached gateways into each other's outboxes."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._last_invalid_log = 0.0
        self.invalid_maps = 0
        """Maps answered INVALID because they could not be read or decoded."""
        self._budget_log = Every(BUDGET_LOG_INTERVAL)
        self._budget_logged = 0
        """``budget.refused`` as of the last line about it."""

    def route(self, att: Attachment, maps: list[wire.WireMap], *, checked: bool = False) -> None:
        """Offer every map's deliveries to their targets; notify the sender of the rest.

        ``checked``: the whole frame decodes, so every message in it does too; otherwise
        each message is checked before it is forwarded (a gateway must be able to decode it).
        """
        registry = self.registry
        outboxes = registry.outboxes
        registry.transmit_maps_received += len(maps)
        att.counters.transmit_maps_received += len(maps)
        notices: list[Undeliverable] | None = None
        has_id = wire.has_message_id
        message_ok = codec.message_decodes
        has_users = wire.has_users
        entry = wire.delivery_entry
        for wm in maps:
            msg = wm.message
            targets = wm.targets
            if wm.problem is not None:
                notices = self._invalid(wm.problem, notices)
                continue
            if len(targets) == 1:
                gid, users = targets[0]
                plain = bool(gid) and has_users(users) is not None
            else:
                # A gateway named twice goes the slow way (protobuf: the last entry wins), so
                # one map never writes one gateway more than one delivery.
                plain = all(g and has_users(u) is not None for g, u in targets) and len(
                    {g for g, _ in targets}
                ) == len(targets)
            if msg is None or not plain or has_id(msg) is not True:
                notices = self._route_slow(wm, notices)
                continue
            if not checked and not message_ok(msg):  # forwarded verbatim: it must decode
                notices = self._invalid("its message cannot be decoded", notices)
                continue
            notice = _Notices(wm)  # decodes the map once, only if a notice is needed
            for gateway_id, users in targets:
                if not has_users(users):
                    continue  # no users there: nothing to deliver
                box = outboxes.get(gateway_id)
                if box is None:
                    # Attached ids are valid by construction: only the others are checked.
                    reason = (
                        UndeliverableReason.NOT_ATTACHED
                        if gateway_id_problem(gateway_id) is None
                        else UndeliverableReason.INVALID
                    )
                    notices = notices or []
                    notices.append(notice(gateway_id, reason))
                elif not box.offer(entry(msg, users)):
                    notices = notices or []
                    notices.append(notice(gateway_id, self._refused(gateway_id, box)))
            if notice.problem is not None:
                self._log_invalid(notice.problem)
        if notices:
            self._notify(att, notices)

    def _refused(self, gateway_id: str, box: Outbox) -> UndeliverableReason:
        """Why ``box`` refused a delivery: closed (its gateway is being detached, so
        NOT_ATTACHED, which a pool answers by trying another hub) or full (QUEUE_FULL,
        counted)."""
        if box.closed:
            return UndeliverableReason.NOT_ATTACHED
        registry = self.registry
        registry.queue_full += 1
        registry.counters(gateway_id).queue_full += 1
        budget = registry.budget
        if budget.refused != self._budget_logged and self._budget_log.due():
            log.warning(
                "the gateways' outboxes hold %d bytes in all (--queue-bytes-total %d): "
                "%d deliveries refused QUEUE_FULL for it since the last such line "
                "(%d in all; the messages are in the recipients' inboxes)",
                budget.total,
                budget.limit,
                budget.refused - self._budget_logged,
                budget.refused,
            )
            self._budget_logged = budget.refused
        return UndeliverableReason.QUEUE_FULL

    def _invalid(self, problem: str, notices: list[Undeliverable] | None) -> list[Undeliverable]:
        """Answer INVALID for a map that cannot be read; the stream goes on."""
        self._log_invalid(problem)
        notices = notices if notices is not None else []
        notices.append(Undeliverable(GatewayId(""), (), (), UndeliverableReason.INVALID))
        return notices

    def _log_invalid(self, problem: str) -> None:
        self.invalid_maps += 1
        now = time.monotonic()
        if now - self._last_invalid_log >= 1.0:
            self._last_invalid_log = now
            log.warning(
                "a map could not be read (%s): answered INVALID (%d such maps in all)",
                problem,
                self.invalid_maps,
            )

    def _route_slow(
        self, wm: wire.WireMap, notices: list[Undeliverable] | None
    ) -> list[Undeliverable] | None:
        """Route one map through the reference :func:`routing.split` (rare cases)."""
        try:
            tmap = codec.transmit_map_from_bytes(wm.raw)
        except Exception:  # a DecodeError: invalid UTF-8 in the message, say
            return self._invalid("its message cannot be decoded", notices)
        outboxes = self.registry.outboxes
        route = routing.split(tmap, lambda g: g in outboxes)
        found = list(route.undeliverable)
        for gateway_id, delivery in route.deliveries:
            data = codec.delivery_to_pb(delivery).SerializeToString()
            box = outboxes[gateway_id]
            if not box.offer(wire.delivery_entry_from_body(data)):
                reason = self._refused(gateway_id, box)
                found.append(routing.not_delivered(gateway_id, tmap, reason))
        if not found:
            return notices
        notices = notices if notices is not None else []
        notices.extend(found)  # in place: a frame of many such maps stays linear
        return notices

    def _notify(self, att: Attachment, notices: list[Undeliverable]) -> None:
        registry = self.registry
        registry.undeliverable += len(notices)
        registry.undeliverable_by_reason.update(n.reason for n in notices)
        box = att.outbox
        if box.closed:  # the sender is being detached: no one is left to tell
            return
        dropped = 0
        encode = codec.undeliverable_bytes
        for start in range(0, len(notices), NOTICES_PER_ITEM):
            group = notices[start : start + NOTICES_PER_ITEM]
            if not box.offer_notice(wire.notice_fields(map(encode, group))):
                dropped += len(group)
        if dropped:
            registry.notices_dropped += dropped
            if att.drop_log.due():
                log.warning(
                    "gateway %s: outbox full, %d undeliverable notices for it dropped "
                    "(%d in all; the messages are in the recipients' inboxes)",
                    att.gateway_id,
                    dropped,
                    registry.notices_dropped,
                )


class _Notices:
    """Makes the notices of one map, decoding the map at most once (so N targets cost O(N))."""

    __slots__ = ("_tmap", "_wm", "problem")

    def __init__(self, wm: wire.WireMap) -> None:
        self._wm = wm
        self._tmap: TransmitMap | None = None
        self.problem: str | None = None

    def __call__(self, gateway_id: str, reason: UndeliverableReason) -> Undeliverable:
        tmap = self._tmap
        if tmap is None and self.problem is None:
            try:
                tmap = self._tmap = codec.transmit_map_from_bytes(self._wm.raw)
            except Exception:  # a DecodeError: the message cannot be decoded
                self.problem = "its message cannot be decoded"
        if tmap is None:
            return Undeliverable(GatewayId(gateway_id), (), (), reason)
        return routing.not_delivered(GatewayId(gateway_id), tmap, reason)
