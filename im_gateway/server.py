"""The gateway: one port for WebSocket users and a few plain HTTP endpoints.

``Gateway`` wires the parts together and owns their lifecycles::

    clients --WebSocket--> Session --> Relay --> Store (Redis)
                                         |  \\--> HubPool --> transmit hubs
                              Presence <-+

HTTP on the same port (answered in ``process_request``, before any upgrade):
``GET /ws`` upgrades after checking the JWT (401 otherwise), ``GET /healthz`` is 200
while at least one hub is linked and the store answers (503 with the reason
otherwise; ``"hubs"`` says which hub is up),
``GET /info`` names the gateway, ``GET /`` and ``GET /static/<file>`` serve the chat
page from ``im_gateway/static``, ``GET /client.js`` the JavaScript client module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Event

from transmit_hub.lifecycle import AsyncLifecycle
from transmit_hub.pool import HubPool
from transmit_hub.transport import channel_options
from transmit_hub.types import GatewayId, UserId

from . import auth, descriptors, faults, metrics, web
from .admission import ConnectionCaps, RejectionLog
from .api import ApiServer
from .config import GatewayConfig, default_gateway_id, parse_host_port
from .errors import AuthError, StartupError
from .group_policy import TOKEN, GroupRights
from .presence import Presence
from .relay import Link, Relay
from .sessions import Session, SessionLimits, sweep_idle
from .store import Store, open_store
from .tasks import cancel_and_wait

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT = 1.0
CLOSE_SERVICE_RESTART = 1012
"""Service Restart: the gateway is draining; reconnect at once, to any gateway."""
DRAIN_POLL = 0.01
"""Seconds between checks that a draining gateway has answered what it took."""


class _Connection(ServerConnection):
    """A server connection that remembers its user, and reads and writes frames without
    a task switch each."""

    user: UserId | None = None
    group_rights: GroupRights | None = None
    caps: ConnectionCaps | None = None
    """Where ``user`` holds a slot; given back once, when the TCP connection is gone
    (a reference, not a closure per connection)."""
    lost = False
    """The TCP connection is gone (it can be before ``process_request`` runs)."""
    sockets: descriptors.Sockets | None = None
    """The gateway's socket counts (set on its own subclass: :func:`_connection_class`)."""
    rejections: RejectionLog | None = None
    counted = False
    """This connection is counted in ``sockets`` (refused ones are not)."""
    handshaking = False
    receive_now: Callable[[str], bool] | None = None
    """Set by the gateway to :meth:`Session.receive_now`; None until the session runs."""
    _flush_scheduled = False

    def process_event(self, event: Event) -> None:
        """Offer each complete text frame to ``receive_now`` while nothing waits for
        ``recv()``; frames it declines (and all others) go to ``recv()`` as usual."""
        handler = self.receive_now
        if (
            handler is not None
            and isinstance(event, Frame)
            and event.opcode is Opcode.TEXT
            and event.fin
            and not len(self.recv_messages.frames)
        ):
            try:
                text = str(event.data, "utf-8")
            except UnicodeDecodeError:
                pass  # recv() closes the connection with 1007, as websockets does
            else:
                if handler(text):
                    return
        super().process_event(event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection, or answer it a fixed 503 at once (its request is never
        read) when too many handshakes are under way or the descriptors are low."""
        super().connection_made(transport)
        if self.sockets is None:
            return
        refused = self.sockets.open_ws()
        if refused is None:
            self.counted = self.handshaking = True
            return
        if self.rejections is not None:
            self.rejections.hit(f"{refused.status} at connect: {refused.reason}")
        transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        descriptors.refuse(transport, self, self.sockets)

    def handshake_done(self) -> None:
        """The connection is a WebSocket now: no longer a handshake under way."""
        if self.handshaking and self.sockets is not None:
            self.handshaking = False
            self.sockets.upgraded()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.lost = True
        if self.counted and self.sockets is not None:
            self.counted = False
            self.sockets.close_ws(handshaking=self.handshaking)
        caps, self.caps = self.caps, None
        if caps is not None and self.user is not None:
            caps.release(self.user)

    def send_now(self, message: str) -> bool:
        """Queue a text frame for writing in this loop iteration, unless the socket is
        backed up or not open (then False: the session's writer task waits for it).

        No task, no await: frames are framed at once and every frame queued for this
        socket in one loop iteration goes out in a single ``transport.write`` (one
        system call instead of one per frame). Anything else websockets writes (a
        ping, the close frame) flushes them first, so the order is kept.
        """
        if self.paused or self.protocol.state is not OPEN:
            return False
        self.protocol.send_text(message.encode())
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.protocol.data_to_send()
        transport = self.transport
        if not data or transport.is_closing():
            return
        payload = [chunk for chunk in data if chunk]
        if payload:
            transport.write(payload[0] if len(payload) == 1 else b"".join(payload))
        if len(payload) != len(data):  # b"" asks for end of stream, as in send_data()
            if transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()


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
        self._given_link = link
        self._store: Store | None = store
        self._link: Link | None = link
        self._hub_link: HubPool | None = None
        self._server: Server | None = None
        self._relay: Relay | None = None
        self._api: ApiServer | None = None
        self._presence: Presence | None = None
        self._slots: asyncio.Semaphore | None = None
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
        self._caps = ConnectionCaps(
            per_user=self.config.max_connections_per_user, total=self.config.max_connections
        )
        self._rejections = RejectionLog()
        self._sockets = descriptors.Sockets(
            limit=None,
            baseline=0,
            reserve=self.config.fd_reserve,
            max_handshakes=self.config.max_handshakes,
        )
        self._rights = GroupRights(self.config.group_join)
        """The group rights of every connection, unless the policy reads the token."""
        self._started = False
        self._closed = asyncio.Event()
        self._closing = False
        self._draining = False
        self.metrics = metrics.from_env()
        self.metrics.watch(self)
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
            raise RuntimeError("the gateway id is known once the gateway has started")
        return self._gateway_id

    @property
    def linked(self) -> bool:
        """Whether the hub link is up right now."""
        return self._link is not None and self._link.connected

    @property
    def hub_link(self) -> Link | None:
        """The hub link (a :class:`HubPool` unless the caller gave one), once started."""
        return self._link

    @property
    def relay(self) -> Relay:
        if self._relay is None:
            raise RuntimeError("the gateway is not started")
        return self._relay

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the gateway is not started")
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
        if self._relay is not None:
            for session in self._relay.sessions():
                session.rebase()

    async def _start(self, cfg: GatewayConfig) -> None:
        if cfg.weak_secret:
            logger.warning(
                "the JWT secret is shorter than 32 bytes: fine for a demo, weak in production"
            )
        # Certificates first: a bad file fails the start before anything connects.
        tls = tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
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
                    max_groups_per_user=cfg.max_groups_per_user,
                    max_group_members=cfg.max_group_members,
                )
            except Exception as exc:
                raise StartupError(f"cannot reach Redis at {cfg.redis_url}: {exc}") from exc
        store = self._store = self.metrics.timed(self._store)
        try:
            self._server = await serve(
                self._handle,
                cfg.host,
                cfg.port,
                process_request=self._process_request,
                create_connection=_connection_class(self._sockets, self._rejections),
                compression="deflate" if cfg.compression else None,
                max_size=cfg.max_frame_size,
                # Pings come from one sweeper task for all connections (sweep_idle),
                # not from a keepalive task per connection (about 1.6 KB each).
                ping_interval=None,
                ping_timeout=None,
                close_timeout=cfg.close_timeout,
                server_header=None,
                ssl=tls,
                start_serving=False,
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
        self._relay = Relay(
            gateway_id=gateway_id,
            store=store,
            link=self._link,
            queue_size=cfg.relay_queue,
            batch_size=cfg.batch_size,
            linger=cfg.batch_linger,
            forget_grace=cfg.forget_grace,
            presence=self._presence,
            max_content=cfg.max_content,
            faults=faults.from_env(),
            resync_after=cfg.hub_resend_window,
            metrics=self.metrics,
        )
        await self._relay.start()
        if cfg.api_listen is not None and cfg.api_key is not None:
            api_host, api_port = parse_host_port(cfg.api_listen, "--api-listen")
            self._api = ApiServer(
                host=api_host,
                port=api_port,
                key=cfg.api_key,
                store=store,
                pipeline=self._relay.pipeline,
                fanout=self._relay.fanout,
                max_content=cfg.max_content,
                max_users=cfg.api_max_users,
                max_body=cfg.api_max_body,
                header_timeout=cfg.api_header_timeout,
                body_timeout=cfg.api_body_timeout,
                idle_timeout=cfg.api_idle_timeout,
                max_header_bytes=cfg.api_max_header_bytes,
                max_connections=cfg.api_max_connections,
                sockets=self._sockets,
            )
            try:
                await self._api.start()
            except OSError as exc:
                raise StartupError(f"cannot serve the API on {cfg.api_listen}: {exc}") from exc
        self._slots = asyncio.Semaphore(cfg.store_concurrency)
        self._sweeper = asyncio.create_task(
            sweep_idle(
                self._relay.sessions,
                cfg.idle_timeout,
                ping_interval=cfg.ping_interval,
                ping_timeout=cfg.ping_timeout,
            ),
            name="idle-sweeper",
        )
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
            "wss/https" if tls else "ws/http",
            cfg.hub,
            cfg.redis_url,
            cfg.group_join,
        )

    async def close(self) -> None:
        """Close every socket (1001), then the relay, presence, hub link and store."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            await cancel_and_wait(self._sweeper)
            if self._server is not None:
                self._server.server.close()  # stop accepting
                if self._relay is not None:
                    # Close sessions with a deadline (websockets waits forever on a
                    # client that does not read), then let websockets finish the rest.
                    sessions = self._relay.sessions()
                    await asyncio.gather(
                        *(s.close_socket(1001, "gateway shutting down") for s in sessions),
                        return_exceptions=True,
                    )
                self._server.close()
                await self._server.wait_closed()
            if self._api is not None:
                await self._api.close()
            if self._relay is not None:
                await self._relay.close()
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
        sessions = self._relay.sessions() if self._relay is not None else []
        logger.info("draining: %d connections to close with 1012", len(sessions))
        for session in sessions:
            session.drain()
        relay = self._relay

        def answered() -> bool:
            pipeline_idle = relay is None or relay.pipeline.idle
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
        """Whether the gateway can do its job, and a JSON-ready report saying why."""
        reasons: list[str] = []
        if self._draining:
            reasons.append("draining: the gateway is shutting down")
        hub = "linked" if self._link is not None and self._link.connected else "down"
        conflict = getattr(self._link, "conflict", None)  # another process holds our id
        refused = getattr(self._link, "refused", None)  # a hub refuses our certificate
        if conflict:
            reasons.append(str(conflict))
        elif hub != "linked":
            why = f": {refused}" if refused else ""
            reasons.append(f"not linked to any hub ({', '.join(self.config.hubs)}){why}")
        hubs = (
            self._hub_link.hubs
            if self._hub_link is not None
            else dict.fromkeys(self.config.hubs, "up" if hub == "linked" else "down")
        )
        redis = "ok"
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self.store.ping()
        except Exception as exc:
            redis = "down"
            reasons.append(f"redis not answering: {type(exc).__name__}: {exc}".rstrip(": "))
        report: dict[str, object] = {
            "status": "ok" if not reasons else "unavailable",
            "gatewayId": self._gateway_id,
            "hub": hub,
            "hubs": hubs,
            "redis": redis,
            "connections": self._relay.connections if self._relay is not None else 0,
        }
        if reasons:
            report["reason"] = "; ".join(reasons)
        return not reasons, report

    # --- HTTP and WebSocket -----------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path, query = web.split_target(request)
        if path == "/ws":
            return self._admit(connection, request, query)
        if path == "/healthz":
            ok, report = await self.health()
            return web.json_response(200 if ok else 503, report)
        if path == "/metrics" and self.metrics.enabled:
            return web.response(200, self.metrics.render(), metrics.CONTENT_TYPE)
        if path == "/info":
            info = {"gatewayId": self._gateway_id, "groupJoin": self.config.group_join}
            return web.json_response(200, info)
        if path in ("/", "/index.html"):
            return web.static_file("index.html")
        if path == "/client.js":
            return web.static_file("client.js")
        if path.startswith("/static/"):
            return web.static_file(path[len("/static/") :])
        return web.not_found()

    def _admit(
        self, connection: ServerConnection, request: Request, query: dict[str, list[str]]
    ) -> Response | None:
        """Check the token and take a connection slot, with no await between the check
        and the count (so concurrent handshakes cannot race past a cap)."""
        cfg = self.config
        try:
            identity = auth.verify_identity(
                web.bearer_token(request, query),
                cfg.jwt_secret,
                max_ttl=cfg.jwt_max_ttl,
                audience=cfg.jwt_audience,
                issuer=cfg.jwt_issuer,
                max_groups=cfg.max_groups_per_user,
            )
        except AuthError as exc:
            self._rejections.hit(f"401 {exc} (from {_peer(connection)})")
            self.metrics.handshake_refused("unauthorized")
            return web.json_response(
                401, {"error": "unauthorized", "reason": str(exc)}, WWW_Authenticate="Bearer"
            )
        if self._draining:
            self.metrics.handshake_refused("draining")
            return web.json_response(503, {"error": "unavailable", "reason": "draining"})
        if not isinstance(connection, _Connection) or connection.lost:
            # (A client gone before its request was read takes no slot: none would
            # ever be given back.)
            self.metrics.handshake_refused("not_ready")
            return web.json_response(503, {"error": "unavailable", "reason": "not ready"})
        user = identity.user
        refused = self._sockets.upgrade_refusal() or self._caps.admit(user)
        if refused is not None:
            self._rejections.hit(f"{refused.status} user {user}: {refused.code}")
            self.metrics.handshake_refused(refused.code)
            return web.json_response(
                refused.status, {"error": refused.code, "reason": refused.reason}
            )
        connection.user = user
        connection.caps = self._caps
        if self._rights.policy == TOKEN:
            connection.group_rights = GroupRights(TOKEN, identity.groups)
        else:
            connection.group_rights = self._rights
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        relay, presence = self._relay, self._presence
        if (
            not isinstance(connection, _Connection)
            or connection.user is None
            or relay is None
            or presence is None
            or self._store is None
        ):
            await connection.close(1011, "gateway not ready")
            return
        if self._draining:  # its handshake was accepted just before the drain began
            await connection.close(CLOSE_SERVICE_RESTART, "gateway restarting")
            return
        user = connection.user
        connection.handshake_done()
        # The handshake is over: its response (headers and all, about 1.4 KB) would
        # otherwise stay with every idle connection. (``request`` must stay: websockets
        # routes later events as frames only while it is set.)
        connection.response = None
        session = Session(
            connection,
            user,
            store=self._store,
            router=relay,
            limits=self._limits,
            slots=self._slots,
            group_rights=connection.group_rights or self._rights,
            metrics=self.metrics,
        )
        relay.add(session)
        try:
            await presence.add(user)
            session.start()
            connection.receive_now = session.receive_now
            await session.run()
        finally:
            connection.receive_now = None
            relay.discard(session)
            presence.remove(user)
            with contextlib.suppress(Exception):
                await session.close()


def _connection_class(sockets: descriptors.Sockets, rejections: RejectionLog) -> type[_Connection]:
    """:class:`_Connection` counting its sockets in one gateway's ``sockets``."""

    class GatewayConnection(_Connection):
        pass

    GatewayConnection.sockets = sockets
    GatewayConnection.rejections = rejections
    return GatewayConnection


def _peer(connection: ServerConnection) -> str:
    """The client's address, for log lines."""
    address = connection.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else "?"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from PEM files; StartupError naming them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise StartupError(
            f"cannot load the TLS certificate {cert!r} and key {key!r}: {detail}"
        ) from exc
    return context
