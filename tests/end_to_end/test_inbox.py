"""The inbox: offline messages, replay in order, acknowledgements and type 14."""

from __future__ import annotations

from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client

A, B = 2001, 2002


async def test_offline_messages_arrive_in_order_on_connect_to_any_gateway(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """B offline: A's messages wait in B's inbox and are replayed in order, then type 14."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    sent = [f"m{i}" for i in range(25)]
    acks = [await a.say(B, text) for text in sent]
    assert all(ack["type"] == 10 for ack in acks)
    b = await open_client(gw2, B)
    assert b.contents() == sent
    assert [f["id"] for f in b.messages()] == [ack["msgId"] for ack in acks]
    end = b.frames[-1]
    assert end == {"type": 14, "seq": b.messages()[-1]["seq"]}
    # A second device on the other gateway gets the same replay.
    b_other = await open_client(gw1, B)
    assert b_other.contents() == sent


async def test_acknowledged_messages_are_not_replayed_and_the_rest_are(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """After B acks the 3rd message, a reconnect replays only the 4th and 5th."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    b, third = await _b_acks_the_third_of_five(open_client, gw1, gw2)
    await b.close()
    await _wait_acked(gw2, B, third)
    b = await open_client(gw1, B)
    assert b.contents() == ["m3", "m4"]
    # A client that never acks still sees everything at least once.
    b_lazy = await open_client(gw2, B)
    assert b_lazy.contents() == ["m3", "m4"]


async def test_type_14_replays_after_the_given_position(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """{"type":14,"seq":X} resends what came after X, then an end marker at the last one."""
    gw1 = await start_gateway("gw-1")
    a = await open_client(gw1, A)
    for i in range(4):
        await a.say(B, f"m{i}")
    b = await open_client(gw1, B)
    first = b.messages()[0]["seq"]
    last = b.messages()[-1]["seq"]
    b.frames.clear()
    await b.send({"type": 14, "seq": first})
    await b.wait_for(lambda f: f["type"] == 14)
    assert b.contents() == ["m1", "m2", "m3"]
    assert b.frames[-1] == {"type": 14, "seq": last}


async def test_live_messages_keep_flowing_after_replay(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Messages sent while B connects and replays arrive once each and in order."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    for i in range(300):
        await a.send({"type": 1, "id": f"pre{i}", "to": B, "content": f"m{i}"})
    await a.wait_for(lambda f: f.get("id") == "pre299")
    b = await open_client(gw2, B, replayed=False)
    for i in range(300, 400):
        await a.send({"type": 1, "id": f"live{i}", "to": B, "content": f"m{i}"})
    await a.wait_for(lambda f: f.get("id") == "live399")
    expected = [f"m{i}" for i in range(400)]
    await b.wait_contents(expected)
    await b.wait_for(lambda f: f["type"] == 14)
    assert b.contents() == expected
    assert sum(1 for f in b.frames if f["type"] == 14) == 1


async def _wait_acked(gateway: object, user: int, seq: str) -> None:
    from im_gateway.gateway import Gateway
    from tests.helpers import wait_until

    assert isinstance(gateway, Gateway)

    async def acked() -> bool:
        return await gateway.store.acked(user) == int(seq)  # type: ignore[arg-type]

    await wait_until(acked, what=f"user {user} acked {seq}")


async def test_a_second_device_replays_after_what_the_first_just_acknowledged(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """B acks the 3rd message on one device and, while that device stays connected,
    connects another to the same gateway at once: its replay starts after the ack,
    although the ack's write waits for the gateway's round (--ack-linger, long here so
    that only the write the new connection asks for can land in time)."""
    gw1 = await start_gateway("gw-1", ack_linger=1.0)
    b, _ = await _b_acks_the_third_of_five(open_client, gw1, gw1)
    b.frames.clear()
    await b.send({"type": 0})  # a heartbeat: its answer says the ack has been read
    await b.wait_for(lambda f: f["type"] == 0)
    b_other = await open_client(gw1, B)
    assert b_other.contents() == ["m3", "m4"]


async def _b_acks_the_third_of_five(
    open_client: ClientFactory, a_on: object, b_on: object
) -> tuple[Client, str]:
    """A sends B five messages; B, connected to ``b_on``, gets them all and acks the
    third (its seq is returned with B's client)."""
    a = await open_client(a_on, A)
    for i in range(5):
        await a.say(B, f"m{i}")
    b = await open_client(b_on, B)
    assert b.contents() == [f"m{i}" for i in range(5)]
    third: str = b.messages()[2]["seq"]
    await b.send({"type": 11, "seq": third})
    return b, third
