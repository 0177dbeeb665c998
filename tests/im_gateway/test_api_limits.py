"""The server API's header scan (pure) and its settings."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway.api_limits import HeaderScan, Scan, _Transport
from im_gateway.config import GatewayConfig
from im_gateway.errors import ConfigError

SECRET = "unit-test-secret-of-at-least-32-bytes!"
BLOCK = b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"


def feed_all(scan: HeaderScan, chunks: list[bytes]) -> list[Scan]:
    return [scan.feed(chunk) for chunk in chunks]


def test_a_block_in_one_piece_is_complete_and_its_body_is_not_counted() -> None:
    """The blank line ends the block: the body after it is not counted, and nothing is
    counted until the request is answered and the connection waits for the next one."""
    scan = HeaderScan(1024)
    assert scan.feed(BLOCK + b"{}") is Scan.COMPLETE
    assert scan.seen == len(BLOCK)
    assert scan.feed(b"x" * 5000) is Scan.IGNORED
    scan.request_finished()
    assert scan.feed(b"GET / HTTP/1.1\r\n") is Scan.HEADERS
    assert scan.seen == 16


@given(st.lists(st.integers(min_value=0, max_value=len(BLOCK)), max_size=8))
def test_any_split_of_a_block_finds_its_end_in_the_last_piece(cuts: list[int]) -> None:
    """However the bytes arrive (the blank line split across reads too), the block is
    complete exactly with the piece that holds its end, and counted once."""
    points = [0, *sorted(cuts), len(BLOCK)]
    chunks = [BLOCK[a:b] for a, b in itertools.pairwise(points) if b > a]
    results = feed_all(HeaderScan(1024), chunks)
    assert results[-1] is Scan.COMPLETE
    assert set(results[:-1]) <= {Scan.HEADERS}
    scan = HeaderScan(1024)
    feed_all(scan, chunks)
    assert scan.seen == len(BLOCK)


@given(st.integers(min_value=1, max_value=4096))
def test_an_unfinished_block_is_too_large_past_the_limit(chunk: int) -> None:
    """Bytes without a blank line are refused as soon as they pass the limit, whatever
    the read size: at most one read past it is ever seen."""
    scan = HeaderScan(16384)
    fed = 0
    while True:
        result = scan.feed(b"X-Pad: " + b"a" * (chunk - 7) if chunk > 7 else b"a" * chunk)
        fed += chunk
        if result is Scan.TOO_LARGE:
            break
        assert result is Scan.HEADERS
    assert 16384 < fed <= 16384 + chunk


def test_a_complete_block_over_the_limit_is_too_large() -> None:
    """A block that ends past the limit is refused too, not just an unfinished one."""
    scan = HeaderScan(40)
    assert scan.feed(BLOCK) is Scan.TOO_LARGE


def test_a_request_the_server_parsed_from_earlier_bytes_stops_the_count() -> None:
    """request_started (the server has the request) ends the block even when the scan
    has not seen its end (bytes that came while the previous request was handled)."""
    scan = HeaderScan(1024)
    scan.feed(b"GET / HTTP/1.1\r\n")
    scan.request_started()
    assert scan.feed(b"y" * 4096) is Scan.IGNORED


@pytest.mark.parametrize(
    "changes",
    [
        {"api_header_timeout": 0},
        {"api_body_timeout": -1},
        {"api_publish_timeout": 0},
        {"api_idle_timeout": 0},
        {"api_max_header_bytes": 1000},
        {"api_max_connections": 0},
        {"max_handshakes": 0},
        {"fd_reserve": -1},
    ],
)
def test_bad_bounds_are_refused(changes: dict[str, object]) -> None:
    """Each new bound is validated with a clear error naming its flag."""
    with pytest.raises(ConfigError, match=r"--(api|max|fd)"):
        GatewayConfig(jwt_secret=SECRET, **changes)  # type: ignore[arg-type]


def test_bound_defaults() -> None:
    """The defaults are the ones the README and --help state."""
    cfg = GatewayConfig(jwt_secret=SECRET)
    assert (
        cfg.api_header_timeout,
        cfg.api_body_timeout,
        cfg.api_publish_timeout,
        cfg.api_idle_timeout,
        cfg.api_max_header_bytes,
        cfg.api_max_connections,
        cfg.max_handshakes,
        cfg.fd_reserve,
    ) == (10.0, 30.0, 10.0, 60.0, 16384, 256, 1024, 256)


def test_the_default_bounds_take_a_bulk_add_of_ten_thousand_users() -> None:
    """``groups/add`` of thousands of users in one call (the large groups' use) passes the
    default ``--api-max-users``, and 10,000 of the longest ids, as strings, fit in the
    default ``--api-max-body``: the body size stays the bound that matters."""
    from im_gateway import api_requests

    cfg = GatewayConfig(jwt_secret=SECRET)
    users = [str(2**64 - 1 - i) for i in range(10_000)]
    body = json.dumps({"group": 7, "users": users}).encode()
    assert len(body) <= cfg.api_max_body
    got = api_requests.parse(
        "groups/add", body, max_content=cfg.max_content, max_users=cfg.api_max_users
    )
    assert isinstance(got, api_requests.GroupChange)
    assert len(got.users) == 10_000


def test_the_transport_aiohttp_holds_implements_every_transport_method() -> None:
    """The guard's view of a connection (what aiohttp holds, so that its close is a
    lingering one) answers every method of ``asyncio.Transport`` itself, so an aiohttp
    that calls one more never meets the base class's NotImplementedError; only the
    protocol stays the guard's own."""
    methods = {
        name
        for name in dir(asyncio.Transport)
        if not name.startswith("_") and callable(getattr(asyncio.Transport, name))
    }
    own = {name for name in methods if name in vars(_Transport)}
    assert methods - own == {"set_protocol", "get_protocol"}
