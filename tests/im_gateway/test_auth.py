"""JWT verification and minting."""

from __future__ import annotations

import time

import jwt
import pytest

from im_gateway import auth
from im_gateway.errors import AuthError

SECRET = "unit-test-secret-that-is-long-enough-for-hs256-and-even-for-hs512!!"


def test_mint_then_verify_round_trips() -> None:
    """A minted token verifies to its user; sub is a decimal string; exp is set."""
    token = auth.mint(2**64 - 1, SECRET, ttl=60)
    assert auth.verify(token, SECRET) == 2**64 - 1
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(2**64 - 1)
    assert claims["exp"] - claims["iat"] == 60


def test_numeric_sub_is_accepted() -> None:
    """sub may be a JSON number as well as a decimal string."""
    token = jwt.encode({"sub": 42, "exp": int(time.time()) + 60}, SECRET, "HS256")
    assert auth.verify(token, SECRET) == 42


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x.y.z",
        jwt.encode(
            {"sub": "1", "exp": int(time.time()) + 60},
            "another-secret-another-secret-another!!",
            "HS256",
        ),
        jwt.encode({"sub": "1", "exp": int(time.time()) - 1}, SECRET, "HS256"),
        jwt.encode({"sub": "1"}, SECRET, "HS256"),
        jwt.encode({"exp": int(time.time()) + 60}, SECRET, "HS256"),
        jwt.encode({"sub": "-1", "exp": int(time.time()) + 60}, SECRET, "HS256"),
        jwt.encode({"sub": True, "exp": int(time.time()) + 60}, SECRET, "HS256"),
        jwt.encode({"sub": str(2**64), "exp": int(time.time()) + 60}, SECRET, "HS256"),
        jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, SECRET, "HS512"),
    ],
    ids=[
        "empty",
        "garbage",
        "wrong-secret",
        "expired",
        "no-exp",
        "no-sub",
        "negative",
        "bool",
        "too-big",
        "other-alg",
    ],
)
def test_invalid_tokens_raise_auth_error(token: str) -> None:
    """Every kind of bad token raises AuthError (and only that)."""
    with pytest.raises(AuthError):
        auth.verify(token, SECRET)


def test_short_secrets_work_without_warnings() -> None:
    """A short (demo) secret signs and verifies without a Python warning (tests run -W error)."""
    assert auth.verify(auth.mint(5, "short"), "short") == 5
