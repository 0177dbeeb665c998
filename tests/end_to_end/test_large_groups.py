"""Large groups (stored once, in the group's own stream) on real gateways, a real hub and
a real Redis: live posts, replays per stream, acks per stream, joins, leaves and the
change of form when a group crosses ``--large-group``."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from im_gateway.gateway import Gateway
from im_gateway.store import GroupStream, RedisStore
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client, change_group, deliveries_to, hub_stats
from tests.helpers import wait_until
from transmit_hub.server import HubServer
from transmit_hub.types import UserId

GROUP = 77


async def change(client: Client, kind: int, group: int = GROUP) -> None:
    await change_group(client, kind, group)


def group_messages(client: Client) -> list[dict[str, Any]]:
    return [f for f in client.messages() if f["type"] == 2 and f["to"] == GROUP]


def seqs(client: Client) -> list[str]:
    return [f["seq"] for f in group_messages(client)]


async def test_a_large_group_posts_once_and_members_read_its_stream(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Above the bound: every online member gets each post once, live, with a g seq;
    the hub gets one map per post with one share per gateway; a member who connects later
    gets the posts in the replay, in order, once, and nothing from before they joined."""
    gws = [await start_gateway(f"gw-{i}", large_group=3) for i in (1, 2, 3)]
    online = [await open_client(gws[i % 3], 100 + i) for i in range(4)]
    for client in online:
        await change(client, 12)
    # Once every member follows the stream (they read the warm-up), count the hub's work.
    await online[0].say(GROUP, "warm-up", group=True)
    for client in online[1:]:
        await client.wait_contents(["warm-up"])
    before = await hub_stats(hub.address)
    for n in range(3):
        ack = await online[0].say(GROUP, f"post {n}", group=True)
        assert ack["type"] == 10, ack
    for client in online[1:]:
        await client.wait_contents([f"post {n}" for n in range(3)])
    for client in online:
        if client is not online[0]:
            assert seqs(client) == [f"g{GROUP}:{n}" for n in (1, 2, 3, 4)], client.user
    assert group_messages(online[0]) == []  # the sender's own: type 10 only
    after = await hub_stats(hub.address)
    maps = int(after.get("transmitMapsReceived", 0)) - int(before.get("transmitMapsReceived", 0))
    assert maps == 3
    for gw in ("gw-2", "gw-3"):
        assert deliveries_to(after, gw) - deliveries_to(before, gw) == 3

    # A new member joins (while offline: on another connection, closed), then connects.
    late = await open_client(gws[1], 200)
    await change(late, 12)
    await late.close()
    await online[1].say(GROUP, "after 200 joined", group=True)
    again = await open_client(gws[2], 200)
    assert [f["content"] for f in group_messages(again)] == ["after 200 joined"]
    assert seqs(again) == [f"g{GROUP}:5"]
    # A member who was offline all along replays all of it, in order.
    back = await open_client(gws[0], 100)  # a second device of user 100 (the sender)
    assert [f["content"] for f in group_messages(back)] == [
        "warm-up",
        "post 0",
        "post 1",
        "post 2",
        "after 200 joined",
    ]


