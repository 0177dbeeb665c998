"""The server API on real gateways, a real hub and a real Redis, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from im_gateway import api as api_module
from im_gateway.api import OPENAPI
from im_gateway.api_requests import METHODS
from im_gateway.gateway import Gateway
from im_gateway.throttle import Throttled
from tests.conftest import RedisServer
from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import deliveries_to, hub_stats
from tests.helpers import wait_until
from tests.metrics_scrape import scrape, value
from tests.proxy import FreezableProxy
from transmit_hub.server import HubServer

KEY = "api-key-for-the-tests-0123456789"
ALICE, BOB, CAROL, DAVE = 11, 12, 13, 14


class Api:
    """A backend calling one gateway's server API."""

    def __init__(self, session: aiohttp.ClientSession, gateway: Gateway) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{gateway.api_port}"

    async def raw(
        self, path: str, body: object = None, *, key: str | None = KEY, method: str = "POST"
    ) -> tuple[int, dict[str, Any]]:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.request(
            method, self.base + path, data=data, headers=headers
        ) as resp:
            return resp.status, await resp.json()

    async def call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = await self.raw(f"/api/{method}", body)
        assert status == 200, (method, body, status, answer)
        return answer


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def api_gateways(start_gateway: GatewayFactory) -> list[Gateway]:
    """Three gateways with the server API on, the default group policy (server)."""
    return [
        await start_gateway(
            f"gw-api-{i}", api_listen="127.0.0.1:0", api_key=KEY, group_join="server"
        )
        for i in (1, 2, 3)
    ]


