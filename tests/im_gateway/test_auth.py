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


def _claims(**claims: object) -> str:
    body: dict[str, object] = {"sub": "1", "exp": int(time.time()) + 60}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, SECRET, "HS256")


def test_exp_beyond_max_ttl_is_refused() -> None:
    """With max_ttl, an exp further away is refused (year 9999, 1e308); within it passes;
    0 means no limit."""
    now = time.time()
    for exp in (253402300799, 1e308, int(now) + 86400 + 60):
        token = _claims(exp=exp)
        with pytest.raises(AuthError, match=r"lifetime too long.*--jwt-max-ttl"):
            auth.verify_identity(token, SECRET, max_ttl=86400, now=now)
        assert auth.verify_identity(token, SECRET, max_ttl=0, now=now).user == 1
    ok = _claims(exp=int(now) + 86000)
    assert auth.verify_identity(ok, SECRET, max_ttl=86400, now=now).user == 1


@pytest.mark.parametrize("exp", ["9999999999", True, [1], {"a": 1}])
def test_exp_must_be_a_number(exp: object) -> None:
    """An exp given as a string (PyJWT would take it) or any non-number is refused."""
    with pytest.raises(AuthError, match="exp"):
        auth.verify_identity(_claims(exp=exp), SECRET)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    """With an audience or issuer configured, a token must carry the matching claim; a
    token with an aud is refused where no audience is configured."""
    good = _claims(aud="chat", iss="backend")
    identity = auth.verify_identity(good, SECRET, audience="chat", issuer="backend")
    assert identity.user == 1
    with pytest.raises(AuthError, match="another audience"):
        auth.verify_identity(_claims(aud="other"), SECRET, audience="chat")
    with pytest.raises(AuthError, match="lacks the aud claim"):
        auth.verify_identity(_claims(), SECRET, audience="chat")
    with pytest.raises(AuthError, match="another issuer"):
        auth.verify_identity(_claims(iss="evil"), SECRET, issuer="backend")
    with pytest.raises(AuthError, match="lacks the iss claim"):
        auth.verify_identity(_claims(), SECRET, issuer="backend")
    with pytest.raises(AuthError, match="another audience"):  # aud, but none configured
        auth.verify_identity(_claims(aud="chat"), SECRET)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("x.y.z", "token is not a well-formed JWT"),
        (
            jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, "b" * 40, "HS256"),
            "token signature does not match the gateway's secret",
        ),
        (jwt.encode({"sub": "1", "exp": int(time.time()) - 5}, SECRET, "HS256"), "token expired"),
        (jwt.encode({"sub": "1"}, SECRET, "HS256"), "token lacks the exp claim"),
        (
            jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, SECRET, "HS512"),
            "token must be signed with HS256",
        ),
    ],
    ids=["garbage", "wrong-secret", "expired", "no-exp", "other-alg"],
)
def test_refusals_are_in_our_words(token: str, reason: str) -> None:
    """Each refusal says what is wrong in a fixed sentence, not PyJWT's message."""
    with pytest.raises(AuthError) as caught:
        auth.verify_identity(token, SECRET)
    assert str(caught.value) == reason


def test_groups_claim_is_parsed_and_bounded() -> None:
    """groups: numbers or decimal strings -> a set; no claim -> empty; non-ids and lists
    longer than max_groups are refused."""
    identity = auth.verify_identity(_claims(groups=[7, "8", str(2**64 - 1)]), SECRET)
    assert identity.groups == {7, 8, 2**64 - 1}
    assert auth.verify_identity(_claims(), SECRET).groups == frozenset()
    for bad in ("7", [True], [-1], ["x"], [str(2**64)], [1.5], {"7": 1}):
        with pytest.raises(AuthError, match="groups"):
            auth.verify_identity(_claims(groups=bad), SECRET)
    with pytest.raises(AuthError, match="more than 3 groups"):
        auth.verify_identity(_claims(groups=[1, 2, 3, 4]), SECRET, max_groups=3)


def test_mint_writes_groups_audience_and_issuer() -> None:
    """mint's groups, audience and issuer come back from verification."""
    token = auth.mint(3, SECRET, groups=[9, 7], audience="chat", issuer="backend")
    identity = auth.verify_identity(token, SECRET, audience="chat", issuer="backend")
    assert identity.groups == {7, 9}
    assert jwt.decode(token, options={"verify_signature": False})["groups"] == ["7", "9"]


