"""Group messages over three gateways: one hub delivery per remote gateway."""

from __future__ import annotations

from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client, deliveries_to, hub_stats
from transmit_hub.server import HubServer

GROUP = 7


async def join(client: Client, group: int) -> None:
    cid = client.next_id()
    await client.send({"type": 12, "id": cid, "to": group})
    reply = await client.wait_for(lambda f: f.get("id") == cid)
    assert reply["type"] == 10, reply


async def test_group_message_reaches_every_member_once_with_one_delivery_per_gateway(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Members on 3 gateways each get it once; the hub writes one delivery per remote gateway."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    gw3 = await start_gateway("gw-3")
    sender = await open_client(gw1, 1)
    sender_other = await open_client(gw3, 1)
    members = [
        await open_client(gw1, 2),
        await open_client(gw2, 3),
        await open_client(gw2, 4),
        await open_client(gw2, 5),
        await open_client(gw3, 6),
    ]
    for client in [sender, *members]:
        await join(client, GROUP)
    before = await hub_stats(hub.address)
    ack = await sender.say(GROUP, "hello group", group=True)
    assert ack["type"] == 10
    for client in [*members, sender_other]:
        got = await client.wait_for(lambda f: f["type"] == 2)
        assert (got["id"], got["from"], got["to"]) == (ack["msgId"], 1, GROUP)
    marker = await sender.say(GROUP, "marker", group=True)
    assert marker["type"] == 10
    for client in [*members, sender_other]:
        await client.wait_contents(["hello group", "marker"])
        assert client.contents() == ["hello group", "marker"], client.user
    assert sender.messages() == []
    after = await hub_stats(hub.address)
    # Two messages; gw2 holds 3 members and gw3 one member plus a sender device.
    assert deliveries_to(after, "gw-2") - deliveries_to(before, "gw-2") == 2
    assert deliveries_to(after, "gw-3") - deliveries_to(before, "gw-3") == 2
    assert deliveries_to(after, "gw-1") - deliveries_to(before, "gw-1") == 0
    assert (
        int(after.get("transmitMapsReceived", 0)) - int(before.get("transmitMapsReceived", 0)) == 2
    )


async def test_non_member_post_is_refused_and_leave_works(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A non-member gets 99 not_member; after leaving, a former member does too."""
    gw1 = await start_gateway("gw-1")
    outsider = await open_client(gw1, 50)
    member = await open_client(gw1, 51)
    await join(member, GROUP)
    refused = await outsider.say(GROUP, "let me in", group=True, cid="n-1")
    assert refused["type"] == 99
    assert refused["code"] == "not_member"
    assert refused["id"] == "n-1"
    assert refused["message"]
    await member.send({"type": 13, "id": "leave-1", "to": GROUP})
    left = await member.wait_for(lambda f: f.get("id") == "leave-1")
    assert left["type"] == 10
    refused = await member.say(GROUP, "still here?", group=True)
    assert refused["code"] == "not_member"
    # The connection stays open and usable.
    ok = await outsider.say(51, "direct is fine")
    assert ok["type"] == 10
