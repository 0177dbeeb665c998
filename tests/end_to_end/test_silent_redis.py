"""The gateway's paths when its Redis fails or goes silent (a frozen proxy in front of
the test Redis, ``--redis-timeout 0.5``; or a store call made to fail): each failure is
answered or retried, logged as one counted line, and what it held back reaches the
clients once Redis answers again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

import aiohttp
import pytest

from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from im_gateway.store import Joined, RedisStore
from tests.conftest import RedisServer
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import SECRET, Client, change_group
from tests.helpers import wait_until
from tests.proxy import FreezableProxy
from transmit_hub.server import HubServer
from transmit_hub.types import GatewayId, UserId

ALICE, BOB, CAROL = 5101, 5102, 5103
GROUP = 91


async def change(client: Client, kind: int, group: int = GROUP) -> None:
    """Join (12) or leave (13) ``group``, answered type 10."""
    await change_group(client, kind, group)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


async def test_a_large_group_post_that_came_while_redis_was_silent_is_shown_once_it_answers(
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A large group's post reaches gw-b through the hub while gw-b's Redis is silent: the
    followers' membership check fails (one counted line, no traceback); once Redis
    answers, the member on gw-b gets the post, read from the group's stream, although no
    later post comes to show the hole."""
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw_a = await start_gateway("gw-a", large_group=1)
        gw_b = await start_gateway(
            "gw-b", large_group=1, redis_url=f"redis://{proxy.address}/0", redis_timeout=0.5
        )
        alice = await open_client(gw_a, ALICE)
        bob = await open_client(gw_b, BOB)
        await change(alice, 12)
        await change(bob, 12)  # two members: the group is stored once from now
        assert (await alice.say(GROUP, "before", group=True))["type"] == 10
        await bob.wait_contents(["before"])
        proxy.freeze()
        caplog.clear()
        assert (await alice.say(GROUP, "during", group=True))["type"] == 10  # gw-a's Redis
        await wait_until(
            lambda: bool(logged(caplog, "checking followers' group membership failed")),
            what="gw-b's membership check to fail",
        )
        proxy.thaw()
        await bob.wait_contents(["during"], timeout=5)
        assert bob.contents() == ["before", "during"]
        assert len(logged(caplog, "checking followers' group membership failed")) == 1
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