def test_the_prepared_key_follows_the_secret() -> None:
    """The key prepared once per secret is the secret's own: a token signed with another
    secret is refused after a good one, and a PEM-shaped secret is refused every time
    (a refusal is never remembered as a prepared key)."""
    other = "another secret of at least thirty-two bytes"
    assert auth.verify(auth.mint(5, SECRET), SECRET) == 5
    with pytest.raises(AuthError, match="signature"):
        auth.verify(auth.mint(5, other), SECRET)
    assert auth.verify(auth.mint(6, other), other) == 6
    with pytest.raises(AuthError, match="signature"):
        auth.verify(auth.mint(6, SECRET), other)
    pem = (
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----"
    )
    token = jwt.encode({"sub": "1", "exp": int(time.time()) + 60}, "x" * 32, "HS256")
    for _ in range(2):
        with pytest.raises(jwt.InvalidKeyError):
            auth.verify(token, pem)


def _outcome(token: str) -> object:
    """What ``verify_identity`` makes of ``token``: the identity, or the refusal's words."""
    try:
        return auth.verify_identity(token, SECRET, max_ttl=86400)
    except AuthError as exc:
        return f"refused: {exc}"


def _signed(header: dict[str, object], claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, "HS256", headers=header)


def _tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


_NOW = int(time.time())
_AGREE = {
    "minted": auth.mint(7, SECRET, ttl=600),
    "minted-groups": auth.mint(7, SECRET, ttl=600, groups=[3, 4]),
    "numeric-sub": _signed({}, {"sub": 9, "exp": _NOW + 60}),
    "no-typ": jwt.encode({"sub": "5", "exp": _NOW + 60}, SECRET, "HS256", headers={"typ": None}),
    "other-typ": _signed({"typ": "at+jwt"}, {"sub": "5", "exp": _NOW + 60}),
    "kid": _signed({"kid": "k1"}, {"sub": "5", "exp": _NOW + 60}),
    "iat-future": _signed({}, {"sub": "5", "exp": _NOW + 10**7, "iat": _NOW + 10**6}),
    "iat-float": _signed({}, {"sub": "5", "exp": _NOW + 60, "iat": _NOW - 1.5}),
    "iat-string": _signed({}, {"sub": "5", "exp": _NOW + 60, "iat": "soon"}),
    "iat-null": _signed({}, {"sub": "5", "exp": _NOW + 60, "iat": None}),
    "nbf-future": _signed({}, {"sub": "5", "exp": _NOW + 10**7, "nbf": _NOW + 10**6}),
    "aud-unasked": _signed({}, {"sub": "5", "exp": _NOW + 60, "aud": "x"}),
    "jti-number": _signed({}, {"sub": "5", "exp": _NOW + 60, "jti": 3}),
    "sub-null": _signed({}, {"sub": None, "exp": _NOW + 60}),
    "exp-string": _signed({}, {"sub": "5", "exp": str(_NOW + 60)}),
    "expired": _signed({}, {"sub": "5", "exp": _NOW - 10}),
    "too-long": _signed({}, {"sub": "5", "exp": _NOW + 10**6}),
    "wrong-secret": _signed({}, {"sub": "5", "exp": _NOW + 60}, "x" * 40),
    "tampered": _tampered(auth.mint(7, SECRET, ttl=600)),
    "payload-array": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.WzFd."
    + jwt.utils.base64url_encode(
        jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
            b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.WzFd", SECRET.encode()
        )
    ).decode(),
    "padded": auth.mint(7, SECRET, ttl=600) + "=",
    "other-alg": jwt.encode({"sub": "1", "exp": _NOW + 60}, SECRET, "HS512"),
    "none-alg": jwt.encode({"sub": "1", "exp": _NOW + 60}, "", "none"),
}


@pytest.mark.parametrize("name", sorted(_AGREE))
def test_the_fast_check_agrees_with_pyjwt(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token check's fast path (the common shape, checked without PyJWT) accepts and
    refuses exactly what PyJWT does, with the same words."""
    token = _AGREE[name]
    fast = _outcome(token)
    monkeypatch.setattr(auth, "_fast_claims", lambda token, secret: None)
    assert fast == _outcome(token)


def test_the_common_shape_takes_the_fast_path() -> None:
    """A token as ``mint`` makes it (with or without groups) is checked without PyJWT; a
    bad signature is left to PyJWT (which words the refusal)."""
    assert auth._fast_claims(_AGREE["minted"], SECRET) is not None
    assert auth._fast_claims(_AGREE["minted-groups"], SECRET) is not None
    assert auth._fast_claims(_AGREE["tampered"], SECRET) is None
    assert auth._fast_claims(_AGREE["iat-future"], SECRET) is None
