"""JSON Web Tokens for WebSocket users: HS256, ``sub`` = the user id, ``exp`` required.

``sub`` is a uint64, given as a JSON number or a decimal string. PyJWT (2.10 and
later) insists that ``sub`` be a string, so verification checks ``sub`` itself.

Beyond the signature, :func:`verify_identity` enforces the gateway's token rules:
``exp`` must be a JSON number no further away than ``max_ttl`` seconds (0: no
limit), ``aud`` and ``iss`` must match when the gateway names them, and the optional
``groups`` claim (the groups the user may join under ``--group-join token``) is an
array of at most ``max_groups`` group ids. Every refusal is an :class:`AuthError`
whose text is ours (it is sent in the 401 body), never the library's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.warnings import InsecureKeyLengthWarning

from transmit_hub.types import UserId

from .errors import AuthError

ALGORITHM = "HS256"
UINT64_MAX = 2**64 - 1
MIN_SECRET_BYTES = 32
"""RFC 7518's minimum for HS256; shorter secrets work but the config warns once."""
DEFAULT_MAX_GROUPS = 1000

# PyJWT's exceptions -> what the 401 body says (most specific first).
_REASONS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet (nbf or iat in the future)"),
    (jwt.InvalidSignatureError, "token signature does not match the gateway's secret"),
    (jwt.InvalidAlgorithmError, f"token must be signed with {ALGORITHM}"),
    (jwt.InvalidAudienceError, "token is for another audience (aud)"),
    (jwt.InvalidIssuerError, "token is from another issuer (iss)"),
    (jwt.DecodeError, "token is not a well-formed JWT"),
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token names, and what it allows."""

    user: UserId
    groups: frozenset[int]
    """The groups the token lets the user join (``groups`` claim; empty without one)."""
    expires: float
    """The token's ``exp``, seconds since the epoch."""


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


def parse_groups(value: object, max_groups: int = DEFAULT_MAX_GROUPS) -> frozenset[int]:
    """The ``groups`` claim: an array of group ids (uint64, numbers or decimal strings)."""
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise AuthError("token groups claim must be an array of group ids")
    if len(value) > max_groups:
        raise AuthError(f"token lists more than {max_groups} groups")
    groups = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= UINT64_MAX:
            groups.add(item)
        elif isinstance(item, str) and item.isascii() and item.isdigit() and len(item) <= 20:
            group = int(item)
            if group > UINT64_MAX:
                raise AuthError("token groups claim has a group id out of the uint64 range")
            groups.add(group)
        else:
            raise AuthError("token groups claim must hold group ids (uint64)")
    return frozenset(groups)


class _PreparedHMAC(HMACAlgorithm):
    """HMAC whose key check runs once per secret, not once per token.

    PyJWT prepares the key for every token it verifies (it makes sure the secret is not
    a PEM, SSH or DER key, nor a JSON key set: regexes, a JSON parse and a DER parse,
    about a third of a verification). The gateway verifies every token with the same
    secret, so the prepared key of the last secret is kept (one entry: the same checks,
    the same refusals, once).
    """

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._last: tuple[str | bytes, bytes] | None = None

    def prepare_key(self, key: str | bytes) -> bytes:
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        with warnings.catch_warnings():
            # Short secrets are reported once, by the config, not per connection.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            prepared = super().prepare_key(key)
        self._last = (key, prepared)
        return prepared

    def check_key_length(self, key: bytes) -> str | None:
        """Nothing to say: short secrets are reported once, by the config, not per
        connection (PyJWT would warn for every token)."""
        return None


def _verifier() -> jwt.PyJWT:
    """A PyJWT of our own that knows HS256 only, with :class:`_PreparedHMAC`."""
    api = jwt.PyJWT()
    jws = jwt.PyJWS(algorithms=[])
    jws.register_algorithm(ALGORITHM, _PreparedHMAC())
    api._jws = jws  # (PyJWT's own module-level instance is set up the same way)
    return api


_VERIFIER = _verifier()
_HMAC = _PreparedHMAC()

