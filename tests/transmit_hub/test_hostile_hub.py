"""A gateway's hub links against a hub that lies or misbehaves (the hostile side is a
hand-written gRPC server speaking the Connect protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio  # type: ignore[import-untyped]

from tests.helpers import wait_until
from transmit_hub import HubLink, HubPool, codec, wire
from transmit_hub.types import (
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    Undeliverable,
    UndeliverableReason,
    UserId,
)

from .conftest import connect_server, tmap
from .test_pool import PoolCollector


class ScriptedHub:
    """A Connect server that reads (and keeps) every request frame and writes the frames
    put in ``frames``; ``welcome_then_end`` makes it end each stream right after its
    Welcome (a hub that keeps accepting and dropping gateways)."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.requests: list[bytes] = []
        self.streams = 0
        self.welcome_then_end = False
        self.address = ""

    async def connect(self, request_iterator: Any, context: Any) -> None:
        self.streams += 1
        await context.read()  # the Hello
        await context.write(codec.welcome_bytes("scripted"))
        if self.welcome_then_end:
            return

        async def read() -> None:
            while (frame := await context.read()) is not aio.EOF:
                self.requests.append(frame)

        reader = asyncio.create_task(read())
        try:
            while True:
                await context.write(await self.frames.get())
        finally:
            reader.cancel()


@pytest.fixture
async def scripted_hub() -> AsyncIterator[ScriptedHub]:
    hub = ScriptedHub()
    async with connect_server(hub.connect) as (_, hub.address):
        yield hub


@contextlib.asynccontextmanager
async def collected(pool: HubPool) -> AsyncIterator[PoolCollector]:
    """Start ``pool`` and gather its events; close it after."""
    await pool.start()
    collector = PoolCollector(pool)

    async def pump() -> None:
        async for event in pool.events():
            collector.events.append(event)

    task = asyncio.create_task(pump())
    try:
        yield collector
    finally:
        await pool.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class LoopLag:
    """The longest the event loop was kept from running a 10 ms ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, time.monotonic() - before - 0.01)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _notice(message_id: str, gateway: str, users: tuple[int, ...]) -> bytes:
    return codec.undeliverable_bytes(
        Undeliverable(
            GatewayId(gateway),
            (MessageId(message_id),),
            tuple(UserId(u) for u in users),
            UndeliverableReason.NOT_ATTACHED,
        )
    )


def _marker_frame(message_id: str) -> bytes:
    """A frame with one delivery: the consumer has seen everything before it once it
    sees this."""
    message = Message(MessageId(message_id), UserId(1), UserId(2), 1, 0, 1, "marker")
    delivery = codec.delivery_to_pb(Delivery(message, (Recipient(UserId(2), "1"),)))
    return wire.delivery_batch_response(
        [wire.delivery_entry_from_body(delivery.SerializeToString())]
    )


async def test_a_flood_of_notices_about_maps_never_sent_is_ignored_cheaply(
    scripted_hub: ScriptedHub,
) -> None:
    """A hub answers NOT_ATTACHED for thousands of maps this gateway never sent, naming
    gateways that do not exist, and one for a real map naming users it was not sent to:
    the loop is never stalled (each notice is one look-up, not a scan of the send log),
    no notice about a map never sent reaches the consumer (it would clear presence), and
    the real one names only the users the map went to."""
    pool = HubPool([scripted_hub.address], GatewayId("gw-a"), backoff_max=0.2)
    async with collected(pool) as events:
        await pool.wait_connected(10)
        for i in range(10_000):
            assert pool.send(tmap(f"m-{i}", {"gw-b": (2,)}))
        await wait_until(lambda: pool.pending == 0, what="every map written")
        flood = [_notice(f"never-{i}", f"gw-ghost-{i}", (7, 8)) for i in range(5_000)]
        flood.append(_notice("m-9999", "gw-b", (2, 999)))
        with LoopLag() as lag:
            await scripted_hub.frames.put(
                wire.delivery_batch_response([], [wire.notice_fields(flood)])
            )
            await scripted_hub.frames.put(_marker_frame("marker"))
            await wait_until(lambda: "marker" in events.ids(), timeout=60, what="the marker")
        assert lag.worst < 0.5, f"the event loop stalled for {lag.worst:.2f} s"
        assert [(n.gateway_id, n.message_ids, n.user_ids) for n in events.notices] == [
            ("gw-b", ("m-9999",), (2,))
        ]
        assert pool.ignored_notices == 5_000


async def test_a_hub_that_drops_each_stream_after_its_welcome_gets_backoff_and_few_lines(
    scripted_hub: ScriptedHub, caplog: pytest.LogCaptureFixture
) -> None:
    """A hub that welcomes the gateway and ends the stream at once, over and over: the link
    backs off as after a failed attach (it does not reconnect in a tight loop), and says so
    in a counted line, not two lines per stream."""
    scripted_hub.welcome_then_end = True
    caplog.set_level(logging.DEBUG, logger="transmit_hub.link")
    link = HubLink(scripted_hub.address, GatewayId("gw-a"), backoff_initial=0.05, backoff_max=5.0)
    started = time.monotonic()
    await link.start()
    try:
        await wait_until(lambda: scripted_hub.streams >= 8, timeout=30, what="8 streams")
        elapsed = time.monotonic() - started
    finally:
        await link.close()
    # Seven waits of at least half of 0.05, 0.1, ... 3.2 s: 3.175 s.
    assert elapsed >= 3.0, f"8 streams in {elapsed:.2f} s: no backoff between them"
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "transmit_hub.link" and r.levelno >= logging.INFO
    ]
    assert len(lines) <= 4, lines
    assert any("8 such" in line or "in all" in line for line in lines), lines
