"""The hub's settings: one frozen dataclass; each field declares its flag once.

The parser, the ``TRANSMIT_HUB_*`` environment, ``--config FILE`` and ``--print-config``
are generated from the fields by :mod:`transmit_hub.settings` (see there for the rules).
To add a setting, add a field with :func:`~transmit_hub.settings.setting` here (and its
row in the README's flag table); :class:`~transmit_hub.server.HubServer` reads it from
the config it is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .logs import format_setting, level_setting
from .settings import Loaded, Program, at_least, between, check_fields, setting
from .tls import ServerTls

__all__ = ["ENV_PREFIX", "PROGRAM", "HubConfig", "build_parser", "parse_config", "parse_listen"]

ENV_PREFIX = "TRANSMIT_HUB_"


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); raises :class:`ConfigError`."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--listen {listen!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--listen {listen!r}: port must be 0..65535")
    return host.strip("[]"), port


def _address(value: str) -> str | None:
    try:
        parse_listen(value)
    except ConfigError as exc:
        return str(exc).replace("--listen ", "", 1)
    return None


def _not_blank(value: str) -> str | None:
    return None if value.strip() else "must not be empty (leave it unset instead)"


@dataclass(frozen=True, slots=True, kw_only=True)
class HubConfig:
    """Everything a hub needs; raises ConfigError when invalid. See ``--help`` per field."""

    listen: str = setting(
        "127.0.0.1:50051", "address to serve gRPC on (port 0 picks a free one)", metavar="HOST:PORT"
    )
    auth_token: str | None = setting(
        None,
        "require metadata 'authorization: Bearer TOKEN' on every RPC (default: no auth)",
        metavar="TOKEN",
        check=_not_blank,
        secret=True,
    )
    queue_size: int = setting(
        4096,
        "deliveries waiting per gateway before the hub refuses more for it and tells "
        "the senders (QUEUE_FULL)",
        metavar="N",
        check=at_least(1),
    )
    queue_bytes: int = setting(
        64 * 1024 * 1024,
        "bytes held per gateway (deliveries and notices waiting, and the frame being written "
        "to it until the write completes) before the hub refuses more for it and tells the "
        "senders (QUEUE_FULL); one delivery always fits an empty queue",
        metavar="BYTES",
        check=at_least(1024),
    )
    queue_bytes_total: int = setting(
        1024 * 1024 * 1024,
        "bytes held for all the gateways together (deliveries and notices waiting, and the "
        "frames being written) before the hub refuses more and tells the senders "
        "(QUEUE_FULL), so that many gateways reading slowly at once cannot exhaust the "
        "hub's memory; an empty queue still takes "
        "one delivery, so the total passes this by at most one delivery per attached "
        "gateway. 1 GiB: 16 gateways' full --queue-bytes, or 256 KiB each for 4,096, within "
        "a host of a few GiB",
        metavar="BYTES",
        check=at_least(1024),
    )
    grace: float = setting(
        5.0,
        "on SIGINT/SIGTERM, how long to let queued deliveries drain before the streams are closed",
        metavar="SECONDS",
        check=between(0, 3600),
    )
    hub_id: str | None = setting(
        None,
        "this hub's id, sent to gateways in the Welcome (default: host, pid and a random suffix)",
        metavar="ID",
        check=_not_blank,
    )
    tls_cert: str | None = setting(
        None,
        "serve TLS with this PEM certificate (chain) (with --tls-key; default: plaintext)",
        metavar="FILE",
    )
    tls_key: str | None = setting(None, "the PEM private key of --tls-cert", metavar="FILE")
    tls_client_ca: str | None = setting(
        None,
        "mutual TLS: every RPC needs a client certificate signed by this PEM CA, and a "
        "gateway may attach only with an id that is a DNS name in its certificate's "
        "subjectAltName (else PERMISSION_DENIED) (needs --tls-cert)",
        metavar="FILE",
    )
    hello_timeout: float = setting(
        10.0,
        "a Connect stream must send its Hello within this, else it is ended (DEADLINE_EXCEEDED)",
        metavar="SECONDS",
        check=lambda v: None if 0 < v <= 3600 else "must be more than 0 and at most 3600",
    )
    claim_timeout: float = setting(
        2.0,
        "when a gateway id is claimed while held, how long the holder has to answer "
        "the hub's probe: a live holder keeps the id (the claim is refused with "
        "ALREADY_EXISTS), a silent one is replaced",
        metavar="SECONDS",
        check=lambda v: None if 0 < v <= 60 else "must be more than 0 and at most 60",
    )
    max_gateways: int = setting(
        4096,
        "most gateways attached at once (more are refused with RESOURCE_EXHAUSTED); "
        "also the most departed gateways whose stats are kept",
        metavar="N",
        check=between(1, 1_000_000),
    )
    max_hello_waiting: int = setting(
        1024,
        "most streams open at once that have not sent their Hello yet; one more ends "
        "the one that waited longest (RESOURCE_EXHAUSTED), so silent streams cannot keep a "
        "gateway out; each waits at most --hello-timeout. With --auth-token, also the most "
        "refused streams (no or a wrong token) that wait for their first message before "
        "the refusal; more are refused at once",
        metavar="N",
        check=between(1, 1_000_000),
    )
    forget_after: float = setting(
        3600.0,
        "the stats of a gateway that left are forgotten this long after it left",
        metavar="SECONDS",
        check=at_least(0),
    )
    gateway_keepalive: float = setting(
        2.0,
        "probe a gateway's stream after this long without a frame from it, and end it "
        "(detach the gateway) after twice this: a silent gateway, or a dead network path to "
        "it, is noticed as fast as a gateway notices a silent hub",
        metavar="SECONDS",
        check=between(0.1, 3600),
    )
    gateway_write_timeout: float = setting(
        10.0,
        "end a gateway's stream (detach the gateway) when one write to it (a frame: at "
        "most 4 MiB, or one bigger delivery) has made no progress for this long: a gateway "
        "that keeps sending but reads nothing, whose maps would otherwise be refused "
        "QUEUE_FULL for as long as it stays; looked at four times per --gateway-keepalive "
        "(0: never)",
        metavar="SECONDS",
        check=lambda v: None if v == 0 or 0.1 <= v <= 3600 else "must be 0 (never) or 0.1 to 3600",
    )
    metrics_listen: str | None = setting(
        None,
        "serve Prometheus metrics at GET /metrics on this address (default: off)",
        metavar="HOST:PORT",
        check=_address,
    )
    metrics_max_clients: int = setting(
        16,
        "metrics connections served at once; one more closes the oldest that has not sent "
        "its request yet (a slow or silent client cannot lock a scraper out), or is closed "
        "at once when every one has",
        metavar="N",
        check=between(1, 10_000),
    )
    metrics_timeout: float = setting(
        5.0,
        "a metrics connection has this long to send its request and take the answer",
        metavar="SECONDS",
        check=lambda v: None if 0 < v <= 3600 else "must be more than 0 and at most 3600",
    )
    log_level: str = level_setting()
    log_format: str = format_setting()

    def __post_init__(self) -> None:
        check_fields(self, ConfigError)
        parse_listen(self.listen)

    def server_tls(self) -> ServerTls | None:
        """Read the TLS files (``None``: plaintext); raises ConfigError naming the flag."""
        return ServerTls.from_files(self.tls_cert, self.tls_key, self.tls_client_ca)


PROGRAM = Program(
    HubConfig,
    prog="python -m transmit_hub",
    env_prefix=ENV_PREFIX,
    description=(
        "The transmit hub: IM gateways attach over one gRPC stream each and the hub "
        "routes their TransmitMaps to each other."
    ),
    error=ConfigError,
    name="transmit_hub",
)


def build_parser() -> argparse.ArgumentParser:
    return PROGRAM.build_parser()


def load(argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> Loaded[HubConfig]:
    """Flags, ``env`` (default ``os.environ``) and ``--config`` -> the config; ConfigError."""
    return PROGRAM.load(sys.argv[1:] if argv is None else argv, env)


def parse_config(argv: Sequence[str] | None, env: Mapping[str, str] | None = None) -> HubConfig:
    """Build the config from ``argv`` and ``env`` (default ``os.environ``)."""
    return load(argv, env).config
