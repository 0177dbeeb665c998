"""The hub's Prometheus metrics, and a small HTTP server that serves a registry.

:class:`HubMetrics` reads the hub's own counters (:class:`~transmit_hub.registry.Registry`,
:class:`~transmit_hub.service.HubService`) when Prometheus scrapes: the routing path
keeps counting plain integers as it always did and pays nothing more. Each hub owns its
``CollectorRegistry`` (tests run several hubs in one process).

:class:`MetricsServer` answers ``GET /metrics`` on its own address (the hub's
``--metrics-listen``; the gateway's probe uses it too), in the event loop, one request
per connection, with bounded request size, time and concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ConfigError
from .types import UndeliverableReason

if TYPE_CHECKING:
    from .auth import BearerTokenInterceptor
    from .registry import Registry
    from .service import HubService

__all__ = ["CONTENT_TYPE", "HubMetrics", "MetricsServer"]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST: Final = 8192
"""Bytes of request line and headers read before the request is refused."""
REQUEST_TIMEOUT: Final = 5.0
"""Seconds a connection has to send its request and take the answer (the default)."""
MAX_CLIENTS: Final = 16
"""Scrapes served at once (the default). A connection beyond them closes the oldest one
still waiting for its request (a slow or silent client), so silent clients cannot lock a
scraper out; when every one has sent its request, the new connection is closed at once."""


class HubMetrics:
    """The hub's metrics, read at scrape time from its registry and service."""

    def __init__(
        self, registry: Registry, service: HubService, auth: BearerTokenInterceptor | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_HubCollector(registry, service, auth))

    def render(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class _HubCollector(Collector):
    def __init__(
        self, registry: Registry, service: HubService, auth: BearerTokenInterceptor | None
    ) -> None:
        self._registry = registry
        self._service = service
        self._auth = auth

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        reg = self._registry
        service = self._service
        attachments = reg.attachments()
        yield GaugeMetricFamily(
            "transmit_hub_gateways_attached", "Gateways attached now.", value=len(attachments)
        )
        yield CounterMetricFamily(
            "transmit_hub_maps_received",
            "TransmitMaps received from gateways.",
            value=reg.transmit_maps_received,
        )
        yield CounterMetricFamily(
            "transmit_hub_deliveries_sent",
            "Message shares written toward gateways (one per message per target gateway).",
            value=reg.deliveries_sent,
        )
        undeliverable = CounterMetricFamily(
            "transmit_hub_undeliverable",
            "Shares not passed on, by reason (not_attached, queue_full, invalid).",
            labels=["reason"],
        )
        for reason in UndeliverableReason:
            if reason is not UndeliverableReason.UNSPECIFIED:
                n = reg.undeliverable_by_reason[reason]
                undeliverable.add_metric([reason.name.lower()], n)
        yield undeliverable
        yield CounterMetricFamily(
            "transmit_hub_notices_dropped",
            "Undeliverable notices dropped because the sender's own outbox was full.",
            value=reg.notices_dropped,
        )
        yield CounterMetricFamily(
            "transmit_hub_frames_in",
            "Request frames read from Connect streams.",
            value=reg.frames_in,
        )
        yield CounterMetricFamily(
            "transmit_hub_frames_out",
            "Delivery frames written to Connect streams.",
            value=reg.frames_out,
        )
        depths = [len(a.outbox) for a in attachments]
        yield GaugeMetricFamily(
            "transmit_hub_outbox_items",
            "Items waiting in the gateways' outboxes, in all.",
            value=sum(depths),
        )
        yield GaugeMetricFamily(
            "transmit_hub_outbox_max",
            "The fullest gateway outbox (items).",
            value=max(depths, default=0),
        )
        yield GaugeMetricFamily(
            "transmit_hub_outbox_capacity",
            "Items each gateway's outbox holds.",
            value=reg.queue_size,
        )
        budget = reg.budget
        yield GaugeMetricFamily(
            "transmit_hub_outbox_bytes",
            "Bytes held toward gateways, in all: waiting in their outboxes, and in the frames "
            "being written to them.",
            value=budget.total,
        )
        yield GaugeMetricFamily(
            "transmit_hub_outbox_bytes_writing",
            "Of transmit_hub_outbox_bytes, the bytes in the frames being written to gateways.",
            value=budget.writing,
        )
        yield GaugeMetricFamily(
            "transmit_hub_outbox_bytes_limit",
            "Bytes all the gateways' outboxes hold together (--queue-bytes-total).",
            value=budget.limit,
        )
        yield CounterMetricFamily(
            "transmit_hub_outbox_bytes_refused",
            "Deliveries refused QUEUE_FULL because the outboxes together held --queue-bytes-total.",
            value=budget.refused,
        )
        yield GaugeMetricFamily(
            "transmit_hub_hello_waiting",
            "Streams open that have not sent their Hello yet.",
            value=service.hello_waiting,
        )
        yield CounterMetricFamily(
            "transmit_hub_hello_evicted",
            "Streams ended before their Hello to make room (--max-hello-waiting was full).",
            value=service.hello_evicted,
        )
        yield CounterMetricFamily(
            "transmit_hub_keepalive_probes",
            "Probes sent to gateway streams the hub had heard nothing from.",
            value=service.keepalive_probes,
        )
        yield CounterMetricFamily(
            "transmit_hub_silent_detached",
            "Gateway streams ended for silence (no answer within twice --gateway-keepalive).",
            value=service.silent_detached,
        )
        yield CounterMetricFamily(
            "transmit_hub_stalled_detached",
            "Gateway streams ended because a write to them made no progress "
            "(--gateway-write-timeout).",
            value=service.stalled_detached,
        )
        yield CounterMetricFamily(
            "transmit_hub_unauthenticated",
            "Calls refused for a missing or wrong token (--auth-token).",
            value=self._auth.refused if self._auth is not None else 0,
        )
        yield GaugeMetricFamily(
            "transmit_hub_draining", "1 while the hub shuts down.", value=service.draining
        )
        per_gateway = CounterMetricFamily(
            "transmit_hub_gateway_deliveries_sent",
            "Message shares written toward each attached gateway since the hub started.",
            labels=["gateway"],
        )
        for a in attachments:
            per_gateway.add_metric([a.gateway_id], a.counters.deliveries_sent)
        yield per_gateway


class MetricsServer:
    """Serves ``render()`` at ``GET /metrics`` on ``host:port``; an async context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        render: Callable[[], bytes],
        *,
        max_clients: int = MAX_CLIENTS,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        if max_clients < 1 or not timeout > 0:
            raise ConfigError("a metrics server needs max_clients >= 1 and a timeout > 0")
        self._host = host
        self._max_clients = max_clients
        self._timeout = timeout
        self._requested = port
        self._render = render
        self._server: asyncio.Server | None = None
        self._clients = 0
        self._waiting: dict[asyncio.StreamWriter, None] = {}
        """Connections without their request yet, oldest first."""
        self.evicted = 0
        """Connections closed to make room for a new one (logged once, then counted)."""
        self.port = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._requested, limit=MAX_REQUEST
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self._host}:{self._requested}: {exc.strerror or exc}"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop serving; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= self._max_clients:
            if not self._waiting:
                writer.close()
                return
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.transport.abort()  # its handler ends at once and gives its place back
            self.evicted += 1
            if self.evicted == 1:
                log.warning(
                    "metrics port full (%d connections): closing the oldest that has not "
                    "sent its request (more are counted, not logged)",
                    self._max_clients,
                )
        self._clients += 1
        self._waiting[writer] = None
        try:
            async with asyncio.timeout(self._timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                self._waiting.pop(writer, None)
                status, body, kind = self._answer(head.split(b"\r\n", 1)[0])
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n"
                    % (status, _REASONS[status], kind.encode(), len(body))
                    + body
                )
                await writer.drain()
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        except Exception:
            log.exception("serving a metrics request failed")
        finally:
            self._waiting.pop(writer, None)
            self._clients -= 1
            writer.close()

    def _answer(self, line: bytes) -> tuple[int, bytes, str]:
        parts = line.split()
        if len(parts) != 3:
            return 400, b"bad request\n", "text/plain"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return 404, b"not found; try /metrics\n", "text/plain"
        if method != b"GET":
            return 405, b"use GET\n", "text/plain"
        return 200, self._render(), CONTENT_TYPE


_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
}
