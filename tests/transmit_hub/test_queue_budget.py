"""A real hub bounds the bytes all its gateways' outboxes hold together, waiting or in
the frame being written (``--queue-bytes-total``): gateways that read slowly at once (a
brown-out) hold no more than that, plus one delivery each; past it, senders are told
QUEUE_FULL; a detached gateway's bytes, the frame being written included, are given
back."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.metrics_scrape import parse, promtool_check_metrics, value
from transmit_hub import GatewayId, HubServer, UndeliverableReason, codec
from transmit_hub.config import HubConfig, parse_config
from transmit_hub.errors import ConfigError
from transmit_hub.outbox import Outbox

from .conftest import Collector, LinkFactory, tmap
from .test_budget import queued_bytes
from .test_write_stall import raw_gateway, routed

TOTAL = 256 * 1024
PER_GATEWAY = 1024 * 1024
CONTENT = "x" * 16 * 1024
SLOW = ("gw-a", "gw-b", "gw-c")


def held(hub: HubServer) -> int:
    """Bytes the attached gateways' outboxes hold (waiting, and in the frames being
    written), summed outbox by outbox."""
    return sum(a.outbox.held_bytes for a in hub.registry.attachments())


def allowance(hub: HubServer) -> int:
    """One delivery (or notice item) per attached gateway past the budget."""
    return len(hub.registry.attachments()) * (len(CONTENT) + 1024)


def refused(sender: Collector, gateway_id: str) -> set[str]:
    return {
        m
        for n in sender.notices
        if n.reason is UndeliverableReason.QUEUE_FULL and n.gateway_id == gateway_id
        for m in n.message_ids
    }


def test_the_flag_default_and_range() -> None:
    """``--queue-bytes-total``: 1 GiB by default, from a flag, the environment or the
    file; below 1024 or not a number refused naming the flag."""
    assert HubConfig().queue_bytes_total == 1024**3
    assert parse_config(["--queue-bytes-total", "1024"], {}).queue_bytes_total == 1024
    env = {"TRANSMIT_HUB_QUEUE_BYTES_TOTAL": "4096"}
    assert parse_config([], env).queue_bytes_total == 4096
    assert parse_config(["--queue-bytes-total", "8192"], env).queue_bytes_total == 8192
    for bad in ("0", "-1", "1023"):
        with pytest.raises(ConfigError, match="--queue-bytes-total must be at least 1024"):
            parse_config(["--queue-bytes-total", bad], {})
    with pytest.raises(ConfigError, match="--queue-bytes-total"):
        parse_config(["--queue-bytes-total", "1GiB"], {})


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    """A hub whose outboxes hold 1 MiB each but 256 KiB together; slow readers are not
    detached (the default --gateway-write-timeout, 10 s, is never reached)."""
    config = HubConfig(
        listen="127.0.0.1:0",
        hub_id="test-hub",
        grace=0.2,
        queue_bytes=PER_GATEWAY,
        queue_bytes_total=TOTAL,
    )
    async with HubServer(config) as server:
        yield server


class Reader:
    """Reads a raw gateway's stream at ``rate`` bytes a second (0: as fast as frames
    come), as over a slow network: the message ids delivered to it."""

    def __init__(self, call: Any, rate: float) -> None:
        self.call = call
        self.rate = rate
        self.ids: list[str] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            raw = await self.call.read()
            self.ids.extend(d.message.id for d in codec.decode_response(raw).deliveries)
            if self.rate:
                await asyncio.sleep(len(raw) / self.rate)  # a slow link, not synchronisation

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_slow_readers_together_hold_at_most_the_total_and_catch_up(
    hub: HubServer,
    make_link: LinkFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three gateways that read 2 MiB a second, sent 16 KiB maps faster than that: after
    every request frame the hub routes, the bytes its outboxes hold are within
    --queue-bytes-total plus one delivery a gateway (without the budget they held 2.7 MiB,
    each outbox up to its 1 MiB); the maps beyond are refused QUEUE_FULL to the sender,
    counted apart (counter and metric), with one log line; none is detached. Once they read at full speed the total falls to 0 and maps flow again, and
    every share was either delivered once or refused."""
    caplog.set_level(logging.WARNING, logger="transmit_hub.forwarding")
    seen: list[tuple[int, int]] = []
    """(bytes held, their bound) after each request frame routed."""
    route = hub.service.route

    def route_and_look(att: Any, maps: Any, *, checked: bool = False) -> None:
        route(att, maps, checked=checked)
        seen.append((held(hub), TOTAL + allowance(hub)))

    monkeypatch.setattr(hub.service, "route", route_and_look)
    async with contextlib.AsyncExitStack() as stack:
        calls = [await stack.enter_async_context(raw_gateway(hub, g)) for g in SLOW]
        readers = [Reader(call, 2 * 1024 * 1024) for call in calls]
        for reader in readers:
            stack.push_async_callback(reader.stop)
        sender = await make_link(hub.address, "gw-s")
        n = rounds = 0
        while rounds < 20:  # twenty rounds more once maps are refused
            for _ in range(4):
                n += 1
                assert sender.link.send(tmap(f"m-{n}", dict.fromkeys(SLOW, (5,)), content=CONTENT))
            await wait_until(functools.partial(routed, sender, hub, n), what=f"{n} maps routed")
            if hub.registry.queue_full:
                rounds += 1
            assert n < 2000, "no map was ever refused"
        assert [(w, b) for w, b in seen if w > b] == []
        assert max(w for w, _ in seen) > TOTAL // 2  # the readers were slow: the budget filled
        budget = hub.registry.budget
        assert budget.total == held(hub)
        assert all(refused(sender, g) for g in SLOW)
        assert hub.registry.queue_full >= budget.refused > 0
        assert hub.service.stalled_detached == 0
        assert all(hub.registry.is_attached(GatewayId(g)) for g in SLOW)
        body = hub.metrics.render()
        promtool_check_metrics(body)
        samples = parse(body.decode())
        assert value(samples, "transmit_hub_outbox_bytes_refused_total") == budget.refused
        assert value(samples, "transmit_hub_outbox_bytes_limit") == TOTAL

        for reader in readers:
            reader.rate = 0  # the brown-out is over
        await wait_until(lambda: budget.total == 0, what="the outboxes to empty")
        assert held(hub) == 0
        refused_before = budget.refused
        n += 1
        assert sender.link.send(tmap(f"m-{n}", dict.fromkeys(SLOW, (5,)), content=CONTENT))
        await wait_until(
            lambda: all(f"m-{n}" in r.ids for r in readers), what="the last map delivered"
        )
        assert budget.refused == refused_before
        for g, reader in zip(SLOW, readers, strict=True):
            assert len(reader.ids) == len(set(reader.ids))  # none twice
            assert not set(reader.ids) & refused(sender, g)
            if hub.registry.notices_dropped == 0:  # else some refusals went untold
                assert len(reader.ids) + len(refused(sender, g)) == n
        await wait_until(lambda: budget.total == 0, what="the outboxes to empty")
    lines = [r.getMessage() for r in caplog.records if "--queue-bytes-total" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"(--queue-bytes-total {TOTAL})" in lines[0]


async def test_a_detached_gateway_gives_back_the_bytes_waiting_for_it(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A gateway that reads nothing, sent maps until the total refuses them, then gone:
    the hub detaches it and the bytes it held (waiting, and the frame being written) are
    given back (the total falls to 0), so maps for the others flow again."""
    sender = await make_link(hub.address, "gw-s")
    other = await make_link(hub.address, "gw-o")
    budget = hub.registry.budget
    async with raw_gateway(hub, "gw-stuck"):
        n = 0
        while not budget.refused:
            for _ in range(8):
                n += 1
                assert sender.link.send(tmap(f"m-{n}", {"gw-stuck": (5,)}, content=CONTENT))
            await wait_until(functools.partial(routed, sender, hub, n), what=f"{n} maps routed")
            assert n < 2000, "the total never refused a map"
        box = hub.registry.outboxes["gw-stuck"]
        kept = box.held_bytes
        assert kept > TOTAL // 2
        assert budget.total >= kept
        # The total is spent, yet an empty outbox still takes one delivery.
        assert sender.link.send(tmap("o-1", {"gw-o": (6,)}, content=CONTENT))
        await other.wait_deliveries(1)
    await wait_until(
        lambda: not hub.registry.is_attached(GatewayId("gw-stuck")), what="gw-stuck detached"
    )
    await wait_until(lambda: budget.total == 0, what="the bytes given back")
    assert box.held_bytes == 0
    for i in range(2, 12):
        assert sender.link.send(tmap(f"o-{i}", {"gw-o": (6,)}, content=CONTENT))
    await other.wait_deliveries(11)
    assert budget.total == 0


async def test_the_frame_being_written_stays_counted_until_the_gateway_is_detached(
    hub: HubServer, make_link: LinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that stops reading while the hub writes it a frame of several deliveries,
    then sent maps until the total refuses them: what the hub holds for it (the items
    waiting, and the frame held in the write) stays within --queue-bytes-total plus one
    delivery, and is what ``transmit_hub_outbox_bytes`` says (before, a frame was given back
    when taken: the total passed the budget by the frame being written, and the metric
    did not show it). Detached, all of it comes back."""
    frames: dict[Outbox, int] = {}
    """Each outbox's last frame taken: bytes (the frame being written, while a write is out)."""
    take = Outbox.take

    def take_and_look(box: Outbox, max_items: int, max_bytes: int) -> Any:
        deliveries, notices = taken = take(box, max_items, max_bytes)
        if deliveries or notices:
            frames[box] = sum(map(len, deliveries)) + sum(map(len, notices))
        return taken

    monkeypatch.setattr(Outbox, "take", take_and_look)
    sender = await make_link(hub.address, "gw-s")
    budget = hub.registry.budget
    seen: list[int] = []
    """The bytes the hub holds for its gateways, after each burst routed."""
    async with raw_gateway(hub, "gw-stuck"):
        att = hub.registry.holder(GatewayId("gw-stuck"))
        assert att is not None

        def holding() -> int:
            writing = frames.get(att.outbox, 0) if att.writing_since else 0
            return queued_bytes(att.outbox) + writing

        n = 0
        while not budget.refused:
            for _ in range(8):  # one request frame: the writer takes them as one frame
                n += 1
                assert sender.link.send(tmap(f"m-{n}", {"gw-stuck": (5,)}, content=CONTENT))
            await wait_until(functools.partial(routed, sender, hub, n), what=f"{n} maps routed")
            seen.append(holding())
            assert n < 2000, "the total never refused a map"
        assert att.writing_since, "the writer is not held in a write"
        assert frames[att.outbox] > 4 * len(CONTENT)  # mid-frame: several deliveries held
        assert max(seen) <= TOTAL + len(CONTENT) + 1024, (max(seen), TOTAL)
        own = hub.registry.outboxes["gw-s"]  # its QUEUE_FULL notices: written, given back
        await wait_until(lambda: own.held_bytes == 0, what="gw-s's notices written")
        samples = parse(hub.metrics.render().decode())
        assert value(samples, "transmit_hub_outbox_bytes") == budget.total == holding()
        assert value(samples, "transmit_hub_outbox_bytes_writing") == frames[att.outbox]
        assert att.outbox.held_bytes == holding()
        assert att.outbox.writing_bytes == frames[att.outbox]
    await wait_until(
        lambda: not hub.registry.is_attached(GatewayId("gw-stuck")), what="gw-stuck detached"
    )
    await wait_until(lambda: budget.total == 0, what="the bytes given back")
    assert (att.outbox.held_bytes, att.outbox.writing_bytes) == (0, 0)
    att.outbox.written()  # a write that completes after the detach gives back nothing more
    assert budget.total == 0