async def test_acks_per_stream_hold_across_devices_and_leavers_get_nothing(
    start_gateway: GatewayFactory, open_client: ClientFactory, redis_url: str
) -> None:
    gws = [await start_gateway(f"gw-{i}", large_group=2) for i in (1, 2)]
    alice, bob, carol = [await open_client(gws[0], u) for u in (301, 302, 303)]
    for client in (alice, bob, carol):
        await change(client, 12)
    await alice.say(302, "private to bob")
    for n in range(3):
        await alice.say(GROUP, f"g{n}", group=True)
    await bob.wait_contents(["private to bob", "g0", "g1", "g2"])
    inbox_seq = next(f["seq"] for f in bob.messages() if f["type"] == 1)
    await bob.send({"type": 11, "seq": inbox_seq})
    await bob.send({"type": 11, "seq": f"g{GROUP}:2"})
    await bob.send({"type": 11, "seq": f"g{GROUP}:99"})  # clamped to the stream's end: 3
    refused_before = len([f for f in bob.frames if f["type"] == 99])
    await bob.send({"type": 11, "seq": "g77"})
    await bob.wait_for(lambda f: f["type"] == 99 and f["code"] == "bad_request")
    assert len([f for f in bob.frames if f["type"] == 99]) == refused_before + 1
    await bob.close()
    # The acks are written shortly after they arrive: the clamp to the stream's end (3)
    # must be done before the next post, or it would cover that one too.
    store = RedisStore(redis_url)
    try:

        async def acked() -> bool:
            found = await store.streams(UserId(302), 0)
            return [(g.group, g.position) for g in found if isinstance(g, GroupStream)] == [
                (GROUP, 3)
            ]

        await wait_until(acked, what="bob's group ack stored")
    finally:
        await store.close()
    # Bob's other device, on the other gateway: nothing acknowledged comes again.
    await alice.say(GROUP, "g3", group=True)
    bob2 = await open_client(gws[1], 302)
    assert [f["content"] for f in bob2.messages()] == ["g3"]
    # Its end marker is the pinned one; asked for (?groups=1, as the client libraries
    # do), it lists where the group's replay started (a device that has shown less
    # would ask for the rest); a user in no large group's marker lists none.
    assert [f for f in bob2.frames if f["type"] == 14] == [{"type": 14, "seq": inbox_seq}]
    bob3 = await Client.open(gws[0].port, 302, query="groups=1")
    marker = await bob3.wait_for(lambda f: f["type"] == 14)
    assert marker == {"type": 14, "seq": inbox_seq, "groups": [f"g{GROUP}:3"]}
    await bob3.close()
    # Anything but exactly groups=1 (a value of its own, twice, empty) is the pinned marker.
    for query in ("groups=yes", "groups=1&groups=1", "groups=", "groups=" + "1" * 4000):
        odd = await Client.open(gws[0].port, 302, query=query)
        assert await odd.wait_for(lambda f: f["type"] == 14) == {"type": 14, "seq": inbox_seq}
        await odd.close()
    loner = await Client.open(gws[0].port, 399, query="groups=1")
    assert await loner.wait_for(lambda f: f["type"] == 14) == {"type": 14, "seq": "0"}
    await loner.close()
    # Type 14 of the group's stream replays it from there; of a group one is not in: refused.
    await bob2.send({"type": 14, "seq": f"g{GROUP}:1"})
    end = await bob2.wait_for(lambda f: f["type"] == 14 and f["seq"] == f"g{GROUP}:4")
    assert "truncated" not in end
    assert [f["content"] for f in bob2.messages()] == ["g3", "g1", "g2", "g3"]
    await bob2.send({"type": 14, "seq": "g999:0"})
    await bob2.wait_for(lambda f: f["type"] == 99 and f["code"] == "not_member")
    # Carol leaves: nothing more reaches her, live or on reconnect.
    await change(carol, 13)
    await alice.say(GROUP, "after carol left", group=True)
    await bob2.wait_contents(["after carol left"])
    assert "after carol left" not in carol.contents()
    await carol.close()
    carol2 = await open_client(gws[1], 303)
    assert "after carol left" not in carol2.contents()


