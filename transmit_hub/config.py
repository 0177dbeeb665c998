"""The hub's settings: a frozen dataclass that validates itself, built from flags and env.

Every flag can also come from the environment as ``TRANSMIT_HUB_<FLAG>`` in upper snake
case (``--auth-token`` -> ``TRANSMIT_HUB_AUTH_TOKEN``); a flag on the command line wins.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .server import parse_listen
from .tls import ServerTls

__all__ = ["ENV_PREFIX", "HubConfig", "build_parser", "parse_config"]

ENV_PREFIX = "TRANSMIT_HUB_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Everything ``python -m transmit_hub`` needs; raises ConfigError when invalid."""

    listen: str = "127.0.0.1:50051"
    auth_token: str | None = None
    queue_size: int = 4096
    grace: float = 5.0
    hub_id: str | None = None
    log_level: str = "INFO"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    hello_timeout: float = 10.0
    max_hello_waiting: int = 1024
    claim_timeout: float = 2.0
    max_gateways: int = 4096
    forget_after: float = 3600.0
    metrics_listen: str | None = None

    def __post_init__(self) -> None:
        parse_listen(self.listen)
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("--listen", "--metrics-listen", 1)) from None
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConfigError("--auth-token must not be empty (leave it unset for no auth)")
        if self.queue_size < 1:
            raise ConfigError(f"--queue-size must be at least 1, not {self.queue_size}")
        if not 0 <= self.grace <= 3600:
            raise ConfigError(f"--grace must be between 0 and 3600 seconds, not {self.grace}")
        if self.hub_id is not None and not self.hub_id.strip():
            raise ConfigError("--hub-id must not be empty")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
        if not 0 < self.hello_timeout <= 3600:
            raise ConfigError(
                f"--hello-timeout must be between 0 and 3600 seconds, not {self.hello_timeout}"
            )
        if not 0 < self.claim_timeout <= 60:
            raise ConfigError(
                f"--claim-timeout must be between 0 and 60 seconds, not {self.claim_timeout}"
            )
        if not 1 <= self.max_hello_waiting <= 1_000_000:
            raise ConfigError(
                f"--max-hello-waiting must be 1..1000000, not {self.max_hello_waiting}"
            )
        if not 1 <= self.max_gateways <= 1_000_000:
            raise ConfigError(f"--max-gateways must be 1..1000000, not {self.max_gateways}")
        if self.forget_after < 0:
            raise ConfigError(f"--forget-after must not be negative, not {self.forget_after}")

    def server_tls(self) -> ServerTls | None:
        """Read the TLS files (``None``: plaintext); raises ConfigError naming the flag."""
        return ServerTls.from_files(self.tls_cert, self.tls_key, self.tls_client_ca)

    @property
    def log_level_number(self) -> int:
        return int(getattr(logging, self.log_level.upper()))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def _env(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper().replace('-', '_')}"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m transmit_hub",
        description=(
            "The transmit hub: IM gateways attach over one gRPC stream each and the hub "
            "routes their TransmitMaps to each other. Every flag can also be set in the "
            "environment as TRANSMIT_HUB_<FLAG> (e.g. TRANSMIT_HUB_AUTH_TOKEN); flags win."
        ),
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to serve gRPC on (default 127.0.0.1:50051; port 0 picks a free one)",
    )
    p.add_argument(
        "--auth-token",
        metavar="TOKEN",
        help="require metadata 'authorization: Bearer TOKEN' on every RPC (default: no auth)",
    )
    p.add_argument(
        "--queue-size",
        metavar="N",
        help="deliveries waiting per gateway before the hub refuses more for it and tells "
        "the senders (QUEUE_FULL) (default 4096)",
    )
    p.add_argument(
        "--grace",
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, how long to let queued deliveries drain before the "
        "streams are closed (default 5)",
    )
    p.add_argument(
        "--hub-id",
        metavar="ID",
        help="this hub's id, sent to gateways in the Welcome (default: host, pid and a "
        "random suffix)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve TLS with this PEM certificate (chain) (with --tls-key; default: plaintext)",
    )
    p.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="mutual TLS: every RPC needs a client certificate signed by this PEM CA, and a "
        "gateway may attach only with an id that is a DNS name in its certificate's "
        "subjectAltName (else PERMISSION_DENIED) (needs --tls-cert)",
    )
    p.add_argument(
        "--hello-timeout",
        metavar="SECONDS",
        help="a Connect stream must send its Hello within this, else it is ended "
        "(DEADLINE_EXCEEDED) (default 10)",
    )
    p.add_argument(
        "--claim-timeout",
        metavar="SECONDS",
        help="when a gateway id is claimed while held, how long the holder has to answer "
        "the hub's probe: a live holder keeps the id (the claim is refused with "
        "ALREADY_EXISTS), a silent one is replaced (default 2)",
    )
    p.add_argument(
        "--max-gateways",
        metavar="N",
        help="most gateways attached at once (more are refused with RESOURCE_EXHAUSTED); "
        "also the most departed gateways whose stats are kept (default 4096)",
    )
    p.add_argument(
        "--max-hello-waiting",
        metavar="N",
        help="most streams open at once that have not sent their Hello yet (more are "
        "refused with RESOURCE_EXHAUSTED; each waits at most --hello-timeout) (default 1024)",
    )
    p.add_argument(
        "--forget-after",
        metavar="SECONDS",
        help="the stats of a gateway that left are forgotten this long after it left "
        "(default 3600)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at GET /metrics on this address (default: off)",
    )
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default INFO)",
    )
    return p


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> HubConfig:
    """Build the config from ``argv`` and ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    args = vars(build_parser().parse_args(argv))
    values: dict[str, str] = {}
    for name, value in args.items():
        flag = name.replace("_", "-")
        if value is None:
            value = env.get(_env(flag)) or None  # an empty variable counts as unset
        if value is not None:
            values[name] = value
    kwargs: dict[str, object] = {}
    for name, value in values.items():
        if name in ("queue_size", "max_gateways", "max_hello_waiting"):
            kwargs[name] = _number(int, "--" + name.replace("_", "-"), value)
        elif name in ("grace", "hello_timeout", "claim_timeout", "forget_after"):
            kwargs[name] = _number(float, "--" + name.replace("_", "-"), value)
        else:
            kwargs[name] = value
    return HubConfig(**kwargs)  # type: ignore[arg-type]


def _number(kind: type[int] | type[float], flag: str, text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number") from None
