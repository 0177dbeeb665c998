"""The probe's settings (``python -m im_gateway probe --help``): one frozen dataclass
whose fields are its flags, ``IM_GATEWAY_PROBE_*`` variables and ``--config`` keys (see
:mod:`transmit_hub.settings`), and the program built from them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from transmit_hub import cli, logs
from transmit_hub.config import parse_listen
from transmit_hub.settings import Loaded, Program, between, check_fields, setting

from . import auth
from .errors import ConfigError

PROG: Final = "python -m im_gateway probe"
ENV_PREFIX: Final = "IM_GATEWAY_PROBE_"
DEFAULT_USER_BASE: Final = 9_000_000_000_000_000_000


def _gateway_urls(text: str) -> tuple[str, ...]:
    return tuple(url.strip() for url in text.split(",") if url.strip())


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """The probe's settings: each field is a flag, an ``IM_GATEWAY_PROBE_*`` variable and a
    ``--config`` key (see :mod:`transmit_hub.settings`)."""

    gateway: str = setting(
        "",
        "the gateways' WebSocket URLs (ws://HOST:PORT/ws or wss://...), comma-separated; "
        "or give the flag once per gateway (required)",
        metavar="URL",
    )
    jwt_secret: str = setting(
        "",
        "the gateways' JWT secret: the probe signs its own users' tokens (required)",
        metavar="SECRET",
        secret=True,
    )
    user_base: int = setting(
        DEFAULT_USER_BASE,
        "the probe's users are ID, ID+1, ... (one per gateway; keep this range out of your "
        "application's users)",
        metavar="ID",
    )
    interval: float = setting(
        5.0, "seconds between rounds", metavar="SECONDS", check=between(0.1, 3600)
    )
    deadline: float = setting(
        3.0,
        "an acknowledged message not seen this long after it was sent is a loss",
        metavar="SECONDS",
        check=between(0.05, 3600),
    )
    summary_every: float = setting(
        60.0, "seconds between summary log lines", metavar="SECONDS", check=between(1, 86400)
    )
    metrics_listen: str | None = setting(
        None,
        "serve the probe's Prometheus metrics at GET /metrics here (default: off)",
        metavar="HOST:PORT",
    )
    audience: str | None = setting(
        None, "the aud claim of the tokens (the gateways' --jwt-audience)", metavar="AUD"
    )
    issuer: str | None = setting(
        None, "the iss claim of the tokens (the gateways' --jwt-issuer)", metavar="ISS"
    )
    token_ttl: float = setting(
        3600.0,
        "seconds the probe's tokens live (each connection signs a new one; keep it within "
        "the gateways' --jwt-max-lifetime)",
        metavar="SECONDS",
        check=between(10, 86400 * 365),
    )
    log_level: str = logs.level_setting()
    log_format: str = logs.format_setting()

    def __post_init__(self) -> None:
        check_fields(self, ConfigError)
        if not self.gateways:
            raise ConfigError("give at least one --gateway URL (ws://HOST:PORT/ws)")
        for url in self.gateways:
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss") or not parts.netloc:
                raise ConfigError(f"--gateway {url!r}: expected ws://HOST:PORT/ws or wss://...")
        if len(set(self.gateways)) != len(self.gateways):
            raise ConfigError("a --gateway is given twice")
        if not self.jwt_secret:
            raise ConfigError(f"--jwt-secret (or {ENV_PREFIX}JWT_SECRET) is required")
        last = self.user_base + max(len(self.gateways), 2) - 1
        if self.user_base < 1 or last > auth.UINT64_MAX:
            raise ConfigError("--user-base must leave room for the probe users in 1..2^64-1")
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except Exception as exc:
                raise ConfigError(str(exc).replace("--listen", "--metrics-listen", 1)) from None

    @property
    def gateways(self) -> tuple[str, ...]:
        """The ``--gateway`` URLs, in order."""
        return _gateway_urls(self.gateway)


PROGRAM: Final = Program(
    ProbeConfig,
    prog=PROG,
    env_prefix=ENV_PREFIX,
    description=(
        "Probe a running cluster end to end: hold a synthetic user on each gateway, send a "
        "message between every pair every --interval seconds, and report the delivery "
        "latency per pair and any message acknowledged but not seen within --deadline (a "
        "loss)."
    ),
    error=ConfigError,
    logger="im_gateway.probe",
)


def build_parser() -> argparse.ArgumentParser:
    """The probe's flags, generated from :class:`ProbeConfig`'s fields."""
    return PROGRAM.build_parser()


def join_repeated_gateways(argv: Sequence[str]) -> list[str]:
    """``--gateway A --gateway B`` -> ``--gateway A,B`` (the flag may be repeated)."""
    urls: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--gateway":
            urls.append(next(args, ""))
        elif arg.startswith("--gateway="):
            urls.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    return [*rest, "--gateway", ",".join(urls)] if urls else rest


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Loaded[ProbeConfig]:
    """Flags, ``IM_GATEWAY_PROBE_*`` variables and ``--config`` -> a validated config;
    ConfigError on a problem."""
    return PROGRAM.load(join_repeated_gateways(argv), os.environ if environ is None else environ)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ProbeConfig:
    """Like :func:`load`, but a problem exits 2 with one line (in the log format asked for)."""
    return cli.parse(PROGRAM, join_repeated_gateways(argv), environ)
