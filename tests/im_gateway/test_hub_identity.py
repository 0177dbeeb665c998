"""The gateway's side of the hub's trust boundary: its id, TLS to the hub, duplicate ids."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools.certs import TestCA
from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from tests.end_to_end.harness import SECRET, http_get
from tests.helpers import wait_until
from transmit_hub import HubServer
from transmit_hub.config import HubConfig
from transmit_hub.tls import ServerTls


@pytest.mark.parametrize("gateway_id", ["gw 1", "gw\nforged", "x" * 129, "gé"])
def test_cli_refuses_a_bad_gateway_id_at_start(gateway_id: str) -> None:
    """`python -m im_gateway --gateway-id BAD` exits 2 with one line naming the flag."""
    result = subprocess.run(
        [sys.executable, "-m", "im_gateway", "--gateway-id", gateway_id, "--jwt-secret", SECRET],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--gateway-id" in lines[0]


def test_cli_refuses_half_a_client_certificate(tmp_path: Path) -> None:
    """--hub-cert without --hub-key (or an unreadable file) exits 2 with one clear line."""
    ca = TestCA(tmp_path)
    for args, needle in (
        (["--hub-cert", str(ca.cert)], "--hub-cert and --hub-key go together"),
        (["--hub-ca", str(tmp_path / "missing.pem")], "--hub-ca"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "im_gateway", "--jwt-secret", SECRET, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


async def test_gateway_links_to_a_mutual_tls_hub_with_its_certificate(
    tmp_path: Path, redis_url: str
) -> None:
    """A gateway with --hub-ca/--hub-cert/--hub-key attaches to a hub with --tls-client-ca
    under the id its certificate names, and /healthz says 200."""
    ca = TestCA(tmp_path)
    hub_cert = ca.issue("hub", dns=("localhost",), ips=("127.0.0.1",))
    gw_cert = ca.issue("gw-tls", dns=("gw-tls",))
    tls = ServerTls.from_files(str(hub_cert.cert), str(hub_cert.key), str(ca.cert))
    async with (
        HubServer(HubConfig(listen="127.0.0.1:0", grace=0.1), tls=tls) as hub,
        Gateway(
            GatewayConfig(
                listen="127.0.0.1:0",
                gateway_id="gw-tls",
                hub=hub.address,
                hub_ca=str(ca.cert),
                hub_cert=str(gw_cert.cert),
                hub_key=str(gw_cert.key),
                redis_url=redis_url,
                jwt_secret=SECRET,
            )
        ) as gateway,
    ):
        await gateway.wait_linked(30)
        assert [g.gateway_id for g in hub.registry.gateways()] == ["gw-tls"]
        status, body, _ = await http_get(gateway.port, "/healthz")
        assert status == 200, body


async def test_a_gateway_whose_certificate_does_not_name_its_id_says_why_in_healthz(
    tmp_path: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway whose client certificate names another id is refused by the mutual-TLS hub
    (PERMISSION_DENIED): /healthz says 503 with the hub's reason, and the gateway logs it in
    one ERROR line however often it retries."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="transmit_hub.link")
    ca = TestCA(tmp_path)
    hub_cert = ca.issue("hub", dns=("localhost",), ips=("127.0.0.1",))
    other_cert = ca.issue("gw-other", dns=("gw-other",))
    tls = ServerTls.from_files(str(hub_cert.cert), str(hub_cert.key), str(ca.cert))
    async with (
        HubServer(HubConfig(listen="127.0.0.1:0", grace=0.1), tls=tls) as hub,
        Gateway(
            GatewayConfig(
                listen="127.0.0.1:0",
                gateway_id="gw-tls",
                hub=hub.address,
                hub_ca=str(ca.cert),
                hub_cert=str(other_cert.cert),
                hub_key=str(other_cert.key),
                redis_url=redis_url,
                jwt_secret=SECRET,
            )
        ) as gateway,
    ):

        async def told() -> bool:
            status, body, _ = await http_get(gateway.port, "/healthz")
            assert status == 503, body
            return "not a DNS name" in json.loads(body).get("reason", "")

        await wait_until(told, timeout=30, what="/healthz to give the hub's reason")
        _, body, _ = await http_get(gateway.port, "/healthz")
        reason = json.loads(body)["reason"]
        assert "PERMISSION_DENIED" in reason
        assert "gateway id gw-tls is not a DNS name" in reason
        assert hub.registry.gateways() == []
        await wait_until(
            lambda: sum("still refused" in r.getMessage() for r in caplog.records) >= 3,
            timeout=20,
            what="three more refused attempts",
        )
        errors = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and "refuses gateway gw-tls" in r.getMessage()
        ]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "not a DNS name" in errors[0].getMessage()


async def test_second_gateway_with_a_live_id_says_so_in_healthz(
    hub: HubServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A second gateway started with a live gateway's id gets /healthz 503 whose reason names
    the id, logs an ERROR line, and attaches by itself once the first one stops."""
    caplog.set_level(logging.INFO)
    options: dict[str, Any] = {"gateway_id": "gw-dup", "hub": hub.address, "redis_url": redis_url}
    first = Gateway(GatewayConfig(listen="127.0.0.1:0", jwt_secret=SECRET, **options))
    await first.start()
    second = Gateway(GatewayConfig(listen="127.0.0.1:0", jwt_secret=SECRET, **options))
    try:
        await first.wait_linked(30)
        await second.start()

        async def told() -> bool:
            status, body, _ = await http_get(second.port, "/healthz")
            assert status == 503, body  # never linked: the id is held
            return "gateway id gw-dup is held by another process" in json.loads(body)["reason"]

        await wait_until(told, timeout=30, what="the second gateway's /healthz to name the id")
        assert any(
            r.levelno == logging.ERROR and "gw-dup is held by another process" in r.getMessage()
            for r in caplog.records
        )
        status, _, _ = await http_get(first.port, "/healthz")
        assert status == 200
        await first.close()
        await second.wait_linked(30)  # without a restart

        async def healthy() -> bool:
            status, _, _ = await http_get(second.port, "/healthz")
            return status == 200

        await wait_until(healthy, timeout=30, what="the second gateway's /healthz to say 200")
    finally:
        await second.close()
        await first.close()
