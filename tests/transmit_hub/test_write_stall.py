"""The hub detaches a gateway that keeps its stream open and keeps sending but takes
nothing (``--gateway-write-timeout``): its keepalive never goes quiet, yet no write to
it completes, its outbox fills and every map for it would be refused QUEUE_FULL forever."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from grpc import aio

from tests.helpers import wait_until
from transmit_hub import GatewayId, HubServer, UndeliverableReason, codec
from transmit_hub.config import HubConfig, parse_config
from transmit_hub.errors import ConfigError
from transmit_hub.registry import EndReason, Registry
from transmit_hub.service import STALLED_DETAILS, HubService
from transmit_hub.transport import CHANNEL_OPTIONS

from .conftest import Collector, LinkFactory, detach_of_a_frozen_receiver, tmap
from .test_identity import attach_raw

KEEPALIVE = 0.5
WRITE_TIMEOUT = 1.0
QUEUE = 64
CONTENT = "x" * 16 * 1024


def test_a_write_outstanding_past_the_limit_is_stalled() -> None:
    """Pure: a stream whose writer has had a write out for ``limit`` s or more is stalled;
    one with no write out (idle or between writes), a newer write, or ending already, is
    not."""
    registry = Registry("hub", 8)
    idle = registry.attach(GatewayId("idle"), "p1")
    busy = registry.attach(GatewayId("busy"), "p2")
    stuck = registry.attach(GatewayId("stuck"), "p3")
    now = 1000.0
    assert idle.writing_since == 0.0  # no write out
    busy.writing_since = now - 0.9
    stuck.writing_since = now - 1.0
    assert registry.stalled(now, 1.0) == [stuck]
    assert registry.stalled(now + 0.1, 1.0) == [busy, stuck]
    stuck.end(EndReason.STALLED)
    assert registry.stalled(now, 1.0) == []  # an ending stream is not ended twice
    assert registry.stalled(now + 0.1, 1.0) == [busy]


@pytest.mark.parametrize("limit", [0.0, 0.5])
async def test_the_watch_ends_stalled_streams_unless_the_limit_is_zero(limit: float) -> None:
    """The keepalive watch ends a stream whose write has been out past
    ``gateway_write_timeout`` (STALLED, counted) in the same round as it probes a quiet
    one; with 0 it never does."""
    registry = Registry("hub", 8)
    service = HubService(registry, gateway_keepalive=1.0, gateway_write_timeout=limit)
    quiet = registry.attach(GatewayId("quiet"), "p1")
    stuck = registry.attach(GatewayId("stuck"), "p2")
    now = time.monotonic()
    quiet.heard_at = now - 1.2  # probed in the watch's first round, a quarter second on
    stuck.writing_since = now - 100.0
    watch = asyncio.create_task(service.watch())
    try:
        await wait_until(lambda: service.keepalive_probes >= 1, what="a round of the watch")
    finally:
        watch.cancel()
    if limit:
        assert stuck.end_reason is EndReason.STALLED
        assert service.stalled_detached == 1
    else:
        assert stuck.end_reason is None
        assert service.stalled_detached == 0
    assert quiet.end_reason is None
    assert service.silent_detached == 0


def test_the_flag_default_range_and_off() -> None:
    """``--gateway-write-timeout``: 10 s by default, from a flag, the environment or the
    file; 0 (never) or 0.1 to 3600, anything else refused naming the flag."""
    assert HubConfig().gateway_write_timeout == 10.0
    assert parse_config(["--gateway-write-timeout", "0"], {}).gateway_write_timeout == 0.0
    env = {"TRANSMIT_HUB_GATEWAY_WRITE_TIMEOUT": "2.5"}
    assert parse_config([], env).gateway_write_timeout == 2.5
    assert parse_config(["--gateway-write-timeout", "30"], env).gateway_write_timeout == 30.0
    for bad in ("-1", "0.05", "nan", "inf", "3601"):
        with pytest.raises(ConfigError, match=r"--gateway-write-timeout must be 0 \(never\) or"):
            parse_config(["--gateway-write-timeout", bad], {})
    with pytest.raises(ConfigError, match="--gateway-write-timeout"):
        parse_config(["--gateway-write-timeout", "soon"], {})
    with pytest.raises(ConfigError, match="gateway_write_timeout must not be negative"):
        HubService(Registry("hub", 8), gateway_write_timeout=-1.0)


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    """A hub with small outboxes that ends a stream taking no frame for 1 s."""
    config = HubConfig(
        listen="127.0.0.1:0",
        hub_id="test-hub",
        grace=0.2,
        queue_size=QUEUE,
        gateway_keepalive=KEEPALIVE,
        gateway_write_timeout=WRITE_TIMEOUT,
    )
    async with HubServer(config) as server:
        yield server


@contextlib.asynccontextmanager
async def raw_gateway(hub: HubServer, gateway_id: str) -> AsyncIterator[Any]:
    """A raw Connect stream attached as ``gateway_id`` that keeps sending (an answer to no
    probe, every 50 ms: the hub hears from it, so it is never silent) and reads nothing
    unless the test does."""
    channel = aio.insecure_channel(hub.address, options=CHANNEL_OPTIONS)
    try:
        call = await attach_raw(channel, gateway_id)

        async def chatter() -> None:
            with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                while not call.done():
                    await call.write(codec.probe_reply_bytes(0))
                    await asyncio.sleep(0.05)  # pacing, not synchronisation

        sending = asyncio.create_task(chatter())
        try:
            yield call
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
    finally:
        await channel.close(None)


async def read_to_the_end(call: Any) -> aio.AioRpcError:
    """Read a raw stream until it ends: the error that ends it."""
    while True:
        try:
            await asyncio.wait_for(call.read(), 10)
        except aio.AioRpcError as exc:
            return exc


def routed(sender: Collector, hub: HubServer, n: int) -> bool:
    """Whether the sender's ``n`` maps are all sent and routed."""
    return sender.link.pending == 0 and hub.registry.transmit_maps_received == n


