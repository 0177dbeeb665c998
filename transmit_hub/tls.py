"""TLS settings of the hub's port and of the gateway's link: PEM files in, gRPC credentials out.

Hub: ``--tls-cert FILE --tls-key FILE`` serve TLS; ``--tls-client-ca FILE`` also requires,
on every RPC of the port, a client certificate signed by that CA (mutual TLS), and a
Connect stream may then attach only with a gateway id that is a DNS name in its
certificate's subjectAltName (:mod:`transmit_hub.peer` reads it).

Gateway: ``--hub-ca FILE`` verifies the hubs (without it, the system's roots do),
``--hub-cert FILE --hub-key FILE`` present a client certificate. The files are read
once, when the settings are built, so a missing or unreadable file is one clear error
at start; each must be a regular file of at most :data:`PEM_MAX_BYTES` (a FIFO or a
device is refused, not waited on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]

from .errors import ConfigError
from .files import read_small_file

__all__ = ["PEM_MAX_BYTES", "ClientTls", "ServerTls", "read_pem"]

PEM_MAX_BYTES = 1 << 20
"""The largest PEM file read: a certificate chain or a CA bundle is well under it."""


def read_pem(path: str, flag: str) -> bytes:
    """The bytes of the PEM file ``path``; :class:`ConfigError` naming ``flag`` otherwise."""
    try:
        data = read_small_file(path, PEM_MAX_BYTES)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    except ConfigError as exc:
        raise ConfigError(f"{flag} {path}: {exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{flag} {path}: not a PEM file")
    return data


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The hub port's certificate and key, and the CA its clients must be signed by."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(
        cls, cert: str | None, key: str | None, client_ca: str | None
    ) -> ServerTls | None:
        """Read the files; ``None`` when no TLS is asked for. Raises :class:`ConfigError`."""
        if cert is None and key is None:
            if client_ca is not None:
                raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if cert is None or key is None:
            raise ConfigError("--tls-cert and --tls-key go together")
        return cls(
            read_pem(cert, "--tls-cert"),
            read_pem(key, "--tls-key"),
            None if client_ca is None else read_pem(client_ca, "--tls-client-ca"),
        )

    @property
    def mutual(self) -> bool:
        """Whether every client must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None

    def credentials(self) -> Any:
        """The ``grpc.ServerCredentials`` of these settings."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a gateway's link verifies the hub (``ca``) and proves who it is (``cert``)."""

    ca: bytes | None = None
    """The CA that signed the hubs' certificates; ``None``: the system's roots."""
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(cls, ca: str | None, cert: str | None, key: str | None) -> ClientTls | None:
        """Read the files; ``None`` when none is given (plaintext). Raises ConfigError."""
        if ca is None and cert is None and key is None:
            return None
        if (cert is None) != (key is None):
            raise ConfigError("--hub-cert and --hub-key go together")
        return cls(
            None if ca is None else read_pem(ca, "--hub-ca"),
            None if cert is None else read_pem(cert, "--hub-cert"),
            None if key is None else read_pem(key, "--hub-key"),
        )

    def credentials(self) -> Any:
        """The ``grpc.ChannelCredentials`` of these settings."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