class FlakyStore(RedisStore):
    """The real Redis store, whose next ``fail_watch`` marks of followed groups fail
    (Redis refusing, or a failover of the group's node), whose next ``lose_joins`` joins
    (``lose_adds`` bulk adds) are stored but answered with a timeout (the reply late past
    --redis-timeout), and whose next ``fail_form_after_join`` look-ups of a group's form
    after a join fail (Redis gone right after the join)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.fail_watch = 0
        self.lose_joins = 0
        self.lose_adds = 0
        self.fail_form_after_join = 0
        self._joined = False

    async def is_large(self, group: int) -> bool:
        if self._joined and self.fail_form_after_join:
            self.fail_form_after_join -= 1
            raise ConnectionError("Error 111 connecting to redis: Connection refused")
        return await super().is_large(group)

    async def join(self, group: int, user: UserId) -> bool:
        self._joined = True
        changed = await super().join(group, user)
        if self.lose_joins:
            self.lose_joins -= 1
            raise TimeoutError("Timeout reading from redis")
        return changed

    async def add_members(self, group: int, users: Sequence[UserId]) -> list[Joined]:
        joined = await super().add_members(group, users)
        if self.lose_adds:
            self.lose_adds -= 1
            raise TimeoutError("Timeout reading from redis")
        return joined

    async def watch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        if self.fail_watch:
            self.fail_watch -= 1
            raise ConnectionError("Error 111 connecting to redis: Connection refused")
        await super().watch(gateway, groups)


async def test_a_connect_replay_whose_group_mark_failed_marks_it_on_its_retry(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """Bob connects to gw-b, a member of a large group, and the store fails the mark that
    names gw-b among the group's followers: the replay is answered ``internal`` and
    tried again, and that retry marks the group, so alice's next post on gw-a reaches
    bob live (before, gw-b was left out of the group's followers until the next refresh
    of the marks, --presence-ttl / 3 later, and the post until a later one showed the
    hole)."""
    gw_a = await start_gateway("gw-a", large_group=1)
    alice = await open_client(gw_a, ALICE)
    bob_on_a = await open_client(gw_a, BOB)
    await change(alice, 12)
    await change(bob_on_a, 12)  # two members: the group is stored once from now
    await bob_on_a.close()
    async with flaky_gateway(hub, redis_url) as (gw_b, store):
        store.fail_watch = 1
        bob = await open_client(gw_b, BOB, replayed=False)
        refused = await bob.wait_for(lambda f: f["type"] == 99, what="the failed replay")
        assert refused["code"] == "internal", refused
        await bob.wait_for(lambda f: f["type"] == 14, what="the retried replay's end marker")
        assert store.fail_watch == 0
        assert (await alice.say(GROUP, "after", group=True))["type"] == 10
        await bob.wait_contents(["after"], timeout=5)


async def join_refused_then_resent(bob: Client, store: FlakyStore, fault: str) -> None:
    """Bob's join of GROUP meets ``fault`` once (a FlakyStore counter): answered
    ``internal``; the client resends it, with its id, and it is answered type 10."""
    setattr(store, fault, 1)
    await bob.send({"type": 12, "id": "join-1", "to": GROUP})
    refused = await bob.wait_for(lambda f: f.get("id") == "join-1", what="the first join")
    assert (refused.get("type"), refused.get("code")) == (99, "internal"), refused
    bob.frames.clear()
    await bob.send({"type": 12, "id": "join-1", "to": GROUP})  # the client resends
    answer = await bob.wait_for(lambda f: f.get("id") == "join-1", what="the join")
    assert answer["type"] == 10, answer


@pytest.mark.parametrize("fault", ["lose_joins", "fail_form_after_join"])
async def test_a_join_answered_internal_is_resent_and_then_the_connection_follows(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    fault: str,
) -> None:
    """Bob joins a large group from gw-b and the join is answered ``internal``: either the
    store kept it but its reply came too late (``lose_joins``), or the store failed right
    after it, as the gateway asked the group's form to make bob's connections follow it
    (``fail_form_after_join``). Bob sends the join again, answered type 10: his connection
    follows the group, so alice's post reaches him live and a replay of the group's stream
    is his to ask for. Before: the resend changed nothing in the store, so nothing
    followed; and the second fault was answered type 10 and only counted after. Either
    way bob got no live posts (``not_member`` for the replay) until he reconnected."""
    gw_a = await start_gateway("gw-a", large_group=1)
    alice = await open_client(gw_a, ALICE)
    carol = await open_client(gw_a, CAROL)
    await change(alice, 12)
    await change(carol, 12)  # two members: the group is stored once from now
    async with flaky_gateway(hub, redis_url) as (gw_b, store):
        bob = await open_client(gw_b, BOB)
        await join_refused_then_resent(bob, store, fault)
        await wait_until(lambda: gw_b.fanout.following.followers(GROUP) != [], what="bob to follow")
        assert (await alice.say(GROUP, "after the join", group=True))["type"] == 10
        await bob.wait_contents(["after the join"], timeout=5)
        await bob.send({"type": 14, "seq": f"g{GROUP}:0"})
        end = await bob.wait_for(lambda f: f["type"] in (14, 99), what="the group's replay")
        assert end == {"type": 14, "seq": f"g{GROUP}:1"}, end


@pytest.mark.parametrize("fault", ["lose_joins", "fail_form_after_join"])
async def test_a_join_that_made_the_group_large_and_was_resent_makes_every_member_follow(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    fault: str,
) -> None:
    """Alice on gw-a is the group's one member; bob's join from gw-b makes it large (two
    members), and is answered ``internal`` (its reply lost, or the store failing right
    after). Bob resends it: answered type 10, and alice's connection follows the group's
    stream too, so bob's post reaches her live. Before: the resend found the group large
    already and made only bob follow; alice got no live post of the group until she
    reconnected."""
    gw_a = await start_gateway("gw-a", large_group=1)
    alice = await open_client(gw_a, ALICE)
    await change(alice, 12)  # one member: stored in each inbox
    async with flaky_gateway(hub, redis_url) as (gw_b, store):
        bob = await open_client(gw_b, BOB)
        await join_refused_then_resent(bob, store, fault)
        assert await store.is_large(GROUP)
        await wait_until(lambda: gw_a.fanout.following.followers(GROUP) != [], what="alice")
        assert not await store.to_regroup(GROUP)  # done: the next join regroups the joiner
        assert (await bob.say(GROUP, "after the join", group=True))["type"] == 10
        await alice.wait_contents(["after the join"], timeout=5)


async def test_an_api_add_called_again_after_its_reply_was_lost_makes_the_connection_follow(
    hub: HubServer,
    redis_url: str,
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
) -> None:
    """The backend adds online bob to a large group through gw-b's server API; the store
    keeps the add but its reply comes too late (503, call again); the call again answers
    ``added: 0`` (already a member), and bob's connection follows the group, so alice's
    post reaches him live (before, the second call changed nothing, so nothing followed
    until bob reconnected)."""
    gw_a = await start_gateway("gw-a", large_group=1)
    alice = await open_client(gw_a, ALICE)
    carol = await open_client(gw_a, CAROL)
    await change(alice, 12)
    await change(carol, 12)  # two members: the group is stored once from now
    key = "api-key-for-the-silent-redis-tests"
    async with (
        flaky_gateway(hub, redis_url, api_listen="127.0.0.1:0", api_key=key) as (gw_b, store),
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http,
    ):
        bob = await open_client(gw_b, BOB)
        url = f"http://127.0.0.1:{gw_b.api_port}/api/groups/add"
        store.lose_adds = 1
        for status, answer in ((503, "internal"), (200, {"added": 0})):
            async with http.post(url, json={"group": GROUP, "users": [BOB]}) as resp:
                body = await resp.json()
                assert resp.status == status, body
                assert body.get("error", {}).get("code", body) == answer, body
        await wait_until(lambda: gw_b.fanout.following.followers(GROUP) != [], what="bob to follow")
        assert (await alice.say(GROUP, "after the add", group=True))["type"] == 10
        await bob.wait_contents(["after the add"], timeout=5)


@contextlib.asynccontextmanager
async def flaky_gateway(
    hub: HubServer, redis_url: str, **options: Any
) -> AsyncIterator[tuple[Gateway, FlakyStore]]:
    """gw-b (``--large-group 1``, and ``options``) on a :class:`FlakyStore`, linked to
    ``hub``."""
    store = FlakyStore(redis_url, large_group=1)
    gw_b = Gateway(
        GatewayConfig(
            listen="127.0.0.1:0",
            gateway_id="gw-b",
            jwt_secret=SECRET,
            hub=hub.address,
            redis_url=redis_url,
            large_group=1,
            group_join="open",
            **options,
        ),
        store=store,
    )
    try:
        await gw_b.start()
        await gw_b.wait_linked(10.0)
        yield gw_b, store
    finally:
        await gw_b.close()
        await store.close()


async def test_large_group_posts_beyond_the_held_bound_reach_the_follower_with_no_later_post(
    start_gateway: GatewayFactory,
    open_client: ClientFactory,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gw-b's membership check of a large group's followers is slow (its Redis frozen for a
    moment, well under --redis-timeout): of the posts that come meanwhile, one waits
    (``--large-group-held 1``) and the next is dropped from the live path, with a counted
    line. Once the checks are done the member on gw-b has every post, the dropped one read
    from the group's stream, although no later post comes to show the hole."""
    caplog.set_level(logging.INFO, logger="im_gateway.screening")
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw_a = await start_gateway("gw-a", large_group=1)
        gw_b = await start_gateway(
            "gw-b",
            large_group=1,
            large_group_held=1,
            redis_url=f"redis://{proxy.address}/0",
            redis_timeout=10,
        )
        alice = await open_client(gw_a, ALICE)
        bob = await open_client(gw_b, BOB)
        await change(alice, 12)
        await change(bob, 12)
        assert (await alice.say(GROUP, "before", group=True))["type"] == 10
        await bob.wait_contents(["before"])
        proxy.freeze()
        caplog.clear()
        for text in ("checked", "held", "dropped"):  # gw-a's Redis is not frozen
            assert (await alice.say(GROUP, text, group=True))["type"] == 10
        await wait_until(
            lambda: bool(logged(caplog, "beyond --large-group-held")),
            what="gw-b to drop the third post from the live path",
        )
        proxy.thaw()
        await bob.wait_contents(["before", "checked", "held", "dropped"], timeout=5)
        assert bob.contents() == ["before", "checked", "held", "dropped"]


