"""The probe against gateways that answer nothing, or answer garbage: what it counts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

from im_gateway.probe_ledger import Expired, Ledger
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.test_probe import probe_process, probe_scrape, sample
from tests.helpers import wait_until
from tests.proxy import FreezableProxy

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def fake_gateway(handler: Handler) -> AsyncIterator[int]:
    """A WebSocket server on a free port standing in for a gateway; yields its port."""
    async with serve(handler, "127.0.0.1", 0) as server:
        yield server.sockets[0].getsockname()[1]


async def silent(ws: ServerConnection) -> None:
    """Takes every frame, answers none (a gateway stuck behind its store, say)."""
    async for _ in ws:
        pass


async def test_sends_a_silent_gateway_never_acknowledges_are_counted() -> None:
    """Two gateways that accept the probe's sends and never acknowledge them: once the
    deadline has passed, each unanswered send is counted (not silently forgotten)."""
    async with fake_gateway(silent) as a, fake_gateway(silent) as b:
        with probe_process(a, b, interval=0.3, deadline=0.5) as (port, log):

            async def counted() -> bool:
                samples = await probe_scrape(port)
                return all(
                    sample(samples, "im_gateway_probe_unanswered_total", s, t) >= 2
                    for s, t in ((a, b), (b, a))
                )

            try:
                await wait_until(counted, timeout=20, what="unanswered sends counted")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; probe log:\n{Path(log).read_text()}") from None  # noqa: ASYNC240


async def test_a_deeply_nested_frame_does_not_stop_the_probe() -> None:
    """A gateway that sends a JSON frame nested 100,000 deep (a RecursionError for the
    parser): the probe ignores the frame and keeps running, and stops cleanly."""
    frames = 0

    async def hostile(ws: ServerConnection) -> None:
        nonlocal frames
        await ws.send("[" * 100_000 + "]" * 100_000)
        async for _ in ws:
            frames += 1

    async with fake_gateway(hostile) as a, fake_gateway(silent) as b:
        with probe_process(a, b, interval=0.2, deadline=1.0) as (port, _log):

            async def still_sending() -> bool:
                samples = await probe_scrape(port)
                return frames >= 5 and sample(samples, "im_gateway_probe_sent_total", a, b) >= 5

            await wait_until(still_sending, timeout=20, what="the probe still sending")


def test_ledger_counts_a_send_never_acknowledged_once() -> None:
    """The pure core: a send with no acknowledgement is ``unanswered`` once the deadline
    has passed, only once, and leaves nothing in flight."""
    ledger = Ledger(deadline=1.0)
    ledger.sent("c1", (0, 1), 0.0, receiver_epoch=1)
    assert ledger.expire(0.5, epochs=[1, 1]) == []
    assert ledger.expire(1.0, epochs=[1, 1]) == [Expired((0, 1), lost=False, unanswered=True)]
    assert ledger.expire(5.0, epochs=[1, 1]) == []
    assert ledger.in_flight == 0


async def test_a_frozen_gateway_is_reported_lost_and_unanswered_not_dead(
    start_gateway: GatewayFactory,
) -> None:
    """One of two gateways behind a proxy that freezes (its sockets open, no byte through):
    the probe keeps probing the healthy path, counts messages to the frozen one lost and
    its own sends through it unanswered, and keeps writing summary lines naming both."""
    healthy = await start_gateway("gw-probe-ok")
    frozen_gw = await start_gateway("gw-probe-frozen")
    async with FreezableProxy("127.0.0.1", frozen_gw.port) as proxy:
        a, b = healthy.port, proxy.port
        with probe_process(a, b, interval=0.3, deadline=1.0) as (port, log):

            async def delivering() -> bool:
                samples = await probe_scrape(port)
                return all(
                    sample(samples, "im_gateway_probe_latency_seconds_count", s, t) >= 2
                    for s, t in ((a, b), (b, a))
                )

            await wait_until(delivering, timeout=20, what="deliveries both ways")
            proxy.freeze()

            async def counted() -> bool:
                samples = await probe_scrape(port)
                return (
                    sample(samples, "im_gateway_probe_lost_total", a, b) >= 2
                    and sample(samples, "im_gateway_probe_unanswered_total", b, a) >= 2
                )

            try:
                await wait_until(counted, timeout=20, what="losses and unanswered sends")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; probe log:\n{Path(log).read_text()}") from None  # noqa: ASYNC240
            proxy.thaw()
