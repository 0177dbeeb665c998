"""``python -m im_gateway``: run a gateway, or ``python -m im_gateway token`` to mint a JWT.

The flags are generated from :class:`GatewayConfig`'s fields; every flag can also come
from the environment as ``IM_GATEWAY_<FLAG>`` (upper snake case, e.g.
``IM_GATEWAY_JWT_SECRET``; an empty variable counts as unset) or from ``--config FILE``
(TOML); flags win over the environment, which wins over the file. Errors in
flags or an unusable dependency at start print one line and exit non-zero; SIGINT and
SIGTERM stop the gateway gracefully: SIGTERM drains it (see ``Gateway.drain``: sockets
closed with 1012 within ``--drain-timeout``), SIGINT closes sockets with 1001; presence is
removed. ``--workers N`` runs N gateway processes on the port instead, supervised by this
one (:mod:`im_gateway.workers`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn

from transmit_hub import cli, grpc_io, logs
from transmit_hub.errors import ConfigError as HubConfigError
from transmit_hub.metrics import MetricsServer
from transmit_hub.runtime import loop_factory, tune_gc
from transmit_hub.settings import Loaded, Program

from . import auth, workers
from .config import GatewayConfig, parse_host_port
from .errors import ConfigError, GatewayError, StartupError

if TYPE_CHECKING:
    from .gateway import Gateway

PROG = "python -m im_gateway"
ENV_PREFIX = "IM_GATEWAY_"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(cli.EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


PROGRAM = Program(
    GatewayConfig,
    prog=PROG,
    env_prefix=ENV_PREFIX,
    description=(
        "An IM gateway: WebSocket users on one side, one gRPC stream to the transmit "
        "hub and Redis on the other."
    ),
    epilog=(
        f"Mint a token for testing: {PROG} token --user ID [--secret S] [--ttl SECONDS]. "
        "HTTP on the same port: /ws (WebSocket, ?token=JWT or Authorization: Bearer), "
        "/healthz, /info, / (chat page)."
    ),
    error=ConfigError,
    groups={
        "connections": "connections",
        "api": "server API (for the application's backend; off without both)",
        "security": "security",
        "limits": "limits",
        "timeouts": "timeouts",
        "store": "store",
        "workers": "several processes on one port (--workers)",
        "other": "other",
    },
    logger="im_gateway",
)


def build_parser() -> argparse.ArgumentParser:
    """The gateway's flags, generated from :class:`GatewayConfig`'s fields."""
    return PROGRAM.build_parser()


def build_token_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} token",
        description="Print a signed HS256 token for a user (for tests and the demo).",
    )
    parser.add_argument("--user", required=True, help="the user id (a uint64)")
    parser.add_argument(
        "--secret",
        help=f"the gateway's JWT secret (default: env {_env_name('jwt_secret')})",
    )
    parser.add_argument(
        "--ttl", type=float, default=86400.0, help="seconds the token stays valid (default: 86400)"
    )
    parser.add_argument(
        "--groups",
        help="comma-separated group ids for the groups claim (what --group-join token allows)",
    )
    parser.add_argument("--audience", help="the aud claim (a gateway's --jwt-audience)")
    parser.add_argument("--issuer", help="the iss claim (a gateway's --jwt-issuer)")
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Loaded[GatewayConfig]:
    """Flags, environment and ``--config`` -> a validated config; ConfigError on a problem."""
    return PROGRAM.load(argv, os.environ if environ is None else environ)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Flags, environment and file -> a validated config (exits 2 with one line on an error)."""
    return cli.parse(PROGRAM, argv, environ)


def token_main(argv: Sequence[str]) -> int:
    parser = build_token_parser()
    args = parser.parse_args(argv)
    secret = args.secret or os.environ.get(_env_name("jwt_secret"), "")
    if not secret:
        parser.error(f"--secret or {_env_name('jwt_secret')} is required")
    try:
        user = auth.parse_user_id(args.user)
        groups = None
        if args.groups is not None:
            items = [g.strip() for g in args.groups.split(",") if g.strip()]
            groups = sorted(auth.parse_groups(items, len(items)))
        print(
            auth.mint(
                user,
                secret,
                ttl=args.ttl,
                groups=groups,
                audience=args.audience,
                issuer=args.issuer,
            )
        )
    except GatewayError as exc:
        parser.error(str(exc))
    return 0


async def serve(config: GatewayConfig, limit_note: str | None = None) -> None:
    """Run a gateway until SIGINT or SIGTERM (``limit_note``: the open-file limit's
    line, logged once the gateway is up)."""
    stop = asyncio.Event()
    signals: list[signal.Signals] = []

    def stop_on(sig: signal.Signals) -> None:
        signals.append(sig)
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_on, sig)
    beating = loop.create_task(workers.beat(config), name="heartbeat")  # under --workers
    try:
        await _serve_until(config, stop, signals, limit_note)
    finally:
        beating.cancel()


async def _serve_until(
    config: GatewayConfig,
    stop: asyncio.Event,
    signals: list[signal.Signals],
    limit_note: str | None,
) -> None:
    from .gateway import Gateway

    async with Gateway(config) as gateway, _metrics_server(config, gateway) as metrics_at:
        tune_gc()
        if limit_note:
            logging.getLogger("im_gateway").info("%s", limit_note)
        logging.getLogger("im_gateway").info("%s", grpc_io.engine_note(os.environ))
        also = f", metrics on {metrics_at}" if metrics_at else ""
        logs.say(
            f"im_gateway {gateway.gateway_id} listening on {gateway.address}{also}", logger=PROG
        )
        await stop.wait()
        logging.getLogger("im_gateway").info("stopping gateway %s", gateway.gateway_id)
        if signals[0] == signal.SIGTERM:  # a deploy: users move to another gateway (1012)
            await gateway.drain()


@contextlib.asynccontextmanager
async def _metrics_server(config: GatewayConfig, gateway: Gateway) -> AsyncIterator[str | None]:
    """``GET /metrics`` on ``--metrics-listen`` too, when it is set: its address."""
    if config.metrics_listen is None:
        yield None
        return
    host, port = parse_host_port(config.metrics_listen, "--metrics-listen")
    server = MetricsServer(host, port, gateway.metrics.render)
    try:
        await server.start()
    except HubConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        yield f"{host}:{server.port}"
    finally:
        await server.close()


def _supervise(config: GatewayConfig, args: Sequence[str]) -> int:
    """``--workers N``: supervise N gateway processes; the exit code says how they ended
    (:mod:`im_gateway.workers`)."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(workers.Supervisor(config, args).run())
    except GatewayError as exc:
        return cli.failed(PROGRAM, config, exc)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_main(args[1:])
    if args[:1] == ["probe"]:
        from . import probe

        return probe.main(args[1:])
    config = cli.configure(PROGRAM, args, quiet=("websockets",))
    if config is None:
        return 0  # --print-config
    try:
        if config.workers > 1:
            return _supervise(config, args)
        return cli.run(PROGRAM, config, functools.partial(serve, config), failure=GatewayError)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
