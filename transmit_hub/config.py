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

    def __post_init__(self) -> None:
        parse_listen(self.listen)
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
        if name == "queue_size":
            kwargs[name] = _number(int, "--queue-size", value)
        elif name == "grace":
            kwargs[name] = _number(float, "--grace", value)
        else:
            kwargs[name] = value
    return HubConfig(**kwargs)  # type: ignore[arg-type]


def _number(kind: type[int] | type[float], flag: str, text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not a number") from None
