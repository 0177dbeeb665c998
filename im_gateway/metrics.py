"""The gateway's Prometheus metrics, served at ``GET /metrics`` on its port.

Each :class:`~im_gateway.gateway.Gateway` owns a :class:`GatewayMetrics` with its own
``CollectorRegistry`` (tests run several gateways in one process; nothing goes to the
global default registry).

Nothing on the message path touches a prometheus object (their ``inc`` and ``observe``
take a lock and cost one to four microseconds each). The hooks only add to plain
integers and to :class:`~im_gateway.histogram.FastHistogram` bucket counts (a bisect and
an increment), and
:class:`_Collector` turns them into Prometheus families when a scrape comes, in the
event loop, so nothing races. Gauges that are cheap to read (connections, queue depths,
store slots, hub links) are read from the gateway's parts at scrape time
(:mod:`im_gateway.gauges`). Work done per batch (a store call, a batch's size and its
accepted messages) is counted once per batch.

``IM_GATEWAY_METRICS_OFF=1`` (for the end-to-end bench's on/off comparison only) makes
every hook a no-op (:class:`NullMetrics`) and ``/metrics`` answer 404.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Final, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import frames
from .gauges import Watched, gateway_gauges
from .histogram import FastHistogram
from .store import Accepted, Refused, Store

__all__ = [
    "CONTENT_TYPE",
    "FastHistogram",
    "GatewayMetrics",
    "NullMetrics",
    "TimedStore",
    "from_env",
]

OFF_ENV: Final = "IM_GATEWAY_METRICS_OFF"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
STORE_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

STORE_CALLS: Final = (
    "submit", "join", "leave", "members", "is_member", "attach", "detach", "refresh",
    "forget", "lookup", "read_inbox", "ack", "acked", "opening", "beacon", "ping",
)  # fmt: skip
"""The :class:`~im_gateway.store.Store` calls that are timed (``close`` is not)."""

_IN_KIND: Final[dict[object, str]] = {
    frames.Heartbeat: "0",
    frames.Ack: "11",
    frames.Replay: "14",
}


class GatewayMetrics:
    """The gateway's metrics: hooks for its parts, and the registry ``/metrics`` renders."""

    enabled = True

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.accepted = 0
        """Messages stored for every recipient."""
        self.refusals: collections.Counter[str] = collections.Counter()
        """Frames answered type 99, by code."""
        self.handshakes: collections.Counter[str] = collections.Counter()
        """Handshakes refused, by reason."""
        self.store_seconds = {call: FastHistogram(STORE_BUCKETS) for call in STORE_CALLS}
        self.store_errors: collections.Counter[str] = collections.Counter()
        self.batch_sizes = FastHistogram(BATCH_BUCKETS)
        self.push_hub = FastHistogram(LATENCY_BUCKETS)
        self.push_local = FastHistogram(LATENCY_BUCKETS)
        # defaultdict, not Counter: ``d[k] += 1`` is twice as fast on a C-level subclass.
        self.frames_in: collections.defaultdict[object, int] = collections.defaultdict(int)
        """Frames received, by type (its class when it has no type field; ``"invalid"``)."""
        self.frames_out: collections.defaultdict[str, int] = collections.defaultdict(int)
        """Frames queued for sockets, by the first characters of their type."""
        self.replays: collections.Counter[str] = collections.Counter()
        """Inbox replays run, by kind: ``connect`` or ``asked`` (type 14)."""
        self.hole_fills = 0
        """Inbox reads that filled a hole in a connection's positions."""
        self.api_answers: collections.Counter[tuple[str, int]] = collections.Counter()
        """Server API answers, by method (``other``: no method of the API) and status."""
        self.draining = False
        self._gateway: Watched | None = None

    def watch(self, gateway: Watched) -> None:
        """Read ``gateway``'s gauges at scrape time."""
        self._gateway = gateway
        self.registry.register(_Collector(self))

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    # --- hooks (one call each, where the work happens) ----------------------------------

    def frame_in(self, frame: object) -> None:
        """A client frame was parsed (``frame``) or could not be (``None``)."""
        self.frames_in["invalid" if frame is None else getattr(frame, "type", frame.__class__)] += 1

    def frame_out(self, text: str) -> None:
        """A frame is queued for a socket (its type is read from its first characters)."""
        self.frames_out[text[8:10]] += 1

    def refused(self, code: str) -> None:
        """A frame was answered type 99 with ``code``."""
        self.refusals[code] += 1

    def handshake_refused(self, reason: str) -> None:
        """A WebSocket handshake was refused (``reason``: a short code)."""
        self.handshakes[reason] += 1

    def stored(self, batch: int, results: Iterable[Accepted | Refused]) -> None:
        """One batch went through the store."""
        self.batch_sizes.observe(batch)
        self.accepted += sum(1 for r in results if isinstance(r, Accepted))

    def pushed(self, message_time_ms: int) -> None:
        """A message share from the hub is written to this gateway's sockets."""
        self.push_hub.observe_since(message_time_ms)

    def pushed_all(self, message_times_ms: Sequence[int]) -> None:
        """:meth:`pushed` for each message share of one frame from the hub."""
        self.push_hub.observe_all_since(message_times_ms)

    def pushed_local(self, message_time_ms: int) -> None:
        """A message stored here is written to a recipient's socket on this gateway."""
        self.push_local.observe_since(message_time_ms)

    def replay(self, kind: str) -> None:
        self.replays[kind] += 1

    def hole_fill(self) -> None:
        self.hole_fills += 1

    def api_answered(self, method: str, status: int) -> None:
        """The server API answered a request for ``method`` with ``status``."""
        self.api_answers[method, status] += 1

    def timed(self, store: Store) -> Store:
        """``store`` with every call timed (:class:`TimedStore`)."""
        return cast(Store, TimedStore(store, self))


