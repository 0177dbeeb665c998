"""Prometheus metrics of real gateways and a real hub, scraped while traffic flows."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import http_get
from tests.helpers import wait_until
from tests.metrics_scrape import promtool_check_metrics, scrape, value
from transmit_hub.config import HubConfig
from transmit_hub.link import HubLink
from transmit_hub.server import HubServer
from transmit_hub.types import GatewayId, Message, MessageId, Recipient, TransmitMap, UserId

A, B = 3001, 3002


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    """A real hub that serves its metrics on a free port."""
    server = HubServer(
        HubConfig(
            listen="127.0.0.1:0", hub_id="metrics-hub", grace=0.5, metrics_listen="127.0.0.1:0"
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.5)


async def test_pinned_series_move_while_traffic_flows(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Scraped mid-traffic and after it, the pinned gateway and hub series count exactly
    what happened; push latency, batch sizes and store latency are observed; promtool
    accepts every scrape."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    b = await open_client(gw2, B)
    acked = 0
    stop = asyncio.Event()

    async def chatter() -> None:
        nonlocal acked
        while not stop.is_set():
            answer = await a.say(B, f"m{acked}")
            assert answer["type"] == 10, answer
            acked += 1

    sender = asyncio.create_task(chatter())
    try:
        await wait_until(lambda: acked >= 5, what="traffic")
        _, first = await scrape(gw1.port)
        await wait_until(lambda: acked >= 20, what="more traffic")
        body1, second = await scrape(gw1.port)
        assert value(second, "im_gateway_messages_accepted_total") > value(
            first, "im_gateway_messages_accepted_total"
        )
        hub_body, hub_mid = await scrape(hub.metrics_port)
        assert value(hub_mid, "transmit_hub_maps_received_total") >= 5
    finally:
        stop.set()
        await sender
    await b.wait_for(lambda _: len(b.messages()) == acked, what="every message")

    _, s1 = await scrape(gw1.port)
    _, s2 = await scrape(gw2.port)
    hub_body, h = await scrape(hub.metrics_port)
    assert value(s1, "im_gateway_messages_accepted_total") == acked
    assert value(s2, "im_gateway_messages_accepted_total") == 0
    assert value(s1, "im_gateway_connections") == 1
    assert value(s2, "im_gateway_connections") == 1
    assert value(s1, "im_gateway_frames_in_total", type="1") == acked
    assert value(s1, "im_gateway_frames_out_total", type="10") == acked
    assert value(s2, "im_gateway_frames_out_total", type="1") == acked
    # Every message crossed the hub once and was written to B's socket on gw-2.
    assert value(h, "transmit_hub_gateways_attached") == 2
    assert value(h, "transmit_hub_maps_received_total") == acked
    assert value(h, "transmit_hub_deliveries_sent_total") == acked
    assert value(h, "transmit_hub_gateway_deliveries_sent_total", gateway="gw-2") == acked
    assert value(s2, "im_gateway_push_latency_seconds_count", path="hub") == acked
    assert 0 < value(s2, "im_gateway_push_latency_seconds_sum", path="hub") < acked * 5
    assert value(s1, "im_gateway_push_latency_seconds_count", path="hub") == 0
    assert value(s1, "im_gateway_batch_size_sum") == acked
    assert 1 <= value(s1, "im_gateway_batch_size_count") <= acked
    assert value(s1, "im_gateway_store_seconds_count", call="submit") == value(
        s1, "im_gateway_batch_size_count"
    )
    assert value(s1, "im_gateway_store_errors_total", call="submit") == 0
    assert value(s1, "im_gateway_hub_links", state="up") == 1
    assert value(s2, "im_gateway_replays_total", kind="connect") == 1
    for body in (body1, hub_body, (await scrape(gw2.port))[0]):
        promtool_check_metrics(body)


async def test_refusals_and_undeliverable_are_counted_by_reason(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A bad frame counts under its code, a bad token under ``unauthorized``, a map for an
    absent gateway under ``not_attached``; closing a socket brings connections down."""
    gw = await start_gateway("gw-1")
    a = await open_client(gw, A)
    await a.send("not json")
    await a.wait_for(lambda f: f["type"] == 99, what="the refusal")
    status, _, _ = await http_get(gw.port, "/ws?token=forged", {"Upgrade": "websocket"})
    assert status == 401
    _, s = await scrape(gw.port)
    assert value(s, "im_gateway_frames_refused_total", code="bad_request") == 1
    assert value(s, "im_gateway_frames_in_total", type="invalid") == 1
    assert value(s, "im_gateway_handshakes_refused_total", reason="unauthorized") == 1
    assert value(s, "im_gateway_frames_out_total", type="99") == 1

    link = HubLink(hub.address, GatewayId("sender"))
    async with link:
        await link.wait_connected(10)
        message = Message(MessageId("m-1"), UserId(1), 2, 1, 0, 1, "x")
        assert link.send(TransmitMap(message, {GatewayId("nowhere"): (Recipient(UserId(2)),)}))

        async def counted() -> bool:
            _, h = await scrape(hub.metrics_port)
            return value(h, "transmit_hub_undeliverable_total", reason="not_attached") == 1

        await wait_until(counted, what="the not_attached notice counted")
    _, h = await scrape(hub.metrics_port)
    assert value(h, "transmit_hub_undeliverable_total", reason="queue_full") == 0

    await a.close()

    async def no_connections() -> bool:
        _, s = await scrape(gw.port)
        return value(s, "im_gateway_connections") == 0

    await wait_until(no_connections, what="connections back to 0")


