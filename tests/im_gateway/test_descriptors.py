"""The gateway's socket counts and descriptor budget: pure state, no loop."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from im_gateway.descriptors import REFUSED_RESPONSE, Sockets, refuse
from im_gateway.errors import ConfigError
from tests.helpers import wait_until


def test_without_a_limit_only_the_handshake_cap_refuses() -> None:
    """With no open-file limit, connections are refused only beyond --max-handshakes;
    an upgrade frees a handshake slot."""
    sockets = Sockets(limit=None, baseline=0, reserve=256, max_handshakes=2)
    assert sockets.open_ws() is None
    assert sockets.open_ws() is None
    refused = sockets.open_ws()
    assert refused is not None
    assert refused.status == 503
    assert "--max-handshakes" in refused.reason
    assert (sockets.ws, sockets.handshaking) == (2, 2)
    sockets.upgraded()
    assert sockets.open_ws() is None
    assert sockets.upgrade_refusal() is None
    assert sockets.fit(10**9).fits


def test_upgrades_stop_at_the_reserve_and_connections_at_half_of_it() -> None:
    """Limit 100, 20 open at start, reserve 20: upgrades are refused once fewer than 20
    descriptors are left (60 sockets), new connections once fewer than 10 (70)."""
    sockets = Sockets(limit=100, baseline=20, reserve=20, max_handshakes=1000)
    for _ in range(60):
        assert sockets.open_ws() is None
        sockets.upgraded()
    assert sockets.spare == 20
    assert sockets.upgrade_refusal() is None
    assert sockets.open_ws() is None  # the 61st: its own descriptor leaves 19
    refused = sockets.upgrade_refusal()
    assert refused is not None
    assert refused.status == 503
    assert "--fd-reserve" in refused.reason
    for _ in range(9):
        assert sockets.open_ws() is None
    assert sockets.spare == 10
    assert sockets.open_api(100) is None  # 9 left now: under half the reserve
    assert sockets.open_ws() is not None
    assert sockets.open_api(100) is not None
    sockets.close_api()
    sockets.close_ws(handshaking=True)
    assert sockets.open_ws() is None


def test_api_connections_are_capped_and_share_the_budget() -> None:
    """Beyond --api-max-connections an API connection is refused; a close makes room."""
    sockets = Sockets(limit=None, baseline=0, reserve=0, max_handshakes=1)
    assert sockets.open_api(2) is None
    assert sockets.open_api(2) is None
    refused = sockets.open_api(2)
    assert refused is not None
    assert "--api-max-connections" in refused.reason
    sockets.close_api()
    assert sockets.open_api(2) is None


def test_counts_never_go_negative() -> None:
    """A release without a matching count (a double close) leaves the counts at 0."""
    sockets = Sockets(limit=50, baseline=0, reserve=0, max_handshakes=5)
    sockets.close_ws(handshaking=True)
    sockets.close_api()
    sockets.upgraded()
    assert (sockets.ws, sockets.handshaking, sockets.api) == (0, 0, 0)


def test_fit_says_how_many_websockets_the_limit_leaves_room_for() -> None:
    """The start-time check: room = limit - open - reserve - API connections."""
    sockets = Sockets(limit=1024, baseline=24, reserve=256, max_handshakes=1024)
    assert sockets.fit(50_000, others=256).room == 1024 - 24 - 256 - 256
    assert not sockets.fit(50_000, others=256).fits
    assert sockets.fit(488, others=256).fits


def test_bad_settings_are_refused() -> None:
    """A negative reserve or a handshake cap under 1 is a configuration error (the package's)."""
    with pytest.raises(ConfigError, match="reserve"):
        Sockets(limit=None, baseline=0, reserve=-1, max_handshakes=1)
    with pytest.raises(ConfigError, match="reserve"):
        Sockets(limit=None, baseline=0, reserve=0, max_handshakes=0)


def test_the_fixed_refusal_is_a_whole_http_response() -> None:
    """The canned 503 is a complete HTTP/1.1 response whose length matches its body."""
    head, _, body = REFUSED_RESPONSE.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head


def test_refused_connections_still_lingering_count_against_the_budget() -> None:
    """A refused connection still holds its descriptor while it lingers."""
    sockets = Sockets(limit=100, baseline=0, reserve=20, max_handshakes=1000)
    sockets.refusing = 5
    assert sockets.spare == 95


@pytest.mark.parametrize("reserve", [64, 0])
async def test_refuse_answers_503_then_closes_and_gives_the_count_back(reserve: int) -> None:
    """A refused connection reads the whole 503 and an end of stream, and the refusal
    count drops when it closes: after the client's close while a quarter of the reserve
    may linger (a request it sent does not turn the answer into a reset), at once when
    none may (reserve 0)."""
    sockets = Sockets(limit=None, baseline=0, reserve=reserve, max_handshakes=1)
    lost: list[bool] = []

    class Refusing(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            refuse(cast(asyncio.Transport, transport), self, sockets)

        def connection_lost(self, exc: Exception | None) -> None:
            lost.append(True)

    server = await asyncio.get_running_loop().create_server(Refusing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if reserve:
            writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == REFUSED_RESPONSE
        if reserve:
            assert sockets.refusing == 1  # lingering until the client closes
        writer.close()
        await wait_until(lambda: lost == [True], what="the refused connection's end")
        assert sockets.refusing == 0
    finally:
        server.close()
        await server.wait_closed()


def test_each_refusal_at_connect_is_told_by_its_reason() -> None:
    """``on_refused`` hears the code of each WebSocket-port refusal (too many handshakes,
    descriptors low); an accepted connection and an API refusal are not told."""
    told: list[str] = []
    sockets = Sockets(limit=30, baseline=0, reserve=20, max_handshakes=1)
    sockets.on_refused = told.append
    assert sockets.open_ws() is None
    assert sockets.open_ws() is not None
    sockets.upgraded()
    for _ in range(20):  # 21 WebSockets leave 9 spare: under half the reserve
        assert sockets.open_ws() is None
        sockets.upgraded()
    assert sockets.open_ws() is not None
    assert sockets.open_api(100) is not None
    assert told == ["handshakes", "descriptors"]
