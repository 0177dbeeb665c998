"""The gateway with several hubs: the ``--hub`` list and its flags, and ``/healthz`` per hub
against real in-process hubs."""

from __future__ import annotations

import json

import pytest

from im_gateway.__main__ import build_parser, parse_config
from im_gateway.config import MAX_HUBS, GatewayConfig, parse_hubs
from im_gateway.errors import ConfigError
from im_gateway.gateway import Gateway
from im_gateway.store import MemoryStore
from tests.end_to_end.harness import SECRET, http_get
from tests.helpers import wait_until
from transmit_hub import HubServer
from transmit_hub.config import HubConfig

CONFIG_SECRET = "multihub-test-secret-multihub-test-secret"


def test_hub_takes_a_comma_list_each_once() -> None:
    """--hub is HOST:PORT[,HOST:PORT...]: each address is checked, a repeat or too many
    hubs is refused with a line naming the flag."""
    assert parse_hubs("127.0.0.1:1") == ("127.0.0.1:1",)
    assert parse_hubs("a:1, b:2,[::1]:3") == ("a:1", "b:2", "[::1]:3")
    cfg = parse_config(["--jwt-secret", CONFIG_SECRET, "--hub", "h1:1,h2:2"], environ={})
    assert cfg.hubs == ("h1:1", "h2:2")
    for bad, match in (("h1:1,h1:1", "twice"), ("h1:1,", "--hub"), ("h1:x", "--hub")):
        with pytest.raises(ConfigError, match=match):
            GatewayConfig(jwt_secret=CONFIG_SECRET, hub=bad)
    many = ",".join(f"h:{i}" for i in range(MAX_HUBS + 1))
    with pytest.raises(ConfigError, match="at most"):
        GatewayConfig(jwt_secret=CONFIG_SECRET, hub=many)


def test_resend_window_must_cover_keepalive_detection() -> None:
    """--hub-resend-window shorter than 2 x --hub-keepalive is refused; the defaults and
    the environment work."""
    cfg = GatewayConfig(jwt_secret=CONFIG_SECRET)
    assert (cfg.hub_keepalive, cfg.hub_resend_window, cfg.hub_resend_max) == (2.0, 6.0, 50_000)
    with pytest.raises(ConfigError, match="--hub-resend-window"):
        GatewayConfig(jwt_secret=CONFIG_SECRET, hub_keepalive=3.0, hub_resend_window=5.0)
    with pytest.raises(ConfigError, match="--hub-keepalive"):
        GatewayConfig(jwt_secret=CONFIG_SECRET, hub_keepalive=0.0)
    with pytest.raises(ConfigError, match="--hub-resend-max"):
        GatewayConfig(jwt_secret=CONFIG_SECRET, hub_resend_max=0)
    env = {"IM_GATEWAY_JWT_SECRET": CONFIG_SECRET, "IM_GATEWAY_HUB_KEEPALIVE": "0.5"}
    assert parse_config(["--hub-resend-window", "1"], environ=env).hub_keepalive == 0.5
    text = build_parser().format_help()
    for flag in ("--hub-keepalive", "--hub-resend-window", "--hub-resend-max"):
        assert flag in text


async def test_healthz_reports_each_hub_and_stays_up_while_one_is_linked() -> None:
    """/healthz is 200 with every hub "up", still 200 with one hub stopped (that one
    "down"), and 503 naming the hubs once none is linked."""
    servers = [
        HubServer(HubConfig(listen="127.0.0.1:0", hub_id=f"hub-{i}", grace=0.1)) for i in range(2)
    ]
    for server in servers:
        await server.start()
    addresses = [s.address for s in servers]
    try:
        async with Gateway(
            GatewayConfig(
                listen="127.0.0.1:0",
                gateway_id="gw-health",
                jwt_secret=SECRET,
                hub=",".join(addresses),
            ),
            store=MemoryStore(),
        ) as gateway:

            async def report() -> tuple[int, dict[str, object]]:
                status, body, _ = await http_get(gateway.port, "/healthz")
                return status, json.loads(body)

            async def hubs_are(want: dict[str, str]) -> bool:
                return (await report())[1]["hubs"] == want

            both = dict.fromkeys(addresses, "up")
            await wait_until(lambda: hubs_are(both), what="both hubs up")
            status, body = await report()
            assert (status, body["status"], body["hub"]) == (200, "ok", "linked")
            await servers[0].stop(0)
            one = {addresses[0]: "down", addresses[1]: "up"}
            await wait_until(lambda: hubs_are(one), what="hub 0 down")
            assert (await report())[0] == 200
            await servers[1].stop(0)
            await wait_until(lambda: hubs_are(dict.fromkeys(addresses, "down")), what="none up")
            status, body = await report()
            assert status == 503
            assert "not linked to any hub" in str(body["reason"])
            assert all(a in str(body["reason"]) for a in addresses)
    finally:
        for server in servers:
            await server.stop(0)