class NullMetrics(GatewayMetrics):
    """Metrics off: every hook does nothing (the bench's baseline, and the parts' default
    when they run without a gateway, as in unit tests)."""

    enabled = False

    def watch(self, gateway: Watched) -> None:
        pass

    def frame_in(self, frame: object) -> None:
        pass

    def frame_out(self, text: str) -> None:
        pass

    def refused(self, code: str) -> None:
        pass

    def handshake_refused(self, reason: str) -> None:
        pass

    def stored(self, batch: int, results: Iterable[Accepted | Refused]) -> None:
        pass

    def pushed(self, message_time_ms: int) -> None:
        pass

    def pushed_all(self, message_times_ms: Sequence[int]) -> None:
        pass

    def pushed_local(self, message_time_ms: int) -> None:
        pass

    def replay(self, kind: str) -> None:
        pass

    def hole_fill(self) -> None:
        pass

    def api_answered(self, method: str, status: int) -> None:
        pass

    def timed(self, store: Store) -> Store:
        return store


def from_env() -> GatewayMetrics:
    """:class:`NullMetrics` when ``IM_GATEWAY_METRICS_OFF`` is set (the bench), else on."""
    if os.environ.get(OFF_ENV, "").strip() not in ("", "0"):
        return NullMetrics()
    return GatewayMetrics()


class TimedStore:
    """A :class:`~im_gateway.store.Store` whose calls observe ``im_gateway_store_seconds``
    and count ``im_gateway_store_errors_total``; everything else is the wrapped store's."""

    def __init__(self, store: Store, metrics: GatewayMetrics) -> None:
        self._store = store
        for name in STORE_CALLS:
            setattr(self, name, _timed(getattr(store, name), name, metrics))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _timed(
    call: Callable[..., Awaitable[Any]], name: str, metrics: GatewayMetrics
) -> Callable[..., Awaitable[Any]]:
    observe = metrics.store_seconds[name].observe
    errors = metrics.store_errors
    clock = time.perf_counter

    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return await call(*args, **kwargs)
        except Exception:
            errors[name] += 1
            raise
        finally:
            observe(clock() - start)

    return timed


class _Collector(Collector):
    """Reads the gateway's gauges and plain counts when Prometheus scrapes."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._m = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: names are only known from collect()

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield CounterMetricFamily(
            "im_gateway_messages_accepted",
            "Messages stored for every recipient (answered type 10 or an API success).",
            value=m.accepted,
        )
        yield _labelled(
            "im_gateway_frames_refused", "Frames answered type 99, by code.", "code", m.refusals
        )
        yield _labelled(
            "im_gateway_handshakes_refused",
            "WebSocket handshakes refused before the upgrade, by reason.",
            "reason",
            m.handshakes,
        )
        store = HistogramMetricFamily(
            "im_gateway_store_seconds", "Latency of store (Redis) calls, by call.", labels=["call"]
        )
        for call, hist in m.store_seconds.items():
            store.add_metric([call], hist.buckets(), hist.sum)
        yield store
        errors = CounterMetricFamily(
            "im_gateway_store_errors", "Store (Redis) calls that raised, by call.", labels=["call"]
        )
        for call in STORE_CALLS:
            errors.add_metric([call], m.store_errors[call])
        yield errors
        batches = HistogramMetricFamily(
            "im_gateway_batch_size", "Messages per store batch (one Redis round trip)."
        )
        batches.add_metric([], m.batch_sizes.buckets(), m.batch_sizes.sum)
        yield batches
        push = HistogramMetricFamily(
            "im_gateway_push_latency_seconds",
            "From a message's server time to its write on a receiving socket of this "
            "gateway; path: hub (pushed by another gateway through a hub) or local.",
            labels=["path"],
        )
        for path, hist in (("hub", m.push_hub), ("local", m.push_local)):
            push.add_metric([path], hist.buckets(), hist.sum)
        yield push
        frames_in = CounterMetricFamily(
            "im_gateway_frames_in", "Client frames received, by type.", labels=["type"]
        )
        by_kind: collections.Counter[str] = collections.Counter()
        for key, n in m.frames_in.items():
            by_kind[_IN_KIND.get(key, str(key))] += n
        for kind, n in sorted(by_kind.items()):
            frames_in.add_metric([kind], n)
        yield frames_in
        frames_out = CounterMetricFamily(
            "im_gateway_frames_out", "Frames queued for sockets, by type.", labels=["type"]
        )
        by_type: collections.Counter[str] = collections.Counter()
        for head, n in m.frames_out.items():
            by_type[head.rstrip(",}")] += n
        for kind, n in sorted(by_type.items()):
            frames_out.add_metric([kind], n)
        yield frames_out
        replays = CounterMetricFamily(
            "im_gateway_replays", "Inbox replays run, by kind.", labels=["kind"]
        )
        for kind in ("connect", "asked"):
            replays.add_metric([kind], m.replays[kind])
        yield replays
        yield CounterMetricFamily(
            "im_gateway_hole_fills",
            "Inbox reads that filled a hole in a connection's positions.",
            value=m.hole_fills,
        )
        api = CounterMetricFamily(
            "im_gateway_api_requests",
            "Server API answers, by method (other: a path that names no method) and status.",
            labels=["method", "status"],
        )
        for (method, status), n in sorted(m.api_answers.items()):
            api.add_metric([method, str(status)], n)
        yield api
        yield GaugeMetricFamily(
            "im_gateway_draining", "1 while the gateway drains (SIGTERM).", value=m.draining
        )
        gateway = m._gateway
        if gateway is not None:
            yield from gateway_gauges(gateway)


def _labelled(
    name: str, documentation: str, label: str, counts: collections.Counter[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family
