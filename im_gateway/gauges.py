"""The gateway's gauges, read from its parts when Prometheus scrapes
(:mod:`im_gateway.metrics` serves them): connections, queue depths, store slots, hub
links. Cheap to read, so nothing on a message's path counts them.

:class:`Watched` is what they read of a gateway (:class:`~im_gateway.gateway.Gateway` is
one); a protocol, so that this module imports nothing that imports it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["Watched", "gateway_gauges"]


class _HubLink(Protocol):
    @property
    def connected(self) -> bool: ...


class _Queue(Protocol):
    @property
    def queued(self) -> int: ...


class _Local(Protocol):
    """What the gauges read of the gateway's local sessions (its fan-out)."""

    def sessions(self) -> Sequence[_Queue]: ...


class _Slots(Protocol):
    @property
    def held(self) -> int: ...

    @property
    def busy(self) -> int: ...


class Watched(Protocol):
    """What the gauges read of a gateway at scrape time (:class:`~im_gateway.gateway.Gateway`
    is one); a protocol, so that this module imports nothing that imports it."""

    @property
    def fanout(self) -> _Local: ...

    @property
    def pipeline(self) -> _Queue: ...

    @property
    def hub_link(self) -> _HubLink | None: ...

    @property
    def slots(self) -> _Slots | None: ...


def gateway_gauges(gateway: Watched) -> Iterator[Metric]:
    try:
        local: _Local | None = gateway.fanout
        pipeline: _Queue | None = gateway.pipeline
    except RuntimeError:  # not started yet
        local = pipeline = None
    sessions = local.sessions() if local is not None else []
    yield GaugeMetricFamily(
        "im_gateway_connections", "Open WebSocket connections.", value=len(sessions)
    )
    yield GaugeMetricFamily(
        "im_gateway_pipeline_queued",
        "Messages waiting for the store batch worker.",
        value=pipeline.queued if pipeline is not None else 0,
    )
    queued = [s.queued for s in sessions]
    yield GaugeMetricFamily(
        "im_gateway_send_queued",
        "Frames waiting in connections' send queues (sockets that are backed up), in all.",
        value=sum(queued),
    )
    yield GaugeMetricFamily(
        "im_gateway_send_queue_max",
        "The longest send queue of any connection.",
        value=max(queued, default=0),
    )
    yield GaugeMetricFamily(
        "im_gateway_connections_backed_up",
        "Connections with frames waiting in their send queue.",
        value=sum(1 for q in queued if q),
    )
    slots = gateway.slots
    yield GaugeMetricFamily(
        "im_gateway_store_slots_held",
        "Store slots (--store-concurrency) held by replay, ack and group calls.",
        value=slots.held if slots is not None else 0,
    )
    yield CounterMetricFamily(
        "im_gateway_store_slot_timeouts",
        "Replay, ack and group calls that got no store slot within --store-wait (each "
        "failed as a store failure: Redis slow or silent).",
        value=slots.busy if slots is not None else 0,
    )
    link = gateway.hub_link
    hubs: dict[str, str] = getattr(link, "hubs", None) or {
        "hub": "up" if link is not None and link.connected else "down"
    }
    states = collections.Counter(hubs.values())
    links = GaugeMetricFamily(
        "im_gateway_hub_links", "Hub links, by state (up or down).", labels=["state"]
    )
    for state in ("up", "down"):
        links.add_metric([state], states[state])
    yield links
    yield GaugeMetricFamily(
        "im_gateway_hub_outbox",
        "Maps waiting to be written to a hub (the pool's backlog and every link's buffer).",
        value=getattr(link, "pending", 0),
    )
    yield CounterMetricFamily(
        "im_gateway_hub_resent",
        "Maps sent again through another hub after a stream broke.",
        value=getattr(link, "resent", 0),
    )
    yield CounterMetricFamily(
        "im_gateway_hub_rerouted",
        "Shares tried on another hub after a not-attached notice.",
        value=getattr(link, "rerouted", 0),
    )
