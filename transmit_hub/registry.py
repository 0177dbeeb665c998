"""The attached gateways, keyed by the id each declares, and the hub's counters.

A gateway is known by the id it sends in its Hello, never by its socket address (the
reference keyed them by ephemeral address and never removed them). The registry holds
at most one attachment per id: a second stream with the same id replaces the first,
whose stream the service then ends with ABORTED. The service detaches in a
``finally`` when a stream ends, and only removes the entry if it is still the
registered one (a replaced stream must not remove its successor).

Counters live per gateway id, attached or not, so GetStats keeps a gateway's history
across reconnects; the counters of a gateway that left are forgotten ``forget_after``
seconds later, and at most ``max_gateways`` left gateways are remembered (the
longest gone first), so GetStats stays small whatever ids gateways declared. At most
``max_gateways`` are attached at once (:meth:`Registry.full`). The outboxes of the
attached gateways share one :class:`~transmit_hub.outbox.ByteBudget` of
``queue_bytes_total`` bytes (:attr:`Registry.budget`); a detached stream's outbox is
discarded, which gives back the bytes it still holds, waiting or in the frame its writer
was writing. No I/O here; asyncio only for the events the service waits on.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConfigError
from .outbox import ByteBudget, Outbox
from .throttle import Every
from .types import GatewayId, GatewayInfo, GatewayStats, HubStats

__all__ = ["Attachment", "EndReason", "GatewayCounters", "Registry"]

log = logging.getLogger(__name__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class EndReason(enum.Enum):
    """Why the hub ends an attached gateway's stream."""

    REPLACED = "replaced"
    """A newer stream declared the same gateway id, and this one did not answer a probe."""
    SHUTDOWN = "shutdown"
    """The hub is shutting down."""
    SILENT = "silent"
    """Nothing came from the stream for the keepalive deadline, probes included: the
    gateway, or the network to it, is dead or stuck (see :meth:`Registry.silent`)."""
    STALLED = "stalled"
    """A write to the stream made no progress for the write deadline: the gateway takes
    nothing (though it may still send), so its outbox fills and maps for it would be
    refused QUEUE_FULL for as long as it stays (see :meth:`Registry.stalled`)."""


@dataclass(slots=True)
class GatewayCounters:
    """Counters for one gateway id since the hub started."""

    deliveries_sent: int = 0
    """One per message share written toward this gateway."""
    transmit_maps_received: int = 0
    """Maps this gateway sent to the hub."""
    queue_full: int = 0
    """Shares for this gateway refused because its outbox was full."""


@dataclass(eq=False, slots=True)
class Attachment:
    """One Connect stream that declared ``gateway_id``."""

    gateway_id: GatewayId
    peer: str
    outbox: Outbox
    counters: GatewayCounters
    attached_at: int = field(default_factory=now_ms)
    end_reason: EndReason | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    probe_nonce: int = 0
    """The nonce of the last probe sent to this stream (0: none yet)."""
    probe_due: bool = False
    """A probe waits for the writer."""
    probe_answered: asyncio.Event = field(default_factory=asyncio.Event)
    drop_log: Every = field(default_factory=lambda: Every(1.0))
    """Notices for this stream dropped: logged one line a second at most."""
    heard_at: float = field(default_factory=time.monotonic)
    """When the hub last read a frame from this stream (maps and probe answers alike)."""
    writing_since: float = 0.0
    """When the writer started the write it is in (``time.monotonic``; 0: in none): set
    and cleared once per frame, never per delivery."""

    def probe(self, nonce: int) -> None:
        """Ask the writer to send a Probe with ``nonce`` (answered: ``probe_answered``)."""
        self.probe_nonce = nonce
        self.probe_due = True
        self.probe_answered.clear()
        self.outbox.poke()

    def keepalive(self) -> None:
        """Ask the writer to send a Probe, keeping the nonce of one in flight (a claim may
        be waiting for its answer: any answer to it says the stream is alive)."""
        if not self.probe_nonce:
            self.probe_nonce = 1
        self.probe_due = True
        self.outbox.poke()

    def answered(self, nonce: int) -> None:
        """The stream answered a probe (an old or unknown nonce counts for nothing)."""
        if nonce and nonce == self.probe_nonce:
            self.probe_answered.set()

    def end(self, reason: EndReason) -> None:
        """Ask the stream to end (its service handler turns ``reason`` into a status)."""
        if self.end_reason is None:
            self.end_reason = reason
        self.outbox.close()
        self.ended.set()


