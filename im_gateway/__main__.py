"""``python -m im_gateway``: run a gateway, or ``python -m im_gateway token`` to mint a JWT.

Every flag can also come from the environment as ``IM_GATEWAY_<FLAG>`` (upper snake
case, e.g. ``IM_GATEWAY_JWT_SECRET``); a flag on the command line wins. Errors in
flags or an unusable dependency at start print one line and exit non-zero; SIGINT and
SIGTERM stop the gateway gracefully (sockets are closed with 1001, presence removed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from transmit_hub.runtime import loop_factory, raise_open_file_limit, tune_gc

from . import auth
from .config import LOG_LEVELS, GatewayConfig
from .errors import GatewayError
from .group_policy import POLICIES

PROG = "python -m im_gateway"
ENV_PREFIX = "IM_GATEWAY_"
EXIT_USAGE = 2
EXIT_STARTUP = 1


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _add(
    parser: argparse._ActionsContainer,
    flag: str,
    *,
    help: str,
    type: Callable[[str], Any] = str,
    default: Any = None,
    metavar: str | None = None,
) -> None:
    dest = flag.lstrip("-").replace("-", "_")
    env = _env_name(dest)
    shown = "" if default is None else f" (default: {default})"
    parser.add_argument(
        flag,
        dest=dest,
        type=type,
        default=default,
        metavar=metavar or dest.upper(),
        help=f"{help}{shown} [env {env}]",
    )


def build_parser() -> argparse.ArgumentParser:
    """The gateway's flags (defaults come from :class:`GatewayConfig`)."""
    d = GatewayConfig.__dataclass_fields__
    parser = _Parser(
        prog=PROG,
        description=(
            "An IM gateway: WebSocket users on one side, one gRPC stream to the transmit "
            "hub and Redis on the other."
        ),
        epilog=(
            f"Mint a token for testing: {PROG} token --user ID [--secret S] [--ttl SECONDS]. "
            "HTTP on the same port: /ws (WebSocket, ?token=JWT or Authorization: Bearer), "
            "/healthz, /info, / (chat page)."
        ),
    )
    conn = parser.add_argument_group("connections")
    _add(
        conn,
        "--listen",
        help="address to serve WebSocket and HTTP on",
        default=d["listen"].default,
        metavar="HOST:PORT",
    )
    _add(
        conn,
        "--gateway-id",
        help="this gateway's unique id (default: derived from host name and port)",
        metavar="ID",
    )
    _add(
        conn,
        "--hub",
        help=(
            "the transmit hubs, comma-separated: the gateway attaches to every one, sends "
            "each message through one and takes deliveries from all"
        ),
        default=d["hub"].default,
        metavar="HOST:PORT[,HOST:PORT...]",
    )
    _add(conn, "--hub-token", help="bearer token for the hub (its --auth-token)", metavar="TOKEN")
    _add(
        conn,
        "--hub-ca",
        help="link to the hub over TLS, verifying it with this PEM CA (default: plaintext)",
        metavar="FILE",
    )
    _add(
        conn,
        "--hub-cert",
        help="PEM client certificate for a hub with mutual TLS (with --hub-key); the "
        "hub accepts only a --gateway-id that is a DNS name in its subjectAltName",
        metavar="FILE",
    )
    _add(conn, "--hub-key", help="the PEM private key of --hub-cert", metavar="FILE")
    _add(
        conn,
        "--hub-keepalive",
        type=float,
        help=(
            "ping each hub this often and drop a hub whose ping is not answered within "
            "as long again (a stopped hub is noticed in about twice this)"
        ),
        default=d["hub_keepalive"].default,
        metavar="SECONDS",
    )
    _add(
        conn,
        "--hub-resend-window",
        type=float,
        help=(
            "when a hub's stream breaks, the messages sent through it this long before "
            "go again through another hub (at least 2 x --hub-keepalive)"
        ),
        default=d["hub_resend_window"].default,
        metavar="SECONDS",
    )
    _add(
        conn,
        "--hub-resend-max",
        type=int,
        help="most recent messages remembered for sending again (beyond it, the oldest are forgotten)",
        default=d["hub_resend_max"].default,
        metavar="MAPS",
    )
    _add(
        conn,
        "--redis-url",
        help="Redis for presence, groups and inboxes: redis://HOST:PORT/DB (one Redis) or "
        "redis+cluster://HOST:PORT[,HOST:PORT...] (a Redis Cluster, reached through any node listed)",
        default=d["redis_url"].default,
        metavar="URL",
    )
    _add(
        conn,
        "--jwt-secret",
        help="HS256 secret that signs user tokens (required)",
        metavar="SECRET",
    )
    api = parser.add_argument_group("server API (for the application's backend; off without both)")
    _add(
        api,
        "--api-listen",
        help="serve POST /api/<method> (publish, groups, presence, disconnect, history) here",
        metavar="HOST:PORT",
    )
    _add(api, "--api-key", help="the bearer key every API call must carry", metavar="KEY")
    _add(
        api,
        "--api-max-users",
        type=int,
        help="most user ids in one API call's 'users' list",
        default=d["api_max_users"].default,
        metavar="N",
    )
    _add(
        api,
        "--api-max-body",
        type=int,
        help="largest API request body (a larger one is answered 400 too_large)",
        default=d["api_max_body"].default,
        metavar="BYTES",
    )
    _add(
        api,
        "--api-header-timeout",
        type=float,
        help="a request's headers must be complete this long after the connection opens "
        "(or after their first byte, between requests); else 408 and the connection closes",
        default=d["api_header_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        api,
        "--api-body-timeout",
        type=float,
        help="a request's body must be complete this long after its headers; else 408",
        default=d["api_body_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        api,
        "--api-idle-timeout",
        type=float,
        help="close a kept-alive API connection that sends no next request for this long",
        default=d["api_idle_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        api,
        "--api-max-header-bytes",
        type=int,
        help="largest request header block (request line and headers); beyond, 431 and "
        "the connection closes, before the rest is read",
        default=d["api_max_header_bytes"].default,
        metavar="BYTES",
    )
    _add(
        api,
        "--api-max-connections",
        type=int,
        help="API connections open at once; one more gets 503 and is closed",
        default=d["api_max_connections"].default,
        metavar="N",
    )
    security = parser.add_argument_group("security")
    _add(
        security,
        "--jwt-max-ttl",
        type=float,
        help="refuse (401) a token whose exp is further away than this (0: no limit)",
        default=d["jwt_max_ttl"].default,
        metavar="SECONDS",
    )
    _add(
        security,
        "--jwt-audience",
        help="when set, tokens must carry this aud claim",
        metavar="AUD",
    )
    _add(
        security,
        "--jwt-issuer",
        help="when set, tokens must carry this iss claim",
        metavar="ISS",
    )
    security.add_argument(
        "--group-join",
        dest="group_join",
        choices=POLICIES,
        default=d["group_join"].default,
        help=(
            "who may join groups with type 12/13: server (only the server API; clients get "
            "forbidden), token (groups listed in the JWT's groups claim; leaving is free), "
            f"open (anyone, any group: demos) (default: {d['group_join'].default}) "
            f"[env {_env_name('group_join')}]"
        ),
    )
    _add(
        security,
        "--max-groups-per-user",
        type=int,
        help="groups one user may be in (and may be listed in a token); beyond: forbidden",
        default=d["max_groups_per_user"].default,
        metavar="GROUPS",
    )
    _add(
        security,
        "--max-group-members",
        type=int,
        help="members one group may have; beyond: forbidden",
        default=d["max_group_members"].default,
        metavar="USERS",
    )
    _add(
        security,
        "--max-connections-per-user",
        type=int,
        help="WebSockets one user may hold on this gateway; beyond, the upgrade gets HTTP 429",
        default=d["max_connections_per_user"].default,
        metavar="N",
    )
    _add(
        security,
        "--max-connections",
        type=int,
        help="WebSockets this gateway holds in all; beyond, the upgrade gets HTTP 503",
        default=d["max_connections"].default,
        metavar="N",
    )
    _add(
        security,
        "--max-handshakes",
        type=int,
        help="connections on --listen still in their opening handshake (or an HTTP "
        "request) at once; one more gets HTTP 503 and is closed at once",
        default=d["max_handshakes"].default,
        metavar="N",
    )
    _add(
        security,
        "--fd-reserve",
        type=int,
        help="descriptors kept free for /healthz, the hubs and Redis: with fewer left, an "
        "upgrade gets HTTP 503 (with half as many, any new connection does)",
        default=d["fd_reserve"].default,
        metavar="N",
    )
    _add(
        security,
        "--tls-cert",
        help="PEM certificate (chain): serve wss:// and https:// on --listen (with --tls-key)",
        metavar="FILE",
    )
    _add(
        security,
        "--tls-key",
        help="PEM private key of --tls-cert",
        metavar="FILE",
    )
    limits = parser.add_argument_group("limits")
    _add(
        limits,
        "--max-frame-size",
        type=int,
        help="largest client frame in bytes; larger ones close the socket with 1009",
        default=d["max_frame_size"].default,
        metavar="BYTES",
    )
    _add(
        limits,
        "--max-content",
        type=int,
        help="largest message content in UTF-8 bytes; larger ones are refused with too_large",
        default=d["max_content"].default,
        metavar="BYTES",
    )
    _add(
        limits,
        "--rate-limit",
        type=float,
        help="frames per second allowed per connection on average (0: no limit)",
        default=d["rate_limit"].default,
        metavar="PER_SECOND",
    )
    _add(
        limits,
        "--rate-burst",
        type=float,
        help="frames a connection may send at once before the rate applies",
        default=d["rate_burst"].default,
        metavar="FRAMES",
    )
    _add(
        limits,
        "--send-queue",
        type=int,
        help="frames queued per connection; a client that lets it fill is disconnected and recovers from its inbox",
        default=d["send_queue"].default,
        metavar="FRAMES",
    )
    _add(
        limits,
        "--relay-queue",
        type=int,
        help="accepted frames waiting to be stored; when full, senders wait",
        default=d["relay_queue"].default,
        metavar="FRAMES",
    )
    _add(
        limits,
        "--batch-size",
        type=int,
        help="most frames stored per Redis round trip",
        default=d["batch_size"].default,
        metavar="FRAMES",
    )
    _add(
        limits,
        "--batch-linger",
        type=float,
        help=(
            "while traffic flows, how long a small batch waits for more frames before it is "
            "stored (fewer Redis round trips and hub frames; an idle gateway never waits; "
            "0 disables)"
        ),
        default=d["batch_linger"].default,
        metavar="SECONDS",
    )
    _add(
        limits,
        "--replay-page",
        type=int,
        help="inbox entries read per replay round trip",
        default=d["replay_page"].default,
        metavar="ENTRIES",
    )
    _add(
        limits,
        "--replay-budget",
        type=int,
        help="inbox entries per minute one connection may ask to be replayed (type 14); "
        "beyond it the replay stops with rate_limited and an end marker (0: no limit)",
        default=d["replay_budget"].default,
        metavar="ENTRIES",
    )
    _add(
        limits,
        "--max-refused",
        type=int,
        help="refused frames per minute before a connection is closed with 1008 (0: never)",
        default=d["max_refused"].default,
        metavar="FRAMES",
    )
    _add(
        limits,
        "--fill-delay",
        type=float,
        help="seconds a hole in a connection's positions may wait for its push before it is "
        "read from the inbox",
        default=d["fill_delay"].default,
        metavar="SECONDS",
    )
    _add(
        limits,
        "--store-concurrency",
        type=int,
        help="replay, ack and group calls to Redis in flight at once",
        default=d["store_concurrency"].default,
        metavar="CALLS",
    )
    timeouts = parser.add_argument_group("timeouts")
    _add(
        timeouts,
        "--idle-timeout",
        type=float,
        help="close a connection that sends no frame for this long (0: never)",
        default=d["idle_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        timeouts,
        "--ping-interval",
        type=float,
        help="WebSocket ping interval (0: no pings)",
        default=d["ping_interval"].default,
        metavar="SECONDS",
    )
    _add(
        timeouts,
        "--ping-timeout",
        type=float,
        help="close a connection whose pong is this late (0: never)",
        default=d["ping_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        timeouts,
        "--close-timeout",
        type=float,
        help="wait this long for a closing handshake",
        default=d["close_timeout"].default,
        metavar="SECONDS",
    )
    store = parser.add_argument_group("store")
    _add(
        store,
        "--redis-prefix",
        help="prefix of every Redis key",
        default=d["redis_prefix"].default,
        metavar="PREFIX",
    )
    _add(
        store,
        "--redis-timeout",
        type=float,
        help="seconds a Redis command may take before it fails (a stalled Redis); a batch "
        "that timed out is sent once more, deduplicated",
        default=d["redis_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        store,
        "--redis-wait-replicas",
        type=int,
        help="acknowledge a message only once WAIT says this many replicas hold it; "
        "otherwise the sender gets internal (not replicated; send again)",
        default=d["redis_wait_replicas"].default,
        metavar="N",
    )
    _add(
        store,
        "--redis-wait-timeout",
        type=float,
        help="how long WAIT waits for --redis-wait-replicas",
        default=d["redis_wait_timeout"].default,
        metavar="SECONDS",
    )
    _add(
        store,
        "--presence-ttl",
        type=float,
        help="presence entries expire this long after the gateway's last refresh",
        default=d["presence_ttl"].default,
        metavar="SECONDS",
    )
    _add(
        store,
        "--forget-grace",
        type=float,
        help=(
            "after each hub (re)attach, ignore the hub's 'gateway not attached' notices "
            "this long (other gateways may still be re-attaching); later notices clear "
            "that gateway's presence entries"
        ),
        default=d["forget_grace"].default,
        metavar="SECONDS",
    )
    _add(
        store,
        "--inbox-max-len",
        type=int,
        help="messages kept per user inbox",
        default=d["inbox_max_len"].default,
        metavar="ENTRIES",
    )
    _add(
        store,
        "--inbox-max-age",
        type=float,
        help="how long inbox messages are kept",
        default=d["inbox_max_age"].default,
        metavar="SECONDS",
    )
    _add(
        store,
        "--dedupe-window",
        type=float,
        help="how long a client message id is remembered for dedupe",
        default=d["dedupe_window"].default,
        metavar="SECONDS",
    )
    misc = parser.add_argument_group("other")
    misc.add_argument(
        "--compression",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=(
            "offer permessage-deflate (about 45 KB per connection instead of 13 KB; "
            f"default: off) [env {_env_name('compression')}]"
        ),
    )
    _add(
        misc,
        "--log-level",
        type=str.upper,
        help=f"one of {', '.join(LOG_LEVELS)}",
        default=d["log_level"].default,
        metavar="LEVEL",
    )
    return parser


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


def _apply_env(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Use ``IM_GATEWAY_*`` variables as defaults, so flags still win."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = environ.get(_env_name(action.dest))
        if value is None:
            continue
        convert: Callable[[str], Any] = (
            _bool
            if action.dest == "compression"
            else (action.type if callable(action.type) else str)
        )
        try:
            parser.set_defaults(**{action.dest: convert(value)})
        except ValueError:
            parser.error(f"environment variable {_env_name(action.dest)}: bad value {value!r}")


def parse_config(argv: Sequence[str], environ: dict[str, str] | None = None) -> GatewayConfig:
    """Flags and environment -> a validated config (exits with one line on an error)."""
    parser = build_parser()
    _apply_env(parser, dict(os.environ) if environ is None else environ)
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return GatewayConfig(**values)
    except GatewayError as exc:
        parser.error(str(exc))


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
    from .server import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Gateway(**{f: getattr(config, f) for f in config.__dataclass_fields__}) as gateway:
        if limit_note:
            logging.getLogger("im_gateway").info("%s", limit_note)
        tune_gc()
        print(f"im_gateway {gateway.gateway_id} listening on {gateway.address}", flush=True)
        await stop.wait()
        logging.getLogger("im_gateway").info("stopping gateway %s", gateway.gateway_id)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_main(args[1:])
    config = parse_config(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.log_level.upper() != "DEBUG":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    limit_note = raise_open_file_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(config, limit_note))
    except GatewayError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
