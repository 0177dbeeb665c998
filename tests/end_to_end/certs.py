"""A server certificate for the gateway's client TLS, made by the test (on the CA helper
that the hub's TLS tests use, tests/transmit_hub/certs.py)."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from tests.transmit_hub.certs import TestCA


@dataclass(frozen=True, slots=True)
class ServerCert:
    """PEM files: the CA that signed the server certificate, the certificate, its key."""

    ca: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts only this CA (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.ca))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def make_server_cert(
    directory: Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> ServerCert:
    """A CA and a server certificate for ``hosts`` (IP addresses or DNS names), valid now."""
    ca = TestCA(directory, "ca")
    issued = ca.issue(
        "server",
        dns=tuple(h for h in hosts if not _is_ip(h)),
        ips=tuple(h for h in hosts if _is_ip(h)),
    )
    return ServerCert(ca.cert, issued.cert, issued.key)
