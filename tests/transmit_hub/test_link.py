"""HubLink's own promises: bounded buffer, maps kept while the hub is away, close() hands
back what was never written, and a map it cannot encode is reported, not retried."""

from __future__ import annotations

import pytest

from tests.helpers import free_port
from transmit_hub import GatewayId, HubLink, HubServer, LinkClosed, UndeliverableReason

from .conftest import LinkFactory, tmap


async def test_send_returns_false_when_full_and_close_returns_unsent() -> None:
    """With no hub reachable, send() fills max_pending then returns False; close() returns
    every map never written, in order, once."""
    link = HubLink(f"127.0.0.1:{free_port()}", GatewayId("gw-a"), max_pending=3)
    await link.start()
    maps = [tmap(f"m{i}", {"gw-b": (1,)}) for i in range(4)]
    assert [link.send(m) for m in maps] == [True, True, True, False]
    assert not link.connected
    with pytest.raises(TimeoutError):
        await link.wait_connected(0.2)
    assert await link.close() == maps[:3]
    assert await link.close() == []
    with pytest.raises(LinkClosed):
        link.send(maps[3])


async def test_maps_sent_before_the_hub_exists_go_out_once_it_does(
    make_link: LinkFactory,
) -> None:
    """A link started while no hub listens keeps its maps and sends them, in order, when a hub
    appears on that address."""
    port = free_port()
    a = await make_link(f"127.0.0.1:{port}", "gw-a", connect=False, backoff_max=0.2)
    for i in range(3):
        assert a.link.send(tmap(f"early-{i}", {"gw-a": (1,)}))
    async with HubServer(listen=f"127.0.0.1:{port}", grace=0.2):
        await a.link.wait_connected(10)
        await a.wait_deliveries(3)
        assert a.message_ids() == ["early-0", "early-1", "early-2"]
        assert a.link.hub_id is not None
        assert await a.link.close() == []
        assert not a.link.connected


async def test_unencodable_map_is_reported_invalid_and_the_link_goes_on(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A map the link cannot encode (user id beyond uint64) comes back as an INVALID notice;
    the maps around it are delivered and the stream stays up."""
    a = await make_link(hub.address, "gw-a")
    assert a.link.send(tmap("ok-1", {"gw-a": (1,)}))
    assert a.link.send(tmap("bad", {"gw-a": (2**64,)}))
    assert a.link.send(tmap("ok-2", {"gw-a": (1,)}))
    (notice,) = await a.wait_notices(1)
    assert notice.reason is UndeliverableReason.INVALID
    assert notice.message_ids == ("bad",)
    await a.wait_deliveries(2)
    assert a.message_ids() == ["ok-1", "ok-2"]
    assert a.link.connected
    assert a.downs == []
