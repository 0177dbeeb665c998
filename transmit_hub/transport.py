"""gRPC transport settings shared by the hub server and the gateway link.

Both ends are configured here so they agree: the link pings every few seconds, and the
server must accept that rate, or it would end the connection for "too many pings".
"""

from __future__ import annotations

from typing import Any, Final

from .errors import ConfigError

__all__ = [
    "CHANNEL_OPTIONS",
    "CONNECT_METHOD",
    "MAX_MESSAGE_BYTES",
    "SERVER_OPTIONS",
    "SERVICE_NAME",
    "channel_options",
]

SERVICE_NAME: Final = "transmit.v1.TransmitHubService"
CONNECT_METHOD: Final = f"/{SERVICE_NAME}/Connect"

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest frame either way, so a batch of big messages passes (gRPC's default is 4 MiB)."""

KEEPALIVE_TIME_MS: Final = 3000
"""Ping a peer after this long without traffic..."""
KEEPALIVE_TIMEOUT_MS: Final = 3000
"""...and drop the connection when the ping is not answered within this: a dead peer
(kill -9 of a whole host, a pulled cable) is detected in about 6 seconds."""

_COMMON: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # gRPC core also times ping acks on its own (default a minute): keep them aligned.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    *_COMMON,
    # Accept the links' pings (one per KEEPALIVE_TIME_MS) without calling them abusive.
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 3),
    ("grpc.http2.max_ping_strikes", 0),
    # One listener per port: a port in use is an error, not a silently shared socket.
    ("grpc.so_reuseport", 0),
)

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    *_COMMON,
    ("grpc.enable_retries", 0),
    # Each link its own connection, so the link's own backoff rules reconnects.
    ("grpc.use_local_subchannel_pool", 1),
)


def channel_options(keepalive: float) -> tuple[tuple[str, Any], ...]:
    """:data:`CHANNEL_OPTIONS` with the link pinging every ``keepalive`` seconds and dropping
    a connection whose ping is not answered within ``keepalive`` seconds more.

    A stopped hub (SIGSTOP, a frozen VM) is then noticed within about twice ``keepalive``.
    The hub accepts pings this often (``max_ping_strikes`` 0: never "too many pings").
    """
    if not 0.1 <= keepalive <= 3600:
        raise ConfigError(f"keepalive must be 0.1 to 3600 seconds, got {keepalive}")
    ms = int(keepalive * 1000)
    timed = {"grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms", "grpc.http2.ping_timeout_ms"}
    return (
        *((key, value) for key, value in CHANNEL_OPTIONS if key not in timed),
        ("grpc.keepalive_time_ms", ms),
        ("grpc.keepalive_timeout_ms", ms),
        ("grpc.http2.ping_timeout_ms", ms),
    )
