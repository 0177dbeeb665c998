"""The hub notices a silent gateway stream (a dead switch port, a stuck VM: bytes held, no
FIN, no RST) as fast as a gateway notices a silent hub, even while it writes to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import wait_until
from tests.transmit_hub.conftest import LinkFactory, detach_of_a_frozen_receiver
from transmit_hub import GatewayId, HubServer, UndeliverableReason
from transmit_hub.config import HubConfig
from transmit_hub.registry import EndReason, Registry

KEEPALIVE = 0.5


def test_silent_streams_are_probed_then_ended() -> None:
    """Pure: quiet for ``keepalive`` s -> probe; for twice that -> end; heard -> neither."""
    registry = Registry("hub", 8)
    fresh = registry.attach(GatewayId("fresh"), "p1")
    quiet = registry.attach(GatewayId("quiet"), "p2")
    dead = registry.attach(GatewayId("dead"), "p3")
    now = 1000.0
    fresh.heard_at = now - 0.1
    quiet.heard_at = now - 2.5
    dead.heard_at = now - 4.0
    probe, end = registry.silent(now, 2.0)
    assert probe == [quiet]
    assert end == [dead]
    dead.end(EndReason.SILENT)
    assert registry.silent(now, 2.0) == ([quiet], [])  # an ending stream is not ended twice
    quiet.keepalive()
    assert quiet.probe_due
    assert quiet.probe_nonce
    nonce = quiet.probe_nonce
    quiet.keepalive()  # a claim may wait on the nonce in flight: it is kept
    assert quiet.probe_nonce == nonce


@pytest.fixture
async def fast_hub() -> AsyncIterator[HubServer]:
    server = HubServer(
        HubConfig(
            listen="127.0.0.1:0", hub_id="keepalive-hub", grace=0.2, gateway_keepalive=KEEPALIVE
        )
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.2)


async def test_a_frozen_gateway_is_detached_within_twice_the_keepalive_while_written_to(
    fast_hub: HubServer, make_link: LinkFactory
) -> None:
    """A receiving gateway behind a proxy that freezes while a sender keeps writing to it:
    the hub detaches it within about twice ``--gateway-keepalive`` (gRPC's own pings, 3 s
    plus 3 s, would take at least 6 s, if they ever fire behind a blocked write), and the
    sender's next maps for it come back NOT_ATTACHED (so a pool sends them elsewhere)."""
    took, sender = await detach_of_a_frozen_receiver(
        fast_hub, make_link, content="x" * 2000, within=6
    )
    assert took < 2 * KEEPALIVE + 2.0, took
    assert fast_hub.service.silent_detached == 1
    assert b"transmit_hub_silent_detached_total 1.0" in fast_hub.metrics.render()
    assert {n.reason for n in sender.notices} == {UndeliverableReason.NOT_ATTACHED}


async def test_an_idle_live_gateway_answers_the_probes_and_stays_attached(
    fast_hub: HubServer, make_link: LinkFactory
) -> None:
    """A live link that sends nothing is probed every ``keepalive`` s and answers: it is
    never detached and never sees its stream end."""
    idle = await make_link(fast_hub.address, "gw-idle")
    held = fast_hub.registry.holder(GatewayId("gw-idle"))
    await wait_until(
        lambda: fast_hub.service.keepalive_probes >= 6, timeout=10, what="six probe rounds"
    )
    assert fast_hub.registry.holder(GatewayId("gw-idle")) is held
    assert fast_hub.service.silent_detached == 0
    assert not idle.downs
    assert idle.link.connected