def queue_full(sender: Collector, gateway_id: str) -> int:
    return sum(
        n.reason is UndeliverableReason.QUEUE_FULL and n.gateway_id == gateway_id
        for n in sender.notices
    )


async def test_a_gateway_that_sends_but_never_reads_is_detached_within_the_limit(
    hub: HubServer, make_link: LinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway that keeps sending but never reads, sent maps until its outbox is full
    (QUEUE_FULL): the hub detaches it within --gateway-write-timeout and a quarter
    --gateway-keepalive (+ slack), with one WARNING line naming it and the limit, counted
    in ``stalled_detached`` and its metric; its stream ends UNAVAILABLE, the bytes held
    for it (the frame held in the write included) are given back, and the sender's next
    map for it comes back NOT_ATTACHED (it used to be QUEUE_FULL forever)."""
    caplog.set_level(logging.WARNING, logger="transmit_hub.service")
    async with raw_gateway(hub, "gw-stuck") as stuck:
        sender = await make_link(hub.address, "gw-s")
        started = time.monotonic()
        n = 0
        while queue_full(sender, "gw-stuck") == 0:
            for _ in range(QUEUE):
                n += 1
                assert sender.link.send(tmap(f"m-{n}", {"gw-stuck": (5,)}, content=CONTENT))
            await wait_until(functools.partial(routed, sender, hub, n), what=f"{n} maps routed")
        full_at = time.monotonic()  # the writer has been held in a write since before this
        assert hub.registry.is_attached(GatewayId("gw-stuck"))
        await wait_until(
            lambda: not hub.registry.is_attached(GatewayId("gw-stuck")),
            timeout=WRITE_TIMEOUT + 10,
            what="the hub to detach the gateway that takes nothing",
        )
        detached_at = time.monotonic()
        assert detached_at - started >= WRITE_TIMEOUT  # no write could be out for longer
        assert detached_at - full_at < WRITE_TIMEOUT + KEEPALIVE / 4 + 1.0
        assert hub.service.stalled_detached == 1
        assert hub.service.silent_detached == 0
        assert b"transmit_hub_stalled_detached_total 1.0" in hub.metrics.render()
        budget = hub.registry.budget
        await wait_until(
            lambda: (budget.total, budget.writing) == (0, 0), what="the held bytes given back"
        )
        seen = len(sender.notices)
        assert sender.link.send(tmap("m-late", {"gw-stuck": (5,)}))
        await sender.wait_notices(seen + 1)
        assert sender.notices[-1].reason is UndeliverableReason.NOT_ATTACHED
        assert sender.notices[-1].message_ids == ("m-late",)
        # When it does read at last: what the hub had written, then the end of its stream.
        ended = await read_to_the_end(stuck)
        assert ended.code() == grpc.StatusCode.UNAVAILABLE
        assert ended.details() == STALLED_DETAILS.format("gw-stuck", WRITE_TIMEOUT)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "gw-stuck" in warnings[0]
    assert "1 s" in warnings[0]


async def test_a_gateway_that_reads_slowly_but_steadily_stays_attached(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A gateway that reads one frame every 50 ms while a sender keeps its outbox full
    (QUEUE_FULL) for three times --gateway-write-timeout makes progress: it is never
    detached, and it gets deliveries all along."""
    async with raw_gateway(hub, "gw-slow") as slow:
        sender = await make_link(hub.address, "gw-s")
        taken = 0
        stop = asyncio.Event()

        async def read_slowly() -> None:
            nonlocal taken
            while not stop.is_set():
                frame = codec.decode_response(await slow.read())
                taken += len(frame.deliveries)
                await asyncio.sleep(0.05)  # a slow reader, not synchronisation

        reader = asyncio.create_task(read_slowly())
        held = hub.registry.holder(GatewayId("gw-slow"))
        started = time.monotonic()
        n = 0
        try:
            while time.monotonic() - started < 3 * WRITE_TIMEOUT:
                for _ in range(QUEUE):
                    n += 1
                    sender.link.send(tmap(f"m-{n}", {"gw-slow": (5,)}, content=CONTENT))
                await wait_until(lambda: sender.link.pending == 0, what="the maps sent")
                await asyncio.sleep(0.02)  # pacing, not synchronisation
            assert not reader.done()
        finally:
            stop.set()
        await wait_until(lambda: reader.done(), what="the reader to stop")
        assert queue_full(sender, "gw-slow") > 0  # the outbox was full: the reader is slow
        assert taken > 10 * QUEUE
        assert hub.registry.holder(GatewayId("gw-slow")) is held
        assert hub.service.stalled_detached == 0


async def test_a_frozen_gateway_written_to_is_detached_by_the_write_timeout_too(
    make_link: LinkFactory,
) -> None:
    """Behind a proxy that freezes while a sender writes to it, with a keepalive longer
    than the write timeout, a gateway is detached by its stalled writes (within the write
    timeout and a quarter keepalive) and maps for it come back NOT_ATTACHED."""
    config = HubConfig(
        listen="127.0.0.1:0",
        hub_id="test-hub",
        grace=0.2,
        queue_size=QUEUE,
        gateway_keepalive=4.0,
        gateway_write_timeout=WRITE_TIMEOUT,
    )
    async with HubServer(config) as hub:
        took, _ = await detach_of_a_frozen_receiver(hub, make_link, content=CONTENT, within=10)
        assert took < WRITE_TIMEOUT + 1.0 + 1.5, took  # 2 x keepalive would be 8 s
        assert hub.service.stalled_detached == 1
        assert hub.service.silent_detached == 0
