"""The gateway's settings: one frozen dataclass that validates itself.

``python -m im_gateway`` builds it from flags, ``IM_GATEWAY_*`` environment variables
and ``--config FILE``, all generated from the fields (:mod:`transmit_hub.settings`); the
library (:class:`im_gateway.gateway.Gateway`) takes it as it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transmit_hub.errors import ConfigError as HubConfigError
from transmit_hub.logs import LOG_LEVELS, format_setting, level_setting
from transmit_hub.settings import (
    at_least,
    between,
    check_fields,
    non_negative,
    positive,
    setting,
    url_without_password,
)
from transmit_hub.tls import ClientTls
from transmit_hub.types import gateway_id_problem

from . import config_rules as rules
from .addresses import MAX_HUBS, default_gateway_id, parse_host_port, parse_hubs
from .auth import MIN_SECRET_BYTES
from .errors import ConfigError
from .group_policy import POLICIES, SERVER

MAX_WORKERS = 64
"""Most gateway processes one ``--workers`` parent runs."""

__all__ = [
    "LOG_LEVELS",
    "MAX_HUBS",
    "GatewayConfig",
    "default_gateway_id",
    "parse_host_port",
    "parse_hubs",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """Every setting of a gateway, each declared once (``python -m im_gateway --help``).

    The parser, the ``IM_GATEWAY_*`` environment and ``--config FILE`` are generated from
    these fields (:mod:`transmit_hub.settings`). To add a setting: one field here with
    :func:`setting` (default, help, metavar, validator, group) and its README table row.
    """

    listen: str = setting(
        "127.0.0.1:8080",
        "address to serve WebSocket and HTTP on",
        metavar="HOST:PORT",
        group="connections",
    )
    gateway_id: str | None = setting(
        None,
        "this gateway's unique id (default: derived from host name and port)",
        metavar="ID",
        check=rules.gateway_id,
    )
    hub: str = setting(
        "127.0.0.1:50051",
        "the transmit hubs, comma-separated: the gateway attaches to every one, sends "
        "each message through one and takes deliveries from all",
        metavar="HOST:PORT[,HOST:PORT...]",
    )
    hub_token: str | None = setting(
        None, "bearer token for the hub (its --auth-token)", metavar="TOKEN", secret=True
    )
    hub_ca: str | None = setting(
        None,
        "link to the hub over TLS, verifying it with this PEM CA (default: plaintext)",
        metavar="FILE",
    )
    hub_cert: str | None = setting(
        None,
        "PEM client certificate for a hub with mutual TLS (with --hub-key); the "
        "hub accepts only a --gateway-id that is a DNS name in its subjectAltName",
        metavar="FILE",
    )
    hub_key: str | None = setting(None, "the PEM private key of --hub-cert", metavar="FILE")
    hub_keepalive: float = setting(
        2.0,
        "ping each hub this often and drop a hub whose ping is not answered within "
        "as long again (a stopped hub is noticed in about twice this)",
        metavar="SECONDS",
        check=between(0.1, 3600),
    )
    hub_resend_window: float = setting(
        6.0,
        "when a hub's stream breaks, the messages sent through it this long before "
        "go again through another hub (at least 2 x --hub-keepalive); the local users "
        "also read their inboxes again this long after the break",
        metavar="SECONDS",
    )
    hub_resend_max: int = setting(
        50_000,
        "most recent messages remembered for sending again (beyond it, the oldest are forgotten)",
        metavar="MAPS",
        check=at_least(1),
    )
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis for presence, groups and inboxes: redis://HOST:PORT/DB (one Redis) or "
        "redis+cluster://HOST:PORT[,HOST:PORT...] (a Redis Cluster, reached through any "
        "node listed)",
        metavar="URL",
        redact=url_without_password,
    )
    jwt_secret: str = setting(
        "", "HS256 secret that signs user tokens (required)", metavar="SECRET", secret=True
    )
    api_listen: str | None = setting(
        None,
        "serve POST /api/<method> (publish, groups, presence, disconnect, history) here",
        metavar="HOST:PORT",
        check=rules.host_port,
        group="api",
    )
    api_key: str | None = setting(
        None,
        "the bearer key every API call must carry",
        metavar="KEY",
        check=rules.api_key,
        secret=True,
    )
    api_max_users: int = setting(
        10_000,
        "most user ids in one API call's 'users' list (10,000 ids of 20 digits, as strings, "
        "fit in the default --api-max-body)",
        metavar="N",
        check=at_least(1),
    )
    api_max_body: int = setting(
        1024 * 1024,
        "largest API request body (a larger one is answered 400 too_large)",
        metavar="BYTES",
        check=at_least(1024),
    )
    api_header_timeout: float = setting(
        10.0,
        "a request's headers must be complete this long after the connection opens "
        "(or after their first byte, between requests); else 408 and the connection closes",
        metavar="SECONDS",
        check=positive,
    )
    api_body_timeout: float = setting(
        30.0,
        "a request's body must be complete this long after its headers; else 408",
        metavar="SECONDS",
        check=positive,
    )
    api_publish_timeout: float = setting(
        10.0,
        "a publish waits this long for room in the store's queue and for the store; "
        "else 503 internal (publish again with the same id: it is stored once)",
        metavar="SECONDS",
        check=positive,
    )
    api_idle_timeout: float = setting(
        60.0,
        "close a kept-alive API connection that sends no next request for this long",
        metavar="SECONDS",
        check=positive,
    )
    api_max_header_bytes: int = setting(
        16 * 1024,
        "largest request header block (request line and headers); beyond, 431 and "
        "the connection closes, before the rest is read",
        metavar="BYTES",
        check=at_least(1024),
    )
    api_max_connections: int = setting(
        256,
        "API connections open at once; one more gets 503 and is closed",
        metavar="N",
        check=at_least(1),
    )
    jwt_max_ttl: float = setting(
        86400.0,
        "refuse (401) a token whose exp is further away than this (0: no limit)",
        metavar="SECONDS",
        check=non_negative,
        group="security",
    )
    jwt_audience: str | None = setting(
        None, "when set, tokens must carry this aud claim", metavar="AUD", check=rules.not_empty
    )
    jwt_issuer: str | None = setting(
        None, "when set, tokens must carry this iss claim", metavar="ISS", check=rules.not_empty
    )
    group_join: str = setting(
        SERVER,
        "who may join groups with type 12/13: server (only the server API; clients get "
        "forbidden), token (groups listed in the JWT's groups claim; leaving is free), "
        "open (anyone, any group: demos)",
        choices=POLICIES,
    )
    max_groups_per_user: int = setting(
        1000,
        "groups one user may be in (and may be listed in a token); beyond: forbidden",
        metavar="GROUPS",
        check=at_least(1),
    )
    max_group_members: int = setting(
        100_000, "members one group may have; beyond: forbidden", metavar="USERS", check=at_least(1)
    )
    large_group: int = setting(
        500,
        "a group with more members is stored once, in its own stream (seq g<group>:<n>), "
        "instead of in every member's inbox; every gateway of a deployment needs the same",
        metavar="MEMBERS",
        check=at_least(1),
    )
    large_group_held: int = setting(
        1000,
        "posts of one large group held while its followers' membership is checked (one "
        "check for all of them); beyond, the followers read them from the group's stream once the check is done",
        metavar="POSTS",
        check=at_least(1),
    )
    max_connections_per_user: int = setting(
        100,
        "WebSockets one user may hold on this gateway; beyond, the upgrade gets HTTP 429",
        metavar="N",
        check=at_least(1),
    )
    max_connections: int = setting(
        50_000,
        "WebSockets this gateway holds in all; beyond, the upgrade gets HTTP 503",
        metavar="N",
        check=at_least(1),
    )
    max_handshakes: int = setting(
        1024,
        "connections on --listen still in their opening handshake (or an HTTP "
        "request) at once; one more gets HTTP 503 and is closed at once",
        metavar="N",
        check=at_least(1),
    )
    listen_backlog: int = setting(
        1024,
        "connections the kernel queues on --listen and --api-listen until the gateway "
        "accepts them (listen()'s backlog; the kernel caps it at net.core.somaxconn): in a "
        "reconnect storm, a client whose connect finds the queue full tries again 1 s or "
        "more later",
        metavar="N",
        check=at_least(1),
    )
    fd_reserve: int = setting(
        256,
        "descriptors kept free for /healthz, the hubs and Redis: with fewer left, an "
        "upgrade gets HTTP 503 (with half as many, any new connection does)",
        metavar="N",
        check=non_negative,
    )
    tls_cert: str | None = setting(
        None,
        "PEM certificate (chain): serve wss:// and https:// on --listen (with --tls-key)",
        metavar="FILE",
    )
    tls_key: str | None = setting(None, "PEM private key of --tls-cert", metavar="FILE")
    max_frame_size: int = setting(
        64 * 1024,
        "largest client frame in bytes; larger ones close the socket with 1009",
        metavar="BYTES",
        check=at_least(1024),
        group="limits",
    )
    max_content: int = setting(
        16 * 1024,
        "largest message content in UTF-8 bytes; larger ones are refused with too_large",
        metavar="BYTES",
        check=at_least(1),
    )
    rate_limit: float = setting(
        200.0,
        "frames per second allowed per connection on average (0: no limit)",
        metavar="PER_SECOND",
        check=non_negative,
    )
    rate_burst: float = setting(
        400.0,
        "frames a connection may send at once before the rate applies",
        metavar="FRAMES",
        check=non_negative,
    )
    send_queue: int = setting(
        1024,
        "frames queued per connection; a client that lets it fill is disconnected and "
        "recovers from its inbox",
        metavar="FRAMES",
        check=at_least(1),
    )
    relay_queue: int = setting(
        10_000,
        "accepted frames waiting to be stored; when full, senders wait",
        metavar="FRAMES",
        check=at_least(1),
    )
    batch_size: int = setting(
        256, "most frames stored per Redis round trip", metavar="FRAMES", check=at_least(1)
    )
    batch_linger: float = setting(
        0.003,
        "while traffic flows, how long a small batch waits for more frames before it is "
        "stored (fewer Redis round trips and hub frames, so less CPU per message; an idle "
        "gateway never waits, nor one whose recent rate brings less than one more message "
        "within the linger; 0: no wait, a batch is what arrived during the previous "
        "store call, which costs more CPU per message at moderate load)",
        metavar="SECONDS",
        check=non_negative,
    )
    replay_page: int = setting(
        200, "inbox entries read per replay round trip", metavar="ENTRIES", check=at_least(1)
    )
    replay_budget: int = setting(
        20_000,
        "inbox entries per minute one connection may ask to be replayed (type 14); "
        "beyond it the replay stops with rate_limited and an end marker (0: no limit)",
        metavar="ENTRIES",
        check=non_negative,
    )
    max_refused: int = setting(
        100,
        "refused frames per minute before a connection is closed with 1008 (0: never)",
        metavar="FRAMES",
        check=non_negative,
    )
    fill_delay: float = setting(
        0.05,
        "seconds a hole in a connection's positions may wait for its push before it is "
        "read from the inbox",
        metavar="SECONDS",
        check=non_negative,
    )
    ack_linger: float = setting(
        0.01,
        "how long a connection's ack (type 11) waits for others before their writes go "
        "to Redis together in one call (acks of many connections share a call: less CPU "
        "per ack at moderate load); a closing connection's acks are written at once, and "
        "so are a user's when another connection of theirs opens here "
        "(0: each ack's write starts at once)",
        metavar="SECONDS",
        check=between(0, 1),
    )
    store_concurrency: int = setting(
        32,
        "replay, ack and group calls to Redis in flight at once",
        metavar="CALLS",
        check=at_least(1),
    )
    store_wait: float = setting(
        10.0,
        "how long a replay, ack or group call waits for one of --store-concurrency's "
        "slots before it fails as a store failure would (a join answered internal, a "
        "replay retried): with Redis silent each slot is held for --redis-timeout, and "
        "calls queued behind them would otherwise wait for the whole queue to time out",
        metavar="SECONDS",
        check=positive,
    )
    idle_timeout: float = setting(
        300.0,
        "close a connection that sends no frame for this long (0: never)",
        metavar="SECONDS",
        check=non_negative,
        group="timeouts",
    )
    ping_interval: float = setting(
        20.0,
        "ping a client that sent no frame or pong for this long; connections are looked at "
        "every quarter of it, so a ping goes out up to a quarter later (0: no pings)",
        metavar="SECONDS",
        check=non_negative,
    )
    ping_timeout: float = setting(
        20.0,
        "close a connection whose pong is this late (looked at as above: up to a quarter of "
        "--ping-interval later; 0: never)",
        metavar="SECONDS",
        check=non_negative,
    )
    close_timeout: float = setting(
        3.0, "wait this long for a closing handshake", metavar="SECONDS", check=non_negative
    )
    handshake_timeout: float = setting(
        10.0,
        "a connection on --listen gets this long for its TLS handshake (with --tls-cert), "
        "then as long again for its WebSocket upgrade or HTTP request; beyond, it is closed",
        metavar="SECONDS",
        check=between(0.1, 300),
    )
    drain_timeout: float = setting(
        10.0,
        "on SIGTERM: stop accepting, answer the frames taken, close every socket with "
        "1012 and exit, within this long",
        metavar="SECONDS",
        check=between(0.5, 3600),
    )
    redis_prefix: str = setting(
        "im:", "prefix of every Redis key", metavar="PREFIX", check=rules.no_braces, group="store"
    )
    redis_timeout: float = setting(
        5.0,
        "seconds a Redis command may take before it fails (a stalled Redis); a batch "
        "that timed out is sent once more, deduplicated",
        metavar="SECONDS",
        check=positive,
    )
    redis_wait_replicas: int = setting(
        0,
        "acknowledge a message only once WAIT says this many replicas hold it; "
        "otherwise the sender gets internal (not replicated; send again)",
        metavar="N",
        check=non_negative,
    )
    redis_wait_timeout: float = setting(
        1.0, "how long WAIT waits for --redis-wait-replicas", metavar="SECONDS", check=positive
    )
    redis_keys_per_call: int = setting(
        256,
        "most users (or groups) in one presence call to Redis (refresh, lookup, forget); "
        "more go in several calls, one after the other: one call holds Redis, and every "
        "other client waits, for about 7 µs a key (a refresh of 18,000 users in one call: "
        "150 ms)",
        metavar="KEYS",
        check=at_least(1),
    )
    presence_ttl: float = setting(
        30.0,
        "presence entries expire this long after the gateway's last refresh",
        metavar="SECONDS",
        check=positive,
    )
    forget_grace: float = setting(
        10.0,
        "after each hub (re)attach, ignore the hub's 'gateway not attached' notices "
        "this long (other gateways may still be re-attaching); later notices clear "
        "that gateway's presence entries",
        metavar="SECONDS",
        check=non_negative,
    )
    inbox_max_len: int = setting(
        10_000, "messages kept per user inbox", metavar="ENTRIES", check=at_least(1)
    )
    inbox_max_age: float = setting(
        7 * 86400.0, "how long inbox messages are kept", metavar="SECONDS", check=positive
    )
    dedupe_window: float = setting(
        600.0,
        "how long a client message id is remembered for dedupe",
        metavar="SECONDS",
        check=positive,
    )
    workers: int = setting(
        1,
        "gateway processes serving --listen together (SO_REUSEPORT), each a gateway of "
        "its own on every hub, with id <--gateway-id>-<i> (i from 0); this process "
        "supervises them: restarts one that dies, drains all on SIGTERM; 1: this process "
        "is the gateway",
        metavar="N",
        check=between(1, MAX_WORKERS),
        group="workers",
    )
    worker_restarts: int = setting(
        5,
        "with --workers: restarts of one worker within a minute (each after a growing "
        "pause) before the parent gives up, stops the others and exits 1 (0: never restart)",
        metavar="N",
        check=non_negative,
    )
    worker_heartbeat: float = setting(
        10.0,
        "with --workers: a worker whose event loop has sent the parent no heartbeat for "
        "this long (stuck, or stopped: it still holds its share of the port) is killed "
        "and started again; the first heartbeat may take 30 s more (0: never)",
        metavar="SECONDS",
        check=non_negative,
        group="workers",
    )
    reuse_port: bool = setting(
        False,
        "bind --listen and --api-listen with SO_REUSEPORT, so that several gateway "
        "processes share them (each worker of --workers does)",
    )
    metrics_listen: str | None = setting(
        None,
        "also serve GET /metrics on this address; with --workers N, worker i on PORT+i "
        "(the users' port answers from whichever worker took the connection)",
        metavar="HOST:PORT",
        check=rules.host_port,
    )
    compression: bool = setting(
        False,
        "offer permessage-deflate (about 45 KB per connection instead of 13 KB)",
        group="other",
    )
    log_level: str = level_setting()
    log_format: str = format_setting()

    def __post_init__(self) -> None:
        check_fields(self, ConfigError)  # each field's own rule, then the ones that tie
        parse_host_port(self.listen, "--listen")
        parse_hubs(self.hub)
        if self.hub_resend_window < 2 * self.hub_keepalive:
            raise ConfigError(
                "--hub-resend-window must cover the time a silent hub takes to be noticed "
                f"(2 x --hub-keepalive = {2 * self.hub_keepalive:g} s), "
                f"got {self.hub_resend_window:g}"
            )
        self.hub_tls()  # the files must be readable PEM, the cert and key given together
        if not self.jwt_secret:
            raise ConfigError("--jwt-secret (or IM_GATEWAY_JWT_SECRET) is required")
        if not self.redis_url.partition("://")[1]:
            raise ConfigError(
                "--redis-url must be a URL such as redis://HOST:PORT/DB, "
                f"got {url_without_password(self.redis_url)!r}"
            )
        if self.max_content > self.max_frame_size:
            raise ConfigError("--max-content must not exceed --max-frame-size")
        if self.replay_page * 2 > self.send_queue:
            raise ConfigError("--send-queue must hold at least two replay pages (--replay-page)")
        if self.replay_budget and self.replay_budget < self.replay_page:
            raise ConfigError("--replay-budget must be 0 or at least one --replay-page")
        if self.max_connections_per_user > self.max_connections:
            raise ConfigError("--max-connections-per-user must not exceed --max-connections")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.workers > 1:
            self._check_workers()

    def _check_workers(self) -> None:
        last = self.worker_id(self.workers - 1) if self.gateway_id is not None else None
        if last is not None and (problem := gateway_id_problem(last)) is not None:
            raise ConfigError(
                f"--gateway-id with --workers {self.workers}: the last worker's id "
                f"{last!r} is no usable id: {problem}"
            )
        if self.metrics_listen is not None:
            _, port = parse_host_port(self.metrics_listen, "--metrics-listen")
            if port and port + self.workers - 1 > 65535:
                raise ConfigError(
                    f"--metrics-listen port {port} + {self.workers - 1} (the last worker's) "
                    "is beyond 65535"
                )

    def worker_id(self, index: int, base: str | None = None) -> str:
        """Worker ``index``'s gateway id: ``<base>-<index>`` (``base``: ``--gateway-id``)."""
        return f"{base or self.gateway_id}-{index}"

    def hub_tls(self) -> ClientTls | None:
        """The link's TLS settings from --hub-ca/--hub-cert/--hub-key (``None``: plaintext)."""
        try:
            return ClientTls.from_files(self.hub_ca, self.hub_cert, self.hub_key)
        except HubConfigError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def weak_secret(self) -> bool:
        """True when the JWT secret is shorter than HS256's recommended 32 bytes."""
        return len(self.jwt_secret.encode()) < MIN_SECRET_BYTES

    @property
    def serves_api(self) -> bool:
        """True when the server API is served: ``--api-listen`` and ``--api-key`` both
        given (DESIGN.md: "off without both"; :attr:`api_off_reason` says why not)."""
        return self.api_listen is not None and self.api_key is not None

    @property
    def api_off_reason(self) -> str | None:
        """Why the server API is off although one of its two flags is given (the start
        says so in a warning), or None."""
        if self.api_listen is not None and self.api_key is None:
            return "--api-listen without --api-key: the server API is off (give both)"
        if self.api_key is not None and self.api_listen is None:
            return "--api-key without --api-listen: the server API is off (give both)"
        return None

    @property
    def tls(self) -> bool:
        """True when clients are served over TLS (``wss://`` and ``https://``)."""
        return self.tls_cert is not None

    @property
    def hubs(self) -> tuple[str, ...]:
        """The hubs of ``--hub``, in the order given."""
        return parse_hubs(self.hub)

    @property
    def host(self) -> str:
        return parse_host_port(self.listen, "--listen")[0]

    @property
    def port(self) -> int:
        return parse_host_port(self.listen, "--listen")[1]

    @property
    def effective_burst(self) -> float:
        """The token bucket's size: ``rate_burst``, or twice the rate when that is 0."""
        return self.rate_burst if self.rate_burst > 0 else 2 * self.rate_limit

    def replace(self, **changes: object) -> GatewayConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
