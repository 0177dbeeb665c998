"""The validators that the gateway's settings (:mod:`im_gateway.config`) name in
``setting(check=...)``: a value -> ``None`` when fine, else what is wrong with it (the
parser says which flag). The rules that tie several settings together are
``GatewayConfig.__post_init__``'s.
"""

from __future__ import annotations

from transmit_hub.types import gateway_id_problem

from .addresses import parse_host_port
from .errors import ConfigError


def host_port(value: str) -> str | None:
    try:
        parse_host_port(value, "")
    except ConfigError:
        return "must be HOST:PORT"
    return None


def gateway_id(value: str) -> str | None:
    problem = gateway_id_problem(value)
    return None if problem is None else f"is no usable id: {problem}"


def not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def no_braces(value: str) -> str | None:
    braces = "{" in value or "}" in value
    return "must not contain braces (they are hash tags)" if braces else None


def api_key(value: str) -> str | None:
    return None if len(value) >= 16 else "must be at least 16 characters"
