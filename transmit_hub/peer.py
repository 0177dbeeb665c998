"""What the hub knows of a peer from its TLS certificate: the one reader of grpc's auth_context.

With mutual TLS, gRPC core verifies the client's certificate chain and puts what it
found into the call's auth context, a mapping of property names to lists of bytes.
This module relies on exactly two of its keys, and ``tests/transmit_hub/test_tls.py``
pins both against a real TLS connection:

- ``transport_security_type``: ``[b"ssl"]`` on a TLS connection;
- ``peer_dns``: the certificate's subjectAltName entries of type DNS, one value each
  (gRPC keeps IP addresses, URIs and e-mail addresses under other keys, so an IP address
  in a certificate never passes for a DNS name).
"""

from __future__ import annotations

from typing import Any

__all__ = ["certificate_dns_names", "is_tls"]

SECURITY_TYPE_KEY = "transport_security_type"
DNS_NAMES_KEY = "peer_dns"


def _values(context: Any, key: str) -> list[bytes]:
    try:
        auth = context.auth_context()
    except Exception:  # no transport security at all
        return []
    values = auth.get(key) if isinstance(auth, dict) else None
    return [v for v in values or () if isinstance(v, bytes)]


def is_tls(context: Any) -> bool:
    """Whether the call arrived over TLS."""
    return b"ssl" in _values(context, SECURITY_TYPE_KEY)


def certificate_dns_names(context: Any) -> frozenset[str]:
    """The DNS names in the subjectAltName of the call's verified client certificate.

    Empty when the call came without TLS or without a client certificate.
    """
    if not is_tls(context):
        return frozenset()
    return frozenset(v.decode("utf-8", "replace") for v in _values(context, DNS_NAMES_KEY))
