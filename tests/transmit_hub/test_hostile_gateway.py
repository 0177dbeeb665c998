"""The hub against a gateway with valid credentials that misbehaves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpc import aio  # type: ignore[import-untyped]

from tests.helpers import wait_until
from transmit_hub import HubServer, UndeliverableReason
from transmit_hub.config import HubConfig
from transmit_hub.transport import CHANNEL_OPTIONS

from .conftest import LinkFactory, tmap
from .test_identity import attach_raw

MIB = 1024 * 1024


@pytest.fixture
async def patient_hub() -> AsyncIterator[HubServer]:
    """A hub with the default queue bounds that does not detach silent or stalled
    gateways for a minute (the stuck gateway below sends nothing after its Hello and reads
    nothing; test_write_stall.py has the hub detach such gateways)."""
    config = HubConfig(
        listen="127.0.0.1:0",
        hub_id="test-hub",
        gateway_keepalive=60.0,
        gateway_write_timeout=60.0,
    )
    async with HubServer(config) as hub:
        yield hub


async def test_a_gateway_that_never_reads_holds_a_bounded_number_of_bytes(
    patient_hub: HubServer, make_link: LinkFactory
) -> None:
    """A gateway that attaches and never reads its stream is sent 200 maps of 1 MiB: the
    hub keeps at most --queue-bytes (64 MiB) of them for it and answers the rest
    QUEUE_FULL (it used to queue --queue-size, 4,096, of any size: up to 64 GiB), and
    another gateway still gets its deliveries meanwhile."""
    channel = aio.insecure_channel(patient_hub.address, options=CHANNEL_OPTIONS)
    try:
        await attach_raw(channel, "gw-stuck")
        sender = await make_link(patient_hub.address, "gw-a")
        other = await make_link(patient_hub.address, "gw-c")
        content = "x" * MIB
        for i in range(200):
            assert sender.link.send(tmap(f"big-{i}", {"gw-stuck": (5,)}, content=content))

        def queue_full() -> int:
            return sum(
                n.reason == UndeliverableReason.QUEUE_FULL and n.gateway_id == "gw-stuck"
                for n in sender.notices
            )

        await wait_until(
            lambda: sender.link.pending == 0 and patient_hub.registry.transmit_maps_received == 200,
            timeout=60,
            what="every map routed",
        )
        await wait_until(lambda: queue_full() >= 100, what="QUEUE_FULL for the excess")
        holder = patient_hub.registry.holder("gw-stuck")
        assert holder is not None
        assert holder.outbox.waiting_bytes <= 64 * MIB
        assert sender.link.send(tmap("small", {"gw-c": (6,)}))
        await other.wait_deliveries(1)
    finally:
        await channel.close(None)
