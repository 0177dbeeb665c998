"""Addresses in the gateway's settings: ``HOST:PORT``, the hub list, the default id."""

from __future__ import annotations

import socket

from .errors import ConfigError

__all__ = ["MAX_HUBS", "default_gateway_id", "parse_host_port", "parse_hubs"]


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