class Registry:
    """Attached gateways by id, per-gateway counters and hub totals."""

    def __init__(
        self,
        hub_id: str,
        queue_size: int,
        *,
        queue_bytes: int = 64 * 1024 * 1024,
        queue_bytes_total: int = 1024 * 1024 * 1024,
        max_gateways: int = 4096,
        forget_after: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_gateways < 1:
            raise ConfigError("max_gateways must be at least 1")
        if forget_after < 0:
            raise ConfigError("forget_after must not be negative")
        self.hub_id = hub_id
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        """Most bytes one gateway's outbox holds, waiting or being written (one item always
        fits an empty one)."""
        self.budget = ByteBudget(queue_bytes_total)
        """The bytes all the outboxes hold together (waiting, and in the frames being
        written), and their bound (an empty outbox always takes one item): what every
        attached gateway's outbox shares."""
        self.max_gateways = max_gateways
        self.forget_after = forget_after
        self._clock = clock
        self._left: dict[str, float] = {}
        """Gateway id -> when it detached, oldest first: whose counters to forget."""
        self.started_at = now_ms()
        self.outboxes: dict[str, Outbox] = {}
        """Attached gateway id -> its outbox: the hot path's one look-up per target."""
        self._attached: dict[str, Attachment] = {}
        self._counters: dict[str, GatewayCounters] = {}
        self.transmit_maps_received = 0
        self.deliveries_sent = 0
        self.undeliverable = 0
        """Undeliverable notices issued (all reasons), whether or not they could be queued."""
        self.queue_full = 0
        self.notices_dropped = 0
        """Notices lost because the sender's own outbox was full too."""
        self.undeliverable_by_reason: collections.Counter[int] = collections.Counter()
        """Undeliverable notices by :class:`~transmit_hub.types.UndeliverableReason`."""
        self.frames_in = 0
        """Request frames read from Connect streams (for metrics)."""
        self.frames_out = 0
        """Delivery frames written to Connect streams (for metrics)."""

    def counters(self, gateway_id: str) -> GatewayCounters:
        c = self._counters.get(gateway_id)
        if c is None:
            c = self._counters[gateway_id] = GatewayCounters()
        return c

    def holder(self, gateway_id: str) -> Attachment | None:
        """The stream holding ``gateway_id`` now, if any."""
        return self._attached.get(gateway_id)

    def full(self, gateway_id: str) -> bool:
        """Whether attaching ``gateway_id`` would pass ``max_gateways`` attached gateways."""
        return gateway_id not in self._attached and len(self._attached) >= self.max_gateways

    def forget(self) -> int:
        """Drop the counters of gateways gone for ``forget_after`` s, or beyond the bound."""
        left = self._left
        if not left:
            return 0
        deadline = self._clock() - self.forget_after
        forgotten = 0
        for gateway_id, since in list(left.items()):  # oldest first
            if since > deadline and len(left) <= self.max_gateways:
                break
            del left[gateway_id]
            self._counters.pop(gateway_id, None)
            forgotten += 1
        return forgotten

    def attach(self, gateway_id: GatewayId, peer: str) -> Attachment:
        """Register a new stream for ``gateway_id``, replacing (ending) any previous one.

        Deliveries still queued for the replaced stream move to the new one.
        """
        self._left.pop(gateway_id, None)
        att = Attachment(
            gateway_id,
            peer,
            Outbox(self.queue_size, self.queue_bytes, self.budget),
            self.counters(gateway_id),
        )
        old = self._attached.get(gateway_id)
        if old is not None:
            log.info("gateway %s attached again from %s: replacing %s", gateway_id, peer, old.peer)
            old.end(EndReason.REPLACED)
            att.outbox.adopt(old.outbox)
        else:
            log.info("gateway %s attached from %s", gateway_id, peer)
        self._attached[gateway_id] = att
        self.outboxes[gateway_id] = att.outbox
        return att

    def detach(self, att: Attachment) -> bool:
        """Remove ``att`` if it is still the registered stream for its id. Its outbox is
        discarded either way (a replaced stream's successor has adopted what fitted):
        what still waits in it is dropped, and its bytes and those of the frame being
        written to it go back to :attr:`budget`."""
        att.outbox.discard()
        if self._attached.get(att.gateway_id) is not att:
            return False
        del self._attached[att.gateway_id]
        del self.outboxes[att.gateway_id]
        self._left[att.gateway_id] = self._clock()
        log.info("gateway %s detached (%s)", att.gateway_id, att.peer)
        self.forget()
        return True

    def silent(self, now: float, keepalive: float) -> tuple[list[Attachment], list[Attachment]]:
        """The streams to probe (nothing read from them for ``keepalive`` s) and those to
        end (nothing for twice that, though probed): a gateway notices a silent hub by its
        keepalive pings in about twice its ``--hub-keepalive``; the hub notices a silent
        gateway as fast, even while it writes to it (a write into a dead connection can
        go on succeeding until the buffers fill, and gRPC's own pings may then never go
        out). Pure: the caller sends the probes and ends the streams."""
        probe: list[Attachment] = []
        end: list[Attachment] = []
        for att in self._attached.values():
            if att.end_reason is not None:
                continue  # ending already
            quiet = now - att.heard_at
            if quiet >= 2 * keepalive:
                end.append(att)
            elif quiet >= keepalive:
                probe.append(att)
        return probe, end

    def stalled(self, now: float, limit: float) -> list[Attachment]:
        """The streams to end because one write to them has been out for ``limit`` s or
        more: a gateway that reads nothing holds the writer in a write (HTTP/2 flow
        control), while its outbox fills, even as it keeps sending, so :meth:`silent`
        never sees it. A gateway that reads, however slowly, completes each write (a
        frame holds what waited: at most 4 MiB, or one bigger delivery) and starts the
        clock again. Pure: the caller ends the streams."""
        return [
            att
            for att in self._attached.values()
            if att.writing_since and now - att.writing_since >= limit and att.end_reason is None
        ]

    def attachments(self) -> list[Attachment]:
        return list(self._attached.values())

    def is_attached(self, gateway_id: GatewayId) -> bool:
        return gateway_id in self._attached

    def gateways(self) -> list[GatewayInfo]:
        """The attached gateways, sorted by id."""
        return [
            GatewayInfo(a.gateway_id, a.peer, a.attached_at, len(a.outbox))
            for _, a in sorted(self._attached.items())
        ]

    def stats(self) -> HubStats:
        """The counters since start: attached gateways and those not yet forgotten, by id."""
        self.forget()
        gateways = tuple(
            GatewayStats(
                gateway_id=GatewayId(gid),
                deliveries_sent=c.deliveries_sent,
                transmit_maps_received=c.transmit_maps_received,
                queue_full=c.queue_full,
                attached=gid in self._attached,
            )
            for gid, c in sorted(self._counters.items())
        )
        return HubStats(
            hub_id=self.hub_id,
            started_at=self.started_at,
            transmit_maps_received=self.transmit_maps_received,
            deliveries_sent=self.deliveries_sent,
            undeliverable=self.undeliverable,
            queue_full=self.queue_full,
            gateways=gateways,
        )