async def test_connections_refused_at_connect_count_as_refused_handshakes(
    start_gateway: GatewayFactory,
) -> None:
    """With --max-handshakes 1 and one handshake under way (a socket that sends nothing),
    the next connection gets the fixed 503 before its request is read: it is counted
    under ``handshakes``."""
    gw = await start_gateway("gw-busy", max_handshakes=1)
    _, idle = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        await wait_until(lambda: gw._sockets.handshaking == 1, what="the held handshake")
        status, body, _ = await http_get(gw.port, "/ws?token=x", {"Upgrade": "websocket"})
        assert status == 503, body
    finally:
        idle.close()
    await wait_until(lambda: gw._sockets.handshaking == 0, what="the slot given back")
    _, s = await scrape(gw.port)
    assert value(s, "im_gateway_handshakes_refused_total", reason="handshakes") == 1


async def test_each_gateway_has_its_own_registry(start_gateway: GatewayFactory) -> None:
    """Two gateways in one process do not share series (a per-gateway registry)."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    assert gw1.metrics.registry is not gw2.metrics.registry
    gw1.metrics.accepted += 7
    _, s2 = await scrape(gw2.port)
    assert value(s2, "im_gateway_messages_accepted_total") == 0


async def test_metrics_off_answers_404(
    monkeypatch: pytest.MonkeyPatch, start_gateway: GatewayFactory
) -> None:
    """The bench's switch (IM_GATEWAY_METRICS_OFF) turns the endpoint off."""
    monkeypatch.setenv("IM_GATEWAY_METRICS_OFF", "1")
    gw = await start_gateway("gw-off")
    status, _, _ = await http_get(gw.port, "/metrics")
    assert status == 404


async def test_hub_metrics_server_refuses_what_is_not_a_scrape(hub: HubServer) -> None:
    """Other paths 404, other methods 405, an endless header is cut off; scrapes go on."""
    status, _, _ = await http_get(hub.metrics_port, "/other")
    assert status == 404
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.metrics_port)
    writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 405")
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
    writer.close()
    _, h = await scrape(hub.metrics_port)
    assert value(h, "transmit_hub_gateways_attached") == 0


async def test_a_taken_metrics_port_fails_the_hub_start(hub: HubServer) -> None:
    """``--metrics-listen`` on a port in use: the start fails with one clear error."""
    from transmit_hub.errors import ConfigError

    other = HubServer(
        HubConfig(listen="127.0.0.1:0", metrics_listen=f"127.0.0.1:{hub.metrics_port}")
    )
    with pytest.raises(ConfigError, match="cannot serve metrics"):
        await other.start()
    await other.stop()


def test_gateway_has_metrics_attribute() -> None:
    """Gateway objects own a GatewayMetrics before they start."""
    gw = Gateway(GatewayConfig(listen="127.0.0.1:0", jwt_secret="x" * 32))
    assert gw.metrics.enabled


async def test_slowloris_connections_do_not_lock_the_scraper_out(hub: HubServer) -> None:
    """Sixty connections that never finish their request hold the hub's metrics port; a
    real scrape still gets its 200 at once (the oldest silent connection makes room), not
    only after the silent ones time out."""
    silent = [await asyncio.open_connection("127.0.0.1", hub.metrics_port) for _ in range(60)]
    try:
        for _, writer in silent:
            writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never the blank line
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body, _ = await http_get(hub.metrics_port, "/metrics")
        assert status == 200
        assert b"transmit_hub_gateways_attached" in body
        assert loop.time() - started < 2.0  # the request timeout is 5 s
    finally:
        for _, writer in silent:
            writer.close()


async def test_the_metrics_bounds_are_the_flags() -> None:
    """``--metrics-max-clients`` and ``--metrics-timeout`` bound the hub's metrics port:
    with 2 and 0.3 s, a third silent connection closes the oldest at once, and a silent
    one is closed after 0.3 s, not the default 5 s."""
    config = HubConfig(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        metrics_max_clients=2,
        metrics_timeout=0.3,
    )
    async with HubServer(config) as hub:
        port = hub.metrics_port
        first = await asyncio.open_connection("127.0.0.1", port)
        second = await asyncio.open_connection("127.0.0.1", port)
        third = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            assert await asyncio.wait_for(first[0].read(), 2.0) == b""  # made room
            assert await asyncio.wait_for(third[0].read(), 4.0) == b""  # timed out
            assert loop.time() - started < 3.0
        finally:
            for _, writer in (first, second, third):
                writer.close()
        status, _, _ = await http_get(port, "/metrics")
        assert status == 200