_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}")
"""Three base64url segments, the last an HS256 signature (32 bytes, unpadded)."""
_HEADERS = ({"alg": ALGORITHM, "typ": "JWT"}, {"alg": ALGORITHM})
_CLAIMS = frozenset({"sub", "exp", "iat", "groups"})


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _fast_claims(token: str, secret: str) -> dict[str, Any] | None:
    """The claims of a token of the one shape clients send (an ``HS256``/``JWT`` header
    and nothing else; ``sub``, ``exp``, an integer ``iat`` not in the future, ``groups``)
    whose signature matches: what PyJWT would return for it, at a fifth of the cost.
    None for anything else, a bad signature included: PyJWT then decides, and words the
    refusal. (Only for a gateway that names no audience or issuer.)"""
    if not _SHAPE.fullmatch(token):
        return None
    header_segment, payload_segment, signature = token.split(".")
    try:
        if json.loads(_b64(header_segment)) not in _HEADERS:
            return None
        key = _HMAC.prepare_key(secret)
        signed = f"{header_segment}.{payload_segment}".encode()
        if not hmac.compare_digest(hmac.new(key, signed, hashlib.sha256).digest(), _b64(signature)):
            return None
        claims = json.loads(_b64(payload_segment))
    except (ValueError, binascii.Error, RecursionError):
        return None
    if not isinstance(claims, dict) or not claims.keys() <= _CLAIMS:
        return None
    if claims.get("exp") is None or claims.get("sub") is None:
        return None
    if "iat" in claims:
        iat = claims["iat"]
        if type(iat) is not int or iat > time.time():
            return None
    return claims


def _reason(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token lacks the {exc.claim} claim"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"


def verify_identity(
    token: str,
    secret: str,
    *,
    leeway: float = 0.0,
    max_ttl: float = 0.0,
    audience: str | None = None,
    issuer: str | None = None,
    max_groups: int = DEFAULT_MAX_GROUPS,
    now: float | None = None,
) -> Identity:
    """The identity a token proves; raises :class:`AuthError` (our words) when it does not.

    ``max_ttl``: refuse a token whose ``exp`` is more than this many seconds away
    (0: no limit). ``audience`` / ``issuer``: when given, ``aud`` / ``iss`` must match.
    """
    if not token:
        raise AuthError("missing token")
    required = ["exp", "sub"]
    if audience is not None:
        required.append("aud")
    if issuer is not None:
        required.append("iss")
    claims = _fast_claims(token, secret) if audience is None and issuer is None else None
    try:
        if claims is None:
            claims = _VERIFIER.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                # exp is checked below: PyJWT also takes a string ("9999999999").
                options={"require": required, "verify_sub": False, "verify_exp": False},
                leeway=leeway,
                audience=audience,
                issuer=issuer,
            )
    except jwt.InvalidTokenError as exc:
        raise AuthError(_reason(exc)) from exc
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise AuthError("token exp must be a number (seconds since the epoch)")
    current = time.time() if now is None else now
    if exp <= current - leeway:
        raise AuthError("token expired")
    if max_ttl > 0 and exp - current > max_ttl + leeway:
        raise AuthError(
            f"token lifetime too long: exp is more than {max_ttl:g} s away "
            "(the gateway's --jwt-max-ttl)"
        )
    user = parse_user_id(claims.get("sub"))
    if user == 0:
        raise AuthError("user 0 is the system (the server API's default sender), not a client")
    groups = parse_groups(claims.get("groups"), max_groups)
    return Identity(user, groups, float(exp))


def verify(token: str, secret: str, *, leeway: float = 0.0) -> UserId:
    """The user a token names; raises :class:`AuthError` when it is not valid now."""
    return verify_identity(token, secret, leeway=leeway).user


def mint(
    user: int,
    secret: str,
    *,
    ttl: float = 86400.0,
    now: float | None = None,
    groups: list[int] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """A signed HS256 token for ``user``, valid for ``ttl`` seconds.

    ``groups`` becomes the ``groups`` claim (what ``--group-join token`` lets the
    user join); ``audience`` and ``issuer`` the ``aud`` and ``iss`` claims.
    """
    parse_user_id(user)
    if not secret:
        raise AuthError("a secret is required to sign a token")
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {"sub": str(user), "iat": issued, "exp": issued + int(ttl)}
    if groups is not None:
        claims["groups"] = [str(g) for g in sorted(parse_groups(list(groups), len(groups)))]
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=ALGORITHM)
