"""HubServer: the transmit hub as a grpc.aio server, with health and reflection.

Usage::

    async with HubServer(HubConfig(listen="127.0.0.1:0")) as hub:
        print(hub.address)
        await hub.wait_closed()

Always on: gRPC server reflection and the standard ``grpc.health.v1.Health`` service
(SERVING once listening, NOT_SERVING while draining). Keepalive pings every few
seconds detect a dead peer (kill -9, cable pulled) in seconds; the server accepts the
link's pings (both ends' options are in :mod:`transmit_hub.transport`). A gateway stream
that goes silent is also probed by the hub itself and ended after twice
``gateway_keepalive`` seconds (:meth:`HubService.watch`), as fast as a gateway notices a
silent hub, even while the hub is writing to it; one that keeps sending but takes nothing
is ended once a write to it has been out for ``gateway_write_timeout`` seconds.

TLS (``tls``, a :class:`~transmit_hub.tls.ServerTls`): the port serves TLS only; with
a client CA, every RPC needs a client certificate signed by it, and a Connect stream
attaches only with a gateway id that is a DNS name of its certificate.

Shutdown (:meth:`HubServer.stop`): NOT_SERVING, stop accepting calls, stop reading
maps, let each gateway's outbox drain for up to ``grace`` seconds, then end every
Connect stream with UNAVAILABLE "hub shutting down; reconnect".
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

from grpc import aio  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from .attach import Attacher
from .auth import BearerTokenInterceptor
from .config import HubConfig, parse_listen
from .errors import ConfigError, LifecycleError
from .lifecycle import AsyncLifecycle
from .metrics import HubMetrics, MetricsServer
from .registry import Registry
from .service import HubService, add_to_server
from .tls import ServerTls
from .transport import SERVER_OPTIONS, SERVICE_NAME

__all__ = ["HubServer", "parse_listen"]

log = logging.getLogger(__name__)


def check_bindable(host: str, port: int) -> None:
    """Raise :class:`ConfigError` when ``host:port`` cannot be listened on right now.

    Checked before gRPC binds, so a port in use is reported in one line of ours.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: unknown host ({exc.strerror})"
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def default_hub_id() -> str:
    return f"hub-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class HubServer(AsyncLifecycle):
    """The transmit hub; an async context manager (``start`` on enter, ``stop`` on exit)."""

    def __init__(self, config: HubConfig | None = None, *, tls: ServerTls | None = None) -> None:
        """A hub with ``config`` (default: all defaults); ``tls`` replaces the config's TLS
        files (tests make certificates in memory)."""
        config = HubConfig() if config is None else config
        self.config = config
        self._host, self._requested_port = parse_listen(config.listen)
        self._listen = config.listen
        self.auth = (
            BearerTokenInterceptor(config.auth_token, max_waiting=config.max_hello_waiting)
            if config.auth_token
            else None
        )
        """The token check (None without ``--auth-token``): its ``refused`` count."""
        self._tls = tls if tls is not None else config.server_tls()
        self.hub_id = config.hub_id or default_hub_id()
        self._grace = config.grace
        self.registry = Registry(
            self.hub_id,
            config.queue_size,
            queue_bytes=config.queue_bytes,
            queue_bytes_total=config.queue_bytes_total,
            max_gateways=config.max_gateways,
            forget_after=config.forget_after,
        )
        attacher = Attacher(
            self.registry,
            hello_timeout=config.hello_timeout,
            max_hello_waiting=config.max_hello_waiting,
            claim_timeout=config.claim_timeout,
            ids_from_certificates=self._tls is not None and self._tls.mutual,
        )
        self.service = HubService(
            self.registry,
            attacher=attacher,
            gateway_keepalive=config.gateway_keepalive,
            gateway_write_timeout=config.gateway_write_timeout,
        )
        self._watch: asyncio.Task[None] | None = None
        self.metrics = HubMetrics(self.registry, self.service, self.auth)
        self._metrics_server: MetricsServer | None = None
        if config.metrics_listen:
            host, port = parse_listen(config.metrics_listen)
            self._metrics_server = MetricsServer(
                host,
                port,
                self.metrics.render,
                max_clients=config.metrics_max_clients,
                timeout=config.metrics_timeout,
            )
        self._server: Any = None
        self._health: Any = None
        self._port = 0
        self._stopping: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (``listen`` with port 0 picks a free one)."""
        if not self._port:
            raise LifecycleError("the hub is not started")
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` to connect to (the bound port)."""
        host = self._host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def metrics_port(self) -> int:
        """The bound port of ``metrics_listen`` (0 when metrics are not served)."""
        return self._metrics_server.port if self._metrics_server is not None else 0

    async def start(self) -> None:
        """Listen and serve; raises :class:`ConfigError` when the address is unusable."""
        if self._server is not None:
            raise LifecycleError("the hub is already started")
        if self._requested_port:
            check_bindable(self._host, self._requested_port)
        if self._metrics_server is not None:
            await self._metrics_server.start()
        interceptors = [self.auth] if self.auth is not None else []
        server = aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        add_to_server(self.service, server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            if self._tls is None:
                port = server.add_insecure_port(self._listen)
            else:
                port = server.add_secure_port(self._listen, self._tls.credentials())
        except RuntimeError:
            raise ConfigError(
                f"cannot listen on {self._listen}: address in use or not available"
            ) from None
        if not port:
            raise ConfigError(f"cannot listen on {self._listen}: address in use or not available")
        self._server = server
        self._port = port
        await server.start()
        self._watch = asyncio.create_task(self.service.watch(), name="hub-keepalive-watch")
        serving = health_pb2.HealthCheckResponse.SERVING
        await self._health.set("", serving)
        await self._health.set(SERVICE_NAME, serving)
        security = "plaintext"
        if self._tls is not None:
            security = "mutual TLS" if self._tls.mutual else "TLS"
        log.info(
            "transmit hub %s listening on %s (%s%s)",
            self.hub_id,
            self.address,
            security,
            ", auth token required" if self.auth is not None else "",
        )

    async def close(self) -> None:
        """Stop with the configured grace period (see :meth:`stop`); idempotent."""
        await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        """Drain for up to ``grace`` seconds (default: the constructor's), then stop."""
        if self._server is None:
            if self._metrics_server is not None:
                await self._metrics_server.close()
            self._closed.set()
            return
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._stop(self._grace if grace is None else grace)
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        log.info("transmit hub %s stopping (grace %ss)", self.hub_id, grace)
        try:
            await self._health.enter_graceful_shutdown()
            if self.auth is not None:
                self.auth.stop_waiting()
            # Refuse new calls now; calls in flight get until after the drain.
            stopped = asyncio.ensure_future(self._server.stop(grace + 1.0))
            await self.service.drain(grace)
            await stopped
        finally:
            if self._watch is not None:
                self._watch.cancel()
                await asyncio.wait([self._watch])
            if self._metrics_server is not None:
                await self._metrics_server.close()
            self._closed.set()
            log.info("transmit hub %s stopped", self.hub_id)

    async def wait_closed(self) -> None:
        """Wait until :meth:`stop` has finished."""
        await self._closed.wait()
