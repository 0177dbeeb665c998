"""The gateway's settings: one frozen dataclass that validates itself.

``python -m im_gateway`` builds it from flags and ``IM_GATEWAY_*`` environment
variables; the library (:class:`im_gateway.server.Gateway`) takes the same names as
keyword arguments and builds it too, so both paths validate the same way.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass

from transmit_hub.errors import ConfigError as HubConfigError
from transmit_hub.tls import ClientTls
from transmit_hub.types import gateway_id_problem

from .auth import MIN_SECRET_BYTES
from .errors import ConfigError
from .group_policy import POLICIES, SERVER

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_host_port(value: str, what: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) -> (host, port); ConfigError otherwise."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} port must be 0-65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


MAX_HUBS = 64
"""Most hubs one gateway attaches to (``--hub`` lists them)."""


def parse_hubs(value: str) -> tuple[str, ...]:
    """``"HOST:PORT[,HOST:PORT...]"`` -> the addresses, each once; ConfigError otherwise."""
    hubs = tuple(part.strip() for part in value.split(","))
    if len(hubs) > MAX_HUBS:
        raise ConfigError(f"--hub lists {len(hubs)} hubs; at most {MAX_HUBS}")
    for hub in hubs:
        parse_host_port(hub, "--hub")
    if len(set(hubs)) != len(hubs):
        raise ConfigError(f"--hub lists a hub twice: {value!r}")
    return hubs


def default_gateway_id(host: str, port: int) -> str:
    """A stable id from the machine and the port: the same machine and port, the same id.

    A wildcard or loopback listen address says nothing about the machine, so the
    host name is used instead.
    """
    if host in ("", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
        host = socket.gethostname() or "localhost"
    # Keep to the gateway id rule (a host may be an IPv6 address, say).
    host = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in host)
    return f"gw-{host[:100]}-{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """Every setting of a gateway; see ``python -m im_gateway --help`` for each."""

    listen: str = "127.0.0.1:8080"
    gateway_id: str | None = None
    hub: str = "127.0.0.1:50051"
    hub_token: str | None = None
    hub_ca: str | None = None
    hub_cert: str | None = None
    hub_key: str | None = None
    hub_keepalive: float = 2.0
    hub_resend_window: float = 6.0
    hub_resend_max: int = 50_000
    redis_url: str = "redis://127.0.0.1:6379/0"
    jwt_secret: str = ""
    # trust boundary: tokens, groups, connections, TLS
    jwt_max_ttl: float = 86400.0
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    group_join: str = SERVER
    max_groups_per_user: int = 1000
    max_group_members: int = 100_000
    max_connections_per_user: int = 100
    max_connections: int = 50_000
    max_handshakes: int = 1024
    fd_reserve: int = 256
    tls_cert: str | None = None
    tls_key: str | None = None
    # limits
    max_frame_size: int = 64 * 1024
    max_content: int = 16 * 1024
    rate_limit: float = 200.0
    rate_burst: float = 400.0
    send_queue: int = 1024
    relay_queue: int = 10_000
    batch_size: int = 256
    batch_linger: float = 0.003
    replay_page: int = 200
    replay_budget: int = 20_000
    max_refused: int = 100
    fill_delay: float = 0.05
    store_concurrency: int = 32
    # timeouts
    idle_timeout: float = 300.0
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    close_timeout: float = 3.0
    # store
    redis_prefix: str = "im:"
    redis_timeout: float = 5.0
    redis_wait_replicas: int = 0
    redis_wait_timeout: float = 1.0
    presence_ttl: float = 30.0
    forget_grace: float = 10.0
    inbox_max_len: int = 10_000
    inbox_max_age: float = 7 * 86400.0
    dedupe_window: float = 600.0
    # server API
    api_listen: str | None = None
    api_key: str | None = None
    api_max_users: int = 1000
    api_max_body: int = 1024 * 1024
    api_header_timeout: float = 10.0
    api_body_timeout: float = 30.0
    api_idle_timeout: float = 60.0
    api_max_header_bytes: int = 16 * 1024
    api_max_connections: int = 256
    # misc
    compression: bool = False
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        parse_host_port(self.listen, "--listen")
        parse_hubs(self.hub)
        if not 0.1 <= self.hub_keepalive <= 3600:
            raise ConfigError(f"--hub-keepalive must be 0.1 to 3600, got {self.hub_keepalive}")
        if self.hub_resend_window < 2 * self.hub_keepalive:
            raise ConfigError(
                "--hub-resend-window must cover the time a silent hub takes to be noticed "
                f"(2 x --hub-keepalive = {2 * self.hub_keepalive:g} s), "
                f"got {self.hub_resend_window:g}"
            )
        if self.gateway_id is not None and (problem := gateway_id_problem(self.gateway_id)):
            raise ConfigError(f"--gateway-id {self.gateway_id[:40]!r}: {problem}")
        self.hub_tls()  # the files must be readable PEM, the cert and key given together
        if not self.jwt_secret:
            raise ConfigError("--jwt-secret (or IM_GATEWAY_JWT_SECRET) is required")
        if not self.redis_url.partition("://")[1]:
            raise ConfigError(
                f"--redis-url must be a URL such as redis://HOST:PORT/DB, got {self.redis_url!r}"
            )
        positive_ints = {
            "--max-frame-size": self.max_frame_size,
            "--max-content": self.max_content,
            "--send-queue": self.send_queue,
            "--relay-queue": self.relay_queue,
            "--batch-size": self.batch_size,
            "--replay-page": self.replay_page,
            "--store-concurrency": self.store_concurrency,
            "--inbox-max-len": self.inbox_max_len,
            "--max-groups-per-user": self.max_groups_per_user,
            "--max-group-members": self.max_group_members,
            "--max-connections-per-user": self.max_connections_per_user,
            "--max-connections": self.max_connections,
            "--hub-resend-max": self.hub_resend_max,
            "--max-handshakes": self.max_handshakes,
            "--api-max-connections": self.api_max_connections,
        }
        for flag, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.max_frame_size < 1024:
            raise ConfigError(f"--max-frame-size must be at least 1024, got {self.max_frame_size}")
        if self.max_content > self.max_frame_size:
            raise ConfigError("--max-content must not exceed --max-frame-size")
        if self.replay_page * 2 > self.send_queue:
            raise ConfigError("--send-queue must hold at least two replay pages (--replay-page)")
        non_negative = {
            "--forget-grace": self.forget_grace,
            "--batch-linger": self.batch_linger,
            "--rate-limit": self.rate_limit,
            "--rate-burst": self.rate_burst,
            "--idle-timeout": self.idle_timeout,
            "--ping-interval": self.ping_interval,
            "--ping-timeout": self.ping_timeout,
            "--close-timeout": self.close_timeout,
            "--replay-budget": self.replay_budget,
            "--max-refused": self.max_refused,
            "--fill-delay": self.fill_delay,
            "--jwt-max-ttl": self.jwt_max_ttl,
        }
        for flag, number in non_negative.items():
            if number < 0:
                raise ConfigError(f"{flag} must not be negative, got {number}")
        positive = {
            "--presence-ttl": self.presence_ttl,
            "--inbox-max-age": self.inbox_max_age,
            "--dedupe-window": self.dedupe_window,
            "--redis-timeout": self.redis_timeout,
            "--redis-wait-timeout": self.redis_wait_timeout,
            "--api-header-timeout": self.api_header_timeout,
            "--api-body-timeout": self.api_body_timeout,
            "--api-idle-timeout": self.api_idle_timeout,
        }
        for flag, number in positive.items():
            if number <= 0:
                raise ConfigError(f"{flag} must be positive, got {number}")
        if self.redis_wait_replicas < 0:
            raise ConfigError(
                f"--redis-wait-replicas must not be negative, got {self.redis_wait_replicas}"
            )
        if "{" in self.redis_prefix or "}" in self.redis_prefix:
            raise ConfigError("--redis-prefix must not contain braces (they are hash tags)")
        if self.replay_budget and self.replay_budget < self.replay_page:
            raise ConfigError("--replay-budget must be 0 or at least one --replay-page")
        if self.group_join not in POLICIES:
            raise ConfigError(
                f"--group-join must be one of {', '.join(POLICIES)}, got {self.group_join!r}"
            )
        if self.max_connections_per_user > self.max_connections:
            raise ConfigError("--max-connections-per-user must not exceed --max-connections")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        for flag, claim in (
            ("--jwt-audience", self.jwt_audience),
            ("--jwt-issuer", self.jwt_issuer),
        ):
            if claim is not None and not claim:
                raise ConfigError(f"{flag} must not be empty")
        if (self.api_listen is None) != (self.api_key is None):
            raise ConfigError(
                "--api-listen and --api-key go together: give both to serve the server API"
            )
        if self.api_listen is not None:
            parse_host_port(self.api_listen, "--api-listen")
        if self.api_key is not None and len(self.api_key) < 16:
            raise ConfigError("--api-key must be at least 16 characters")
        if self.api_max_users < 1 or self.api_max_body < 1024:
            raise ConfigError("--api-max-users must be at least 1 and --api-max-body 1024")
        if self.fd_reserve < 0:
            raise ConfigError(f"--fd-reserve must not be negative, got {self.fd_reserve}")
        if self.api_max_header_bytes < 1024:
            raise ConfigError(
                f"--api-max-header-bytes must be at least 1024, got {self.api_max_header_bytes}"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")

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


FIELDS = tuple(f.name for f in dataclasses.fields(GatewayConfig))