async def test_publish_reaches_an_online_user_on_another_gateway_live(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """publish on gw-1 to bob on gw-2: stored, answered, then pushed through the hub."""
    gw1, gw2, _ = api_gateways
    bob = await open_client(gw2, BOB)
    answer = await Api(http, gw1).call("publish", {"to": BOB, "content": "from the backend"})
    assert set(answer) == {"msgId", "time"}
    got = await bob.wait_for(lambda f: f.get("content") == "from the backend")
    assert got["type"] == 1
    assert got["from"] == 0
    assert got["id"] == answer["msgId"]
    assert got["time"] == answer["time"]


async def test_publish_to_an_offline_user_is_replayed_on_connect(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """An offline recipient finds the published message in its replay."""
    gw1, gw2, _ = api_gateways
    await Api(http, gw1).call("publish", {"to": str(CAROL), "content": "while you were away"})
    carol = await open_client(gw2, CAROL)
    assert carol.contents() == ["while you were away"]


async def test_a_group_managed_through_the_api_reaches_members_on_three_gateways_once(
    hub: HubServer,
    api_gateways: list[Gateway],
    open_client: ClientFactory,
    http: aiohttp.ClientSession,
) -> None:
    """groups/add is the only way in (the clients may not join); a group publish reaches
    each member once, and each other gateway gets one delivery from the hub."""
    gws = api_gateways
    api = Api(http, gws[0])
    assert await api.call("groups/add", {"group": 70, "users": [ALICE, BOB, CAROL]}) == {"added": 3}
    assert await api.call("groups/add", {"group": 70, "users": [ALICE]}) == {"added": 0}
    assert await api.call("groups/members", {"group": "70"}) == {
        "users": [str(ALICE), str(BOB), str(CAROL)]
    }
    clients = [
        await open_client(gw, user) for gw, user in zip(gws, (ALICE, BOB, CAROL), strict=True)
    ]
    dave = await open_client(gws[1], DAVE)
    refused = await dave.say(70, "let me in", group=True)
    assert (refused["type"], refused["code"]) == (99, "not_member")
    before = await hub_stats(hub.address)
    answer = await api.call("publish", {"group": 70, "content": "to the group"})
    for client in clients:
        got = await client.wait_for(lambda f: f.get("content") == "to the group")
        assert (got["type"], got["to"], got["id"]) == (2, 70, answer["msgId"])

    async def delivered() -> bool:
        after = await hub_stats(hub.address)
        return all(
            deliveries_to(after, gw.gateway_id) - deliveries_to(before, gw.gateway_id) == 1
            for gw in gws[1:]
        )

    await wait_until(delivered, what="one delivery to each other gateway")
    assert [c.contents().count("to the group") for c in clients] == [1, 1, 1]
    assert "to the group" not in dave.contents()
    assert await api.call("groups/remove", {"group": 70, "users": [BOB, DAVE]}) == {"removed": 1}
    assert await api.call("groups/members", {"group": 70}) == {"users": [str(ALICE), str(CAROL)]}


async def test_the_same_id_twice_is_one_message_with_one_msg_id(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """An idempotency key is deduplicated: the second publish answers the first msgId."""
    gw1, gw2, _ = api_gateways
    api = Api(http, gw1)
    body = {"to": BOB, "content": "once", "id": "order-1", "from": ALICE}
    first = await api.call("publish", body)
    again = await api.call("publish", body)
    assert again == first
    bob = await open_client(gw2, BOB)
    assert bob.contents() == ["once"]


async def test_publish_ids_and_the_users_own_client_ids_never_collide(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """A publish from alice with id "c-1" and alice's own frame with client id "c-1" (in
    either order) are two messages with two msgIds, both delivered; each space still
    deduplicates its own repeats."""
    gw1, gw2, _ = api_gateways
    api = Api(http, gw1)
    alice = await open_client(gw1, ALICE)
    bob = await open_client(gw2, BOB)
    by_api = {"to": BOB, "from": ALICE, "content": "backend first", "id": "c-1"}
    published = await api.call("publish", by_api)
    own = await alice.say(BOB, "alice second", cid="c-1")
    assert own["type"] == 10, own
    assert own["msgId"] != published["msgId"]
    own_first = await alice.say(BOB, "alice first", cid="c-2")
    assert own_first["type"] == 10, own_first
    published_second = await api.call(
        "publish", {"to": BOB, "from": ALICE, "content": "backend second", "id": "c-2"}
    )
    assert published_second["msgId"] != own_first["msgId"]
    assert await api.call("publish", by_api) == published  # the API's repeat: deduplicated
    alice.frames.clear()
    again = await alice.say(BOB, "alice second", cid="c-1")  # the user's repeat: too
    assert again["msgId"] == own["msgId"]
    expected = ["backend first", "alice second", "alice first", "backend second"]
    await bob.wait_contents(expected)
    await wait_until(lambda: len(bob.contents()) >= 4)
    assert sorted(bob.contents()) == sorted(expected)


async def test_a_message_from_a_user_reaches_that_users_devices_too(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """With from = alice, alice's connected devices get a copy, as with her own send."""
    gw1, gw2, gw3 = api_gateways
    phone = await open_client(gw2, ALICE)
    laptop = await open_client(gw3, ALICE)
    bob = await open_client(gw2, BOB)
    await Api(http, gw1).call("publish", {"to": BOB, "from": ALICE, "content": "sent for alice"})
    for client in (phone, laptop, bob):
        got = await client.wait_for(lambda f: f.get("content") == "sent for alice")
        assert got["from"] == ALICE


async def test_presence_before_and_after_a_connect(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """presence lists every user asked about: [] offline, the gateway ids online."""
    gw1, gw2, _ = api_gateways
    api = Api(http, gw1)
    assert await api.call("presence", {"users": [BOB, DAVE]}) == {
        "presence": {str(BOB): [], str(DAVE): []}
    }
    await open_client(gw2, BOB)
    assert await api.call("presence", {"users": [BOB, DAVE]}) == {
        "presence": {str(BOB): [gw2.gateway_id], str(DAVE): []}
    }


async def test_disconnect_closes_the_users_sockets_on_every_gateway_within_2s(
    api_gateways: list[Gateway], open_client: ClientFactory, http: aiohttp.ClientSession
) -> None:
    """disconnect reaches the user's sockets on two other gateways (through the hub): 4001."""
    gw1, gw2, gw3 = api_gateways
    on2 = await open_client(gw2, BOB)
    on3 = await open_client(gw3, BOB)
    here = await open_client(gw1, BOB)
    other = await open_client(gw2, CAROL)
    assert await Api(http, gw1).call("disconnect", {"user": BOB}) == {}
    answered = time.monotonic()
    for client in (on2, on3, here):
        await asyncio.wait_for(asyncio.shield(client.closed), 2.0)
        assert client.ws.close_code == 4001
    assert time.monotonic() - answered < 2.0
    assert not other.closed.done()


async def test_history_after_a_position(
    api_gateways: list[Gateway], http: aiohttp.ClientSession
) -> None:
    """history gives the replay frames after `after`, oldest first, at most `limit`."""
    api = Api(http, api_gateways[0])
    for i in range(5):
        await api.call("publish", {"to": DAVE, "content": f"h{i}"})
    everything = (await api.call("history", {"user": DAVE}))["messages"]
    assert [m["content"] for m in everything] == [f"h{i}" for i in range(5)]
    assert [m["seq"] for m in everything] == ["1", "2", "3", "4", "5"]
    page = await api.call("history", {"user": DAVE, "after": "2", "limit": 2})
    assert [m["content"] for m in page["messages"]] == ["h2", "h3"]
    assert set(page["messages"][0]) == {
        "type",
        "id",
        "from",
        "to",
        "contentType",
        "time",
        "content",
        "seq",
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/nope", {}, 404, "not_found"),
        ("/elsewhere", {}, 404, "not_found"),
        ("/api/publish", b"{not json", 400, "bad_request"),
        ("/api/publish", [1], 400, "bad_request"),
        ("/api/publish", {"content": "x"}, 400, "bad_request"),
        ("/api/publish", {"to": 1, "group": 2, "content": "x"}, 400, "bad_request"),
        ("/api/publish", {"to": -1, "content": "x"}, 400, "bad_request"),
        ("/api/publish", {"to": 2**64, "content": "x"}, 400, "bad_request"),
        ("/api/publish", {"to": "12a", "content": "x"}, 400, "bad_request"),
        ("/api/publish", {"to": 1, "content": 5}, 400, "bad_request"),
        ("/api/publish", {"to": 1, "content": "x", "contentType": "0"}, 400, "bad_request"),
        ("/api/publish", {"to": 1, "content": "x", "id": 7}, 400, "bad_request"),
        ("/api/publish", {"to": 1, "content": "x", "extra": 1}, 400, "bad_request"),
        ("/api/publish", {"to": 1, "content": "x" * 20000}, 400, "too_large"),
        ("/api/groups/add", {"group": 1}, 400, "bad_request"),
        ("/api/groups/add", {"group": 1, "users": "1"}, 400, "bad_request"),
        ("/api/groups/add", {"group": 1, "users": list(range(10_001))}, 400, "bad_request"),
        ("/api/groups/members", {"group": 1.5}, 400, "bad_request"),
        ("/api/presence", {"users": [True]}, 400, "bad_request"),
        ("/api/disconnect", {}, 400, "bad_request"),
        ("/api/history", {"user": 1, "after": "1-2"}, 400, "bad_request"),
        ("/api/history", {"user": 1, "limit": 1001}, 400, "bad_request"),
        ("/api/history", {"user": 1, "after": 5}, 400, "bad_request"),
    ],
)
async def test_bad_calls_get_a_clear_error(
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    path: str,
    body: object,
    status: int,
    code: str,
) -> None:
    """Each bad call: its status and an error object with the code and a message."""
    gw = await start_gateway("gw-api-bad", api_listen="127.0.0.1:0", api_key=KEY)
    got_status, answer = await Api(http, gw).raw(path, body)
    assert got_status == status, answer
    assert answer["error"]["code"] == code
    assert answer["error"]["message"]


@pytest.mark.parametrize("key", [None, "wrong", KEY + "x", "Basic " + KEY])
@pytest.mark.parametrize("path", ["/api/publish", "/api/nope", "/", "/api/openapi.json"])
async def test_without_the_right_key_every_path_is_401(
    start_gateway: GatewayFactory, http: aiohttp.ClientSession, key: str | None, path: str
) -> None:
    """No key or a wrong one: 401 unauthorized on every path, before anything else."""
    gw = await start_gateway("gw-api-key", api_listen="127.0.0.1:0", api_key=KEY)
    status, answer = await Api(http, gw).raw(path, {"to": 1, "content": "x"}, key=key)
    assert status == 401
    assert answer["error"]["code"] == "unauthorized"


async def test_the_openapi_document_lists_every_method_and_its_examples_answer(
    api_gateways: list[Gateway], http: aiohttp.ClientSession
) -> None:
    """Every pinned method is in im_gateway/openapi.json (also served at
    /api/openapi.json), and each one's request example answers 200 with the keys its
    schema requires."""
    doc = json.loads(OPENAPI.read_text())
    api = Api(http, api_gateways[0])
    status, served = await api.raw("/api/openapi.json", method="GET")
    assert status == 200
    assert served == doc
    assert sorted(doc["paths"]) == sorted(f"/api/{m}" for m in METHODS)
    for path, item in doc["paths"].items():
        content = item["post"]["requestBody"]["content"]["application/json"]
        status, answer = await api.raw(path, content["example"])
        assert status == 200, (path, answer)
        ok = item["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert set(ok.get("required", ())) <= set(answer), (path, answer)


async def behind(
    proxy: FreezableProxy, start_gateway: GatewayFactory, name: str, **options: Any
) -> Gateway:
    """A gateway with the server API on, reaching the test Redis through ``proxy``."""
    return await start_gateway(
        name,
        api_listen="127.0.0.1:0",
        api_key=KEY,
        redis_url=f"redis://{proxy.address}/0",
        **options,
    )


async def test_a_silent_redis_answers_503_call_again_with_one_log_line(
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis goes silent behind a frozen proxy: each store call of the API answers 503
    ``internal`` (call again) within --redis-timeout, counted under 503, with one warning
    line for all of them and no traceback; thawed, the same calls answer 200."""
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw = await behind(proxy, start_gateway, "gw-api-silent", redis_timeout=0.5)
        api = Api(http, gw)
        calls: list[tuple[str, dict[str, Any]]] = [
            ("presence", {"users": [ALICE]}),
            ("groups/members", {"group": 5}),
            ("history", {"user": ALICE}),
            ("disconnect", {"user": ALICE}),
        ]
        fresh = Throttled(api_module.logger, api_module._call_failed._message)
        monkeypatch.setattr(api_module, "_call_failed", fresh)  # not throttled by a test before
        proxy.freeze()
        caplog.clear()
        for method, body in calls:
            started = time.monotonic()
            status, answer = await api.raw(f"/api/{method}", body)
            assert status == 503, (method, answer)
            assert answer["error"] == {
                "code": "internal",
                "message": "storage unavailable; call again",
            }
            assert time.monotonic() - started < 3
        failed = [r for r in caplog.records if "calls failed in the store" in r.getMessage()]
        assert len(failed) == 1, [r.getMessage() for r in caplog.records]
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        _, samples = await scrape(gw.port)
        for method, _ in calls:
            assert value(samples, "im_gateway_api_requests_total", method=method, status="503") == 1
        proxy.thaw()

        async def answers() -> bool:
            return (await api.raw("/api/presence", {"users": [ALICE]}))[0] == 200

        await wait_until(answers, timeout=10, what="the API answering once Redis is back")
        for method, body in calls:
            assert (await api.raw(f"/api/{method}", body))[0] == 200, method


async def test_a_publish_waiting_for_room_in_a_stalled_pipeline_is_answered_in_time(
    start_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    """Redis goes silent with the pipeline's queue full (``--relay-queue 1``: one batch in
    the store, one message queued): a third publish, waiting for room, is answered 503
    "send again" within ``--api-publish-timeout`` (1 s here), not after the stalled batches
    time out (``--redis-timeout`` twice each); thawed, its resend with the same id is
    stored once."""
    async with FreezableProxy("127.0.0.1", redis_server.port) as proxy:
        gw = await behind(
            proxy,
            start_gateway,
            "gw-api-full",
            relay_queue=1,
            redis_timeout=5,
            api_publish_timeout=1.0,
        )
        api = Api(http, gw)
        proxy.freeze()
        body = {"to": ALICE, "content": "x"}
        in_store = asyncio.create_task(api.raw("/api/publish", {**body, "id": "p1"}))
        await wait_until(lambda: gw.pipeline._working, what="the first batch in the store")
        queued = asyncio.create_task(api.raw("/api/publish", {**body, "id": "p2"}))
        await wait_until(lambda: gw.pipeline.queued == 1, what="the queue full")
        started = time.monotonic()
        status, answer = await api.raw("/api/publish", {**body, "id": "p3"})
        assert (status, answer["error"]["code"]) == (503, "internal"), answer
        assert time.monotonic() - started < 3
        for task in (in_store, queued):
            assert (await task)[0] == 503
        proxy.thaw()

        async def stored() -> bool:
            return (await api.raw("/api/publish", {**body, "id": "p3"}))[0] == 200

        await wait_until(stored, timeout=20, what="the resend stored once Redis is back")
        first = await api.call("publish", {**body, "id": "p3"})
        history = await api.call("history", {"user": ALICE})
        assert [m["id"] for m in history["messages"]].count(first["msgId"]) == 1
