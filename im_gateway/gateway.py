"""The gateway: the composition root, and the lifecycle of its parts.

``Gateway`` wires the parts together and owns their lifecycles. A message's way::

    Session --submit--> Pipeline --store.submit--> Store (Redis)
       ^                   |  \\--settled/failed--> the caller (type 10 / 99, or an API reply)
       |                   v
       +--deliver/own-- Fanout --TransmitMap--> HubPool ==> transmit hubs ==> other gateways
                           ^------ Delivered / NotDelivered / LinkUp --- hub link

Sessions and the server API are two kinds of callers of one
:class:`~im_gateway.pipeline.Pipeline`; the :class:`~im_gateway.fanout.Fanout` knows only
the small :class:`~im_gateway.ports.Connection` protocol of a socket, so neither calls
back into the other. A session is given both (its ``Submit`` and ``Groups`` protocols).

One port for WebSocket users and a few plain HTTP endpoints: the HTTP answers and the
admission of an upgrade are in :mod:`im_gateway.http`, the connection class (the only
code that touches websockets' internals) in :mod:`im_gateway.ws`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.server import Server, ServerConnection

from transmit_hub.lifecycle import AsyncLifecycle
from transmit_hub.pool import HubPool
from transmit_hub.transport import channel_options
from transmit_hub.types import GatewayId

from . import backlog, descriptors, faults, http, metrics, ws
from .acks import AckRounds
from .api import ApiServer
from .close_codes import CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_SERVICE_RESTART
from .config import GatewayConfig, default_gateway_id, parse_host_port
from .errors import LifecycleError, StartupError
from .fanout import Fanout
from .keepalive import sweep_idle
from .pipeline import Pipeline
from .ports import Link
from .presence import Presence
from .session_limits import SessionLimits
from .sessions import Session
from .slots import Slots
from .store import Store, open_store
from .tasks import cancel_and_wait
from .tls_accept import Handshakes

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT = 1.0
DRAIN_POLL = 0.01
"""Seconds between checks that a draining gateway has answered what it took."""


class Gateway(AsyncLifecycle):
    """An IM gateway with its :class:`GatewayConfig`; an async context manager.

    ``store`` and ``link`` replace the Redis store and the hub link (tests); the
    gateway then leaves closing them to the caller.
    """

    def __init__(
        self, config: GatewayConfig, *, store: Store | None = None, link: Link | None = None
    ) -> None:
        self.config = config
        self._given_store = store
        self._store: Store | None = store
        self._link: Link | None = link
        self._hub_link: HubPool | None = None
        self._server: Server | None = None
        self._tls: Handshakes | None = None
        self._fanout: Fanout[Session] | None = None
        self._pipeline: Pipeline | None = None
        self._api: ApiServer | None = None
        self._presence: Presence | None = None
        self._slots: Slots | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._port = 0
        self._gateway_id: GatewayId | None = (
            GatewayId(self.config.gateway_id) if self.config.gateway_id else None
        )
        self._limits = SessionLimits(
            send_queue=self.config.send_queue,
            replay_page=self.config.replay_page,
            idle_timeout=self.config.idle_timeout,
            rate=self.config.rate_limit,
            burst=self.config.effective_burst,
            max_content=self.config.max_content,
            close_timeout=self.config.close_timeout,
            replay_budget=self.config.replay_budget,
            max_refused=self.config.max_refused,
            fill_delay=self.config.fill_delay,
        )
        self._ack_rounds = AckRounds(self.config.ack_linger)
        self._started = False
        self._closed = asyncio.Event()
        self._closing = False
        self._draining = False
        self.metrics = metrics.from_env()
        self.metrics.watch(self)
        self._front = front = http.Front(self, config, self.metrics)
        self._sockets, self._rejections = front.sockets, front.rejections
        self._sockets.on_refused = self.metrics.handshake_refused  # the 503s at connect

    # --- properties -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (``listen`` with port 0 picks a free one)."""
        return self._port

    @property
    def api_port(self) -> int:
        """The server API's bound port (0 when it is off)."""
        return self._api.port if self._api is not None else 0

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self._port}"

    @property
    def gateway_id(self) -> GatewayId:
        if self._gateway_id is None:
            raise LifecycleError("the gateway id is known once the gateway has started")
        return self._gateway_id

    @property
    def known_id(self) -> GatewayId | None:
        """The gateway id, or None before the start picks one (``/info`` says null)."""
        return self._gateway_id

    @property
    def draining(self) -> bool:
        """:meth:`drain` has begun: no new handshakes, ``/healthz`` says 503."""
        return self._draining

    @property
    def linked(self) -> bool:
        """Whether the hub link is up right now."""
        return self._link is not None and self._link.connected

    @property
    def hub_link(self) -> Link | None:
        """The hub link (a :class:`HubPool` unless the caller gave one), once started."""
        return self._link

    @property
    def fanout(self) -> Fanout[Session]:
        """The local sessions by user, and the route of stored messages."""
        if self._fanout is None:
            raise LifecycleError("the gateway is not started")
        return self._fanout

    @property
    def pipeline(self) -> Pipeline:
        """The batches of messages into the store."""
        if self._pipeline is None:
            raise LifecycleError("the gateway is not started")
        return self._pipeline

    @property
    def slots(self) -> Slots | None:
        """The store slots of replay, ack and group calls (None before the start)."""
        return self._slots

    @property
    def store(self) -> Store:
        if self._store is None:
            raise LifecycleError("the gateway is not started")
        return self._store

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Redis, bind the port, link to the hub and start serving.

        Raises :class:`StartupError` when Redis does not answer or the port is taken.
        """
        if self._started:
            return
        self._started = True
        cfg = self.config
        try:
            await self._start(cfg)
        except BaseException:
            await self.close()
            raise

    def _store_lost(self) -> None:
        """The store lost its data (a Redis restarted without persistence): inbox positions
        start from 1 again, so every session starts over from 0."""
        if self._fanout is not None:
            for session in self._fanout.sessions():
                session.rebase()

    async def _start(self, cfg: GatewayConfig) -> None:
        if cfg.weak_secret:
            logger.warning(
                "the JWT secret is shorter than 32 bytes: fine for a demo, weak in production"
            )
        # Certificates first: a bad file fails the start before anything connects.
        if cfg.tls_cert and cfg.tls_key:
            self._tls = Handshakes(
                ws.tls_context(cfg.tls_cert, cfg.tls_key),
                timeout=cfg.handshake_timeout,
                shutdown_timeout=cfg.close_timeout,
                sockets=self._sockets,
                rejections=self._rejections,
                on_failed=self.metrics.handshake_refused,
            )
        if self._store is None:
            try:
                self._store = await open_store(
                    cfg.redis_url,
                    prefix=cfg.redis_prefix,
                    presence_ttl=cfg.presence_ttl,
                    inbox_max_len=cfg.inbox_max_len,
                    inbox_max_age=cfg.inbox_max_age,
                    dedupe_window=cfg.dedupe_window,
                    socket_timeout=cfg.redis_timeout,
                    wait_replicas=cfg.redis_wait_replicas,
                    wait_timeout=cfg.redis_wait_timeout,
                    keys_per_call=cfg.redis_keys_per_call,
                    max_groups_per_user=cfg.max_groups_per_user,
                    max_group_members=cfg.max_group_members,
                    large_group=cfg.large_group,
                )
            except Exception as exc:
                raise StartupError(f"cannot reach Redis at {cfg.redis_url}: {exc}") from exc
        store = self._store = self.metrics.timed(self._store)
        try:
            self._server = await ws.listen(
                self._handle,
                cfg,
                process_request=self._front.process_request,
                connection=ws.connection_class(self._sockets, self._rejections),
                tls=self._tls,
            )
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.listen}: {exc.strerror or exc}") from exc
        self._port = self._server.sockets[0].getsockname()[1]
        if self._gateway_id is None:
            self._gateway_id = GatewayId(default_gateway_id(cfg.host, self._port))
        gateway_id = self._gateway_id
        if self._link is None:
            self._hub_link = HubPool(
                cfg.hubs,
                gateway_id,
                token=cfg.hub_token,
                resend_window=cfg.hub_resend_window,
                resend_max=cfg.hub_resend_max,
                channel_options=channel_options(cfg.hub_keepalive),
                tls=cfg.hub_tls(),
            )
            await self._hub_link.start()
            self._link = self._hub_link
        self._presence = Presence(store, gateway_id, ttl=cfg.presence_ttl, on_lost=self._store_lost)
        await self._presence.start()
        hooks = faults.from_env()
        self._fanout = fanout = Fanout[Session](
            gateway_id=gateway_id,
            store=store,
            link=self._link,
            forget_grace=cfg.forget_grace,
            presence=self._presence,
            max_content=cfg.max_content,
            faults=hooks,
            resync_after=cfg.hub_resend_window,
            watch_ttl=cfg.presence_ttl,
            metrics=self.metrics,
            held_max=cfg.large_group_held,
        )
        self._pipeline = pipeline = Pipeline(
            store=store,
            route=fanout,
            queue_size=cfg.relay_queue,
            batch_size=cfg.batch_size,
            linger=cfg.batch_linger,
            faults=hooks,
            metrics=self.metrics,
        )
        await pipeline.start()
        await fanout.start()
        if cfg.api_off_reason is not None:
            logger.warning("%s", cfg.api_off_reason)
        if cfg.api_listen is not None and cfg.api_key is not None:
            api_host, api_port = parse_host_port(cfg.api_listen, "--api-listen")
            self._api = ApiServer(
                host=api_host,
                port=api_port,
                key=cfg.api_key,
                store=store,
                pipeline=pipeline,
                fanout=fanout,
                max_content=cfg.max_content,
                max_users=cfg.api_max_users,
                max_body=cfg.api_max_body,
                max_groups=cfg.max_groups_per_user,
                max_members=cfg.max_group_members,
                header_timeout=cfg.api_header_timeout,
                body_timeout=cfg.api_body_timeout,
                timeout=cfg.api_publish_timeout,
                idle_timeout=cfg.api_idle_timeout,
                max_header_bytes=cfg.api_max_header_bytes,
                max_connections=cfg.api_max_connections,
                sockets=self._sockets,
                reuse_port=cfg.reuse_port,
                backlog=cfg.listen_backlog,
                metrics=self.metrics,
            )
            try:
                await self._api.start()
            except OSError as exc:
                raise StartupError(f"cannot serve the API on {cfg.api_listen}: {exc}") from exc
        self._slots = Slots(cfg.store_concurrency, cfg.store_wait)
        self._sweeper = asyncio.create_task(
            sweep_idle(
                fanout.sessions,
                cfg.idle_timeout,
                ping_interval=cfg.ping_interval,
                ping_timeout=cfg.ping_timeout,
            ),
            name="idle-sweeper",
        )
        backlog.check_at_start(cfg.listen_backlog)
        descriptors.budget_at_start(
            self._sockets,
            max_connections=cfg.max_connections,
            api_connections=cfg.api_max_connections if self._api is not None else 0,
        )
        await self._server.start_serving()
        logger.info(
            "gateway %s listening on %s (%s; hub %s, redis %s; group joins: %s)",
            gateway_id,
            self.address,
            "wss/https" if self._tls is not None else "ws/http",
            cfg.hub,
            cfg.redis_url,
            cfg.group_join,
        )

    async def close(self) -> None:
        """Close every socket (1001), then the fan-out, the pipeline, presence, hub link and
        store."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            await cancel_and_wait(self._sweeper)
            if self._server is not None:
                self._server.server.close()  # stop accepting
                if self._tls is not None:
                    self._tls.close()  # TLS handshakes under way: aborted
                if self._fanout is not None:
                    # Close sessions with a deadline (websockets waits forever on a
                    # client that does not read), then let websockets finish the rest.
                    sessions = self._fanout.sessions()
                    await asyncio.gather(
                        *(
                            s.close_socket(CLOSE_GOING_AWAY, "gateway shutting down")
                            for s in sessions
                        ),
                        return_exceptions=True,
                    )
                self._server.close()
                await self._server.wait_closed()
            self._ack_rounds.close()  # every session has settled its own; for safety
            if self._api is not None:
                await self._api.close()
            if self._fanout is not None:
                await self._fanout.close()
            if self._pipeline is not None:  # (frames still queued are answered ``internal``)
                await self._pipeline.close()
            if self._presence is not None:
                await self._presence.close(detach=True)
            if self._hub_link is not None:
                unsent = await self._hub_link.close()
                if unsent:
                    logger.info(
                        "%d pushes not sent to the hub (the inboxes hold them)", len(unsent)
                    )
            if self._given_store is None and self._store is not None:
                await self._store.close()
            self._rejections.flush()
            if self._started and self._gateway_id is not None:
                logger.info("gateway %s stopped", self._gateway_id)
        finally:
            self._closed.set()

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a deadline
        """Leave gracefully (SIGTERM), within ``timeout`` seconds (``--drain-timeout``).

        At once: stop accepting (the listening port closes, ``/healthz`` and new
        handshakes get 503) and take no more frames from the clients. Then wait until
        every frame already taken is answered and written, and close every socket with
        1012 (service restart), so that clients reconnect at once to another gateway and
        resend what is unanswered. Sockets still open at the deadline are aborted.
        Call :meth:`close` afterwards.
        """
        if self._draining or self._closing or self._server is None:
            return
        timeout = self.config.drain_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._draining = self.metrics.draining = True
        self._server.server.close()  # the listening port closes
        sessions = self._fanout.sessions() if self._fanout is not None else []
        logger.info("draining: %d connections to close with 1012", len(sessions))
        for session in sessions:
            session.drain()
        pipeline = self._pipeline

        def answered() -> bool:
            pipeline_idle = pipeline is None or pipeline.idle
            return pipeline_idle and all(s.settled_down for s in sessions)

        try:
            async with asyncio.timeout_at(deadline - min(1.0, timeout / 4)):
                # Every frame taken is answered (the pipeline and the sessions are done
                # with them) and its answer written (no send queue left).
                while not answered():  # noqa: ASYNC110 - a state of many parts, polled
                    await asyncio.sleep(DRAIN_POLL)
        except TimeoutError:
            logger.warning("drain: not every answer was written before --drain-timeout")
        # (A client that does not answer the close in time is aborted.)
        remaining = max(0.1, min(self.config.close_timeout, deadline - loop.time()))
        await asyncio.gather(
            *(
                s.close_socket(CLOSE_SERVICE_RESTART, "gateway restarting", remaining)
                for s in sessions
            ),
            return_exceptions=True,
        )

    async def wait_linked(self, timeout: float) -> None:  # noqa: ASYNC109 - a deadline
        """Wait until the hub link is up; raises :class:`TimeoutError` after ``timeout``."""
        if self._hub_link is not None:
            await self._hub_link.wait_connected(timeout)
            return
        async with asyncio.timeout(timeout):
            while self._link is None or not self._link.connected:  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.01)

    async def wait_closed(self) -> None:
        """Return once :meth:`close` has finished."""
        await self._closed.wait()

    # --- health -----------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, object]]:
        """Whether the gateway can do its job, and a JSON-ready report saying why
        (:func:`http.health_report`)."""
        redis_error: Exception | None = None
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self.store.ping()
        except Exception as exc:
            redis_error = exc
        return http.health_report(
            gateway_id=self._gateway_id,
            draining=self._draining,
            linked=self._link is not None and self._link.connected,
            conflict=getattr(self._link, "conflict", None),  # another process holds our id
            refused=getattr(self._link, "refused", None),  # a hub refuses our certificate
            configured_hubs=self.config.hubs,
            hubs=self._hub_link.hubs if self._hub_link is not None else None,
            redis_error=redis_error,
            connections=self._fanout.connections if self._fanout is not None else 0,
            hub_errors=self._hub_link.down_reasons if self._hub_link is not None else None,
        )

    # --- WebSocket --------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        fanout, pipeline, presence = self._fanout, self._pipeline, self._presence
        if (
            not isinstance(connection, ws.Connection)
            or connection.user is None
            or fanout is None
            or pipeline is None
            or presence is None
            or self._store is None
        ):
            await connection.close(CLOSE_INTERNAL, "gateway not ready")
            return
        if self._draining:  # its handshake was accepted just before the drain began
            await connection.close(CLOSE_SERVICE_RESTART, "gateway restarting")
            return
        user = connection.user
        connection.handshake_done()
        session = Session(
            connection,
            user,
            store=self._store,
            pipeline=pipeline,
            groups=fanout,
            limits=self._limits,
            slots=self._slots,
            group_rights=connection.group_rights or self._front.rights,
            lists_groups=connection.lists_groups,
            metrics=self.metrics,
            ack_rounds=self._ack_rounds,
        )
        fanout.add(session)
        try:
            await presence.add(user)
            session.start()
            connection.receive_now = session.receive_now
            await session.run()
        finally:
            connection.receive_now = None
            fanout.discard(session)
            presence.remove(user)
            with contextlib.suppress(Exception):
                await session.close()
