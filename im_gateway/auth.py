"""JSON Web Tokens for WebSocket users: HS256, ``sub`` = the user id, ``exp`` required.

``sub`` is a uint64, given as a JSON number or a decimal string. PyJWT (2.10 and
later) insists that ``sub`` be a string, so verification checks ``sub`` itself.
"""

from __future__ import annotations

import time
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from transmit_hub.types import UserId

from .errors import AuthError

ALGORITHM = "HS256"
UINT64_MAX = 2**64 - 1
MIN_SECRET_BYTES = 32
"""RFC 7518's minimum for HS256; shorter secrets work but the config warns once."""


def parse_user_id(value: object) -> UserId:
    """A uint64 user id from a JSON number or a decimal string; AuthError otherwise."""
    if isinstance(value, bool):
        raise AuthError("token subject must be a user id")
    if isinstance(value, int):
        user = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        user = int(value)
    else:
        raise AuthError("token subject must be a user id (a uint64)")
    if not 0 <= user <= UINT64_MAX:
        raise AuthError("token subject is out of the uint64 range")
    return UserId(user)


def verify(token: str, secret: str, *, leeway: float = 0.0) -> UserId:
    """The user a token names; raises :class:`AuthError` when it is not valid now."""
    if not token:
        raise AuthError("missing token")
    try:
        with warnings.catch_warnings():
            # Short secrets are reported once, by the config, not per connection.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "sub"], "verify_sub": False},
                leeway=leeway,
            )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    return parse_user_id(claims.get("sub"))


def mint(user: int, secret: str, *, ttl: float = 86400.0, now: float | None = None) -> str:
    """A signed HS256 token for ``user``, valid for ``ttl`` seconds."""
    parse_user_id(user)
    if not secret:
        raise AuthError("a secret is required to sign a token")
    issued = int(time.time() if now is None else now)
    claims = {"sub": str(user), "iat": issued, "exp": issued + int(ttl)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)