async def test_crossing_the_bound_keeps_every_members_history_whole(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Small, large, small again, with members online and offline: each member gets every
    message once, live or in the replay, in order."""
    gws = [await start_gateway(f"gw-{i}", large_group=3) for i in (1, 2)]
    users = [401, 402, 403, 404]
    online = {u: await open_client(gws[u % 2], u) for u in users[:3]}
    for client in online.values():
        await change(client, 12)
    sent = []

    async def post(text: str) -> None:
        ack = await online[401].say(GROUP, text, group=True)
        assert ack["type"] == 10, ack
        sent.append(text)

    await post("small 1")
    offline = await open_client(gws[0], 404)
    await change(offline, 12)  # 4 members: large
    await offline.close()
    await post("large 2")
    await post("large 3")
    # 403 leaves only once it has the posts: a post not yet shown when its reader leaves is
    # not shown after (the gateway checks membership when the post arrives).
    await online[403].wait_contents(["small 1", "large 2", "large 3"])
    await change(online[403], 13)  # 3 members: small again
    await post("small 4")
    for u in (402,):
        await online[u].wait_contents(sent)
        assert online[u].contents() == sent
    assert online[403].contents() == ["small 1", "large 2", "large 3"]
    back = await open_client(gws[1], 404)
    await back.wait_contents(["large 2", "large 3", "small 4"])
    assert back.contents() == ["large 2", "large 3", "small 4"]
    fresh = await open_client(gws[1], 402)  # another device, nothing acknowledged
    assert fresh.contents() == sent


# -- 2,000 members over 3 gateways, on one Redis and on a Redis Cluster ---------------------

KEY = "api-key-for-the-large-group-tests-0123"
BIG = 4242
FIRST = 20_000
MEMBERS = list(range(FIRST, FIRST + 2000))


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    fixture = "redis_url" if request.param == "redis" else "redis_cluster_url"
    return str(request.getfixturevalue(fixture))


async def call(http: aiohttp.ClientSession, gw: Gateway, method: str, body: object) -> Any:
    async with http.post(
        f"http://127.0.0.1:{gw.api_port}/api/{method}",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    ) as resp:
        answer = await resp.json()
        assert resp.status == 200, (method, answer)
        return answer


def big_posts(client: Client) -> list[dict[str, Any]]:
    return [f for f in client.messages() if f["to"] == BIG]


async def test_a_group_of_2000_over_3_gateways_most_offline(
    hub: HubServer, start_gateway: GatewayFactory, open_client: ClientFactory, store_url: str
) -> None:
    """2,000 members added in one call, 30 online over 3 gateways: every online member
    gets each post live once, in order; members who connect later get every post once in
    their replay, in order, nothing from before they joined; acks per stream hold across
    devices; a removed member gets nothing more; shrinking below the bound keeps every
    member's history whole."""
    gws = [
        await start_gateway(
            f"gw-big-{i}",
            redis_url=store_url,
            api_listen="127.0.0.1:0",
            api_key=KEY,
            group_join="server",
        )
        for i in range(3)
    ]
    online = {u: await open_client(gws[u % 3], u) for u in MEMBERS[:30]}
    async with aiohttp.ClientSession() as http:
        added = await call(http, gws[0], "groups/add", {"group": BIG, "users": MEMBERS})
        assert added == {"added": 2000}
        # Once every online member follows the stream (each reads the warm-up), post.
        await call(http, gws[1], "publish", {"group": BIG, "content": "warm-up"})
        for client in online.values():
            await client.wait_contents(["warm-up"])
        texts = [f"post {n}" for n in range(5)]
        for n, text in enumerate(texts):
            body = {"group": BIG, "content": text, "from": MEMBERS[n]}
            await call(http, gws[n % 3], "publish", body)
        everything = ["warm-up", *texts]
        for u, client in online.items():  # the posters' own devices too (from the API)
            await client.wait_contents(everything)
            got = big_posts(client)
            assert [f["content"] for f in got] == everything, u
            assert [f["seq"] for f in got] == [f"g{BIG}:{n}" for n in range(1, 7)]
        # Offline members connect later: everything, once, in order.
        for u in (MEMBERS[500], MEMBERS[1999]):
            late = await open_client(gws[u % 3], u)
            assert [f["content"] for f in big_posts(late)] == everything
        # A member added now gets nothing from before the join.
        newcomer = FIRST + 5000
        await call(http, gws[2], "groups/add", {"group": BIG, "users": [newcomer]})
        await call(http, gws[2], "publish", {"group": BIG, "content": "welcome"})
        everything.append("welcome")
        fresh = await open_client(gws[0], newcomer)
        await fresh.wait_contents(["welcome"])
        assert [f["content"] for f in big_posts(fresh)] == ["welcome"]
        # Acks per stream across devices: acknowledged on one, not replayed on another.
        first = online[MEMBERS[3]]
        await first.wait_contents(["welcome"])
        await first.send({"type": 11, "seq": big_posts(first)[-1]["seq"]})
        history = await call(http, gws[0], "history", {"group": BIG, "after": f"g{BIG}:0"})
        assert [m["content"] for m in history["messages"]] == everything

        async def acked() -> bool:
            other = await open_client(gws[1], MEMBERS[3])
            try:
                return big_posts(other) == []
            finally:
                await other.close()

        await wait_until(acked, timeout=10, what="the group ack to be stored")
        # A removed member gets nothing more, live or replayed.
        gone = online[MEMBERS[4]]
        removed = await call(http, gws[1], "groups/remove", {"group": BIG, "users": [MEMBERS[4]]})
        assert removed == {"removed": 1}
        await call(http, gws[1], "publish", {"group": BIG, "content": "after the removal"})
        everything.append("after the removal")
        await online[MEMBERS[5]].wait_contents(["after the removal"])
        gone_again = await open_client(gws[2], MEMBERS[4])
        assert "after the removal" not in gone.contents() + gone_again.contents()
        # Shrinking to the bound: the next post goes to inboxes; history stays whole.
        out = MEMBERS[500:]  # 2,001 - 1 - 1,500: 500 members
        for i in range(0, len(out), 1000):
            await call(http, gws[0], "groups/remove", {"group": BIG, "users": out[i : i + 1000]})
        await call(http, gws[2], "publish", {"group": BIG, "content": "small again"})
        everything.append("small again")
        for u in (MEMBERS[5], MEMBERS[6]):
            await online[u].wait_contents(everything)
            assert [f["content"] for f in big_posts(online[u])] == everything
        last = await open_client(gws[0], MEMBERS[7])  # another device: everything, in order
        assert [f["content"] for f in big_posts(last)] == everything
        assert big_posts(last)[-1]["seq"].isdigit()  # an inbox seq now


async def test_a_post_that_overtakes_the_leave_notice_does_not_reach_the_leaver(
    start_gateway: GatewayFactory, open_client: ClientFactory, redis_url: str
) -> None:
    """With several hubs, a removal's notice to the leaver's gateway and the next post may
    go through different hubs, the post first. The worst such order: the notice never
    comes (the removal is written straight to the store). The post still reaches the
    members on the leaver's gateway, and not the leaver, live or on reconnect."""
    gws = [await start_gateway(f"gw-{i}", large_group=2) for i in (1, 2)]
    alice = await open_client(gws[0], 501)
    bob, carol = [await open_client(gws[1], u) for u in (502, 503)]
    for client in (alice, bob, carol):
        await change(client, 12)
    await change(await open_client(gws[0], 504), 12)  # 4 members: large, 3 once carol left
    await alice.say(GROUP, "before", group=True)
    await bob.wait_contents(["before"])
    await carol.wait_contents(["before"])
    store = RedisStore(redis_url, large_group=2)
    try:
        assert await store.leave(GROUP, UserId(503))  # its notice is still on its way
    finally:
        await store.close()
    await alice.say(GROUP, "after carol left", group=True)
    await alice.say(GROUP, "and the next", group=True)
    await bob.wait_contents(["before", "after carol left", "and the next"])
    assert carol.contents() == ["before"]
    await carol.close()
    carol2 = await open_client(gws[1], 503)
    assert [f["content"] for f in group_messages(carol2)] == []


async def test_a_server_post_as_a_non_member_reaches_the_senders_devices_as_in_a_small_group(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """The server API posting as a user who is not a member: in a small group that user's
    devices get a copy (from their inbox), and so they do in a large group, live and in
    the replay of a later connection; the members get the post with its g seq. A resend
    with the same id is answered with the same message id and shown nowhere twice."""
    gws = [
        await start_gateway(f"gw-{i}", large_group=2, api_listen="127.0.0.1:0", api_key=KEY)
        for i in (1, 2)
    ]
    small, large = GROUP + 1, GROUP
    members = [await open_client(gws[0], u) for u in (601, 602, 603)]
    for client in members:
        await change(client, 12, large)
    await change(members[0], 12, small)
    dave = await open_client(gws[1], 604)  # in neither group
    async with aiohttp.ClientSession() as http:
        for group in (small, large):
            body = {
                "group": group,
                "content": f"to {group} as dave",
                "from": 604,
                "id": f"k{group}",
            }
            first = await call(http, gws[0], "publish", body)
            again = await call(http, gws[1], "publish", body)
            assert again == first
            await dave.wait_contents([f"to {group} as dave"])
    await members[1].wait_contents([f"to {large} as dave"])
    got = [f for f in dave.messages() if f["from"] == 604]
    assert [(f["to"], f["content"]) for f in got] == [
        (small, f"to {small} as dave"),
        (large, f"to {large} as dave"),
    ]
    assert all(not f["seq"].startswith("g") for f in got)  # dave's inbox copies
    assert [f["seq"] for f in group_messages(members[1])] == [f"g{large}:1"]
    later = await open_client(gws[0], 604)
    assert [f["content"] for f in later.messages()] == [
        f"to {small} as dave",
        f"to {large} as dave",
    ]
    assert len(dave.messages()) == 2