async def test_a_join_queued_behind_slots_held_by_a_silent_redis_is_answered_within_store_wait(
    start_gateway: GatewayFactory, open_client: ClientFactory, redis_server: RedisServer
) -> None:
    """Redis goes silent while a connect replay holds the one store slot
    (``--store-concurrency 1``) for ``--redis-timeout`` (4 s here): a join queued behind
    it is answered ``internal`` within ``--store-wait`` (0.3 s), not once the queue ahead
    timed out (then its own call's timeout: 8 s); and it goes through once Redis answers."""
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw = await start_gateway(
            "gw-slots",
            redis_url=f"redis://{proxy.address}/0",
            redis_timeout=4.0,
            store_concurrency=1,
            store_wait=0.3,
        )
        bob = await open_client(gw, BOB)
        slots = gw.slots
        assert slots is not None
        proxy.freeze()
        await open_client(gw, ALICE, replayed=False)  # its connect replay takes the slot
        await wait_until(lambda: slots.held == 1, what="the connect replay to hold the slot")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await bob.send({"type": 12, "id": "j1", "to": GROUP})
        answer = await bob.wait_for(lambda f: f.get("id") == "j1", timeout=3.0, what="j1")
        assert (answer["type"], answer["code"]) == (99, "internal"), answer
        assert loop.time() - started < 2.0
        assert slots.busy == 1
        proxy.thaw()
        await wait_until(lambda: slots.held == 0, timeout=10.0, what="the slot back")
        await change(bob, 12)  # sent again: stored
