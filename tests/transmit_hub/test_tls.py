"""TLS and mutual TLS on the hub, with a CA and certificates each test makes itself."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from grpc import aio

from devtools.certs import Issued, TestCA
from tests.helpers import endless_file, one_error_line
from transmit_hub import HubServer, codec, peer
from transmit_hub.config import HubConfig
from transmit_hub.tls import ClientTls, ServerTls
from transmit_hub.transport import CONNECT_METHOD
from transmit_hub.types import GatewayId
from transmit_hub.v1 import transmit_pb2_grpc

from .conftest import LinkFactory, hub_process_with_link, tmap
from .test_grpcurl import grpcurl


@dataclass
class Pki:
    """A CA, the hub's certificate (localhost, 127.0.0.1) and gateways' client certificates."""

    ca: TestCA
    hub: Issued
    gw1: Issued
    """A client certificate naming gw-1 (DNS) and 10.0.0.1 (IP)."""
    rogue: Issued
    """A certificate naming gw-1 too, but signed by another CA."""

    def client(self, who: Issued | None = None) -> ClientTls:
        ca = self.ca.cert.read_bytes()
        if who is None:
            return ClientTls(ca=ca)
        return ClientTls(ca=ca, cert=who.cert.read_bytes(), key=who.key.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Certificates for one test."""
    ca = TestCA(tmp_path)
    other = TestCA(tmp_path, "other-ca")
    return Pki(
        ca=ca,
        hub=ca.issue("hub", dns=("localhost",), ips=("127.0.0.1",)),
        gw1=ca.issue("gw1", dns=("gw-1",), ips=("10.0.0.1",)),
        rogue=other.issue("rogue", dns=("gw-1",)),
    )


@pytest.fixture
async def mtls_hub(pki: Pki) -> AsyncIterator[HubServer]:
    """A hub on a free port that requires client certificates signed by the test CA."""
    tls = ServerTls.from_files(str(pki.hub.cert), str(pki.hub.key), str(pki.ca.cert))
    async with HubServer(
        HubConfig(listen="127.0.0.1:0", hub_id="test-hub", grace=0.1), tls=tls
    ) as hub:
        yield hub


async def get_stats(address: str, tls: ClientTls) -> Any:
    async with aio.secure_channel(address, tls.credentials()) as channel:
        stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
        return await stub.GetStats(codec.GetStatsRequest(), timeout=10)


async def hello_error(call: Any, gateway_id: str) -> aio.AioRpcError:
    """Send a Hello on a raw Connect call; the error that ends it (it may surface on the
    write or on the read)."""
    try:
        await call.write(codec.hello_bytes(GatewayId(gateway_id)))
        await call.read()
    except aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"the hub accepted {gateway_id!r}")


async def test_auth_context_keys_the_hub_relies_on(pki: Pki) -> None:
    """grpc's auth_context gives 'transport_security_type' = ssl and 'peer_dns' = the DNS
    names of the client certificate only (its IP address is not among them)."""
    seen: dict[str, Any] = {}

    async def handler(request: bytes, context: Any) -> bytes:
        seen["tls"] = peer.is_tls(context)
        seen["dns"] = peer.certificate_dns_names(context)
        seen["raw"] = context.auth_context()
        return b"ok"

    server = aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.S", {"M": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    creds = ServerTls(
        pki.hub.cert.read_bytes(), pki.hub.key.read_bytes(), pki.ca.cert.read_bytes()
    ).credentials()
    port = server.add_secure_port("127.0.0.1:0", creds)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        async with aio.secure_channel(target, pki.client(pki.gw1).credentials()) as channel:
            assert await channel.unary_unary("/t.S/M")(b"x", timeout=10) == b"ok"
        assert seen["tls"] is True
        assert seen["dns"] == frozenset({"gw-1"})
        assert seen["raw"][peer.SECURITY_TYPE_KEY] == [b"ssl"]
        assert seen["raw"][peer.DNS_NAMES_KEY] == [b"gw-1"]
        async with aio.insecure_channel(f"127.0.0.1:{plain_port}") as channel:
            assert await channel.unary_unary("/t.S/M")(b"x", timeout=10) == b"ok"
        assert seen["tls"] is False
        assert seen["dns"] == frozenset()
    finally:
        await server.stop(0)


async def test_tls_hub_routes_between_links_that_verify_it(
    pki: Pki, make_link: LinkFactory
) -> None:
    """A hub with --tls-cert/--tls-key routes between links that verify it with --hub-ca;
    a plaintext client cannot talk to it."""
    tls = ServerTls.from_files(str(pki.hub.cert), str(pki.hub.key), None)
    async with HubServer(HubConfig(listen="127.0.0.1:0", grace=0.1), tls=tls) as hub:
        a = await make_link(hub.address, "gw-a", tls=pki.client())
        b = await make_link(hub.address, "gw-b", tls=pki.client())
        assert a.link.send(tmap("m-1", {"gw-b": (2,)}))
        (delivery,) = await b.wait_deliveries(1)
        assert delivery.message.id == "m-1"
        async with aio.insecure_channel(hub.address) as channel:
            stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
            with pytest.raises(aio.AioRpcError) as info:
                await stub.GetStats(codec.GetStatsRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_attaches_only_ids_named_by_the_certificate(
    pki: Pki, mtls_hub: HubServer, make_link: LinkFactory
) -> None:
    """With --tls-client-ca, a link attaches as gw-1 with a certificate naming gw-1; the same
    certificate claiming gw-2 (or the IP address it names) is PERMISSION_DENIED."""
    gw1 = await make_link(mtls_hub.address, "gw-1", tls=pki.client(pki.gw1))
    assert gw1.link.connected
    for claimed in ("gw-2", "10.0.0.1"):
        creds = pki.client(pki.gw1).credentials()
        async with aio.secure_channel(mtls_hub.address, creds) as channel:
            error = await hello_error(channel.stream_stream(CONNECT_METHOD)(), claimed)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"gateway id {claimed} is not a DNS name" in (error.details() or "")
    reply = await get_stats(mtls_hub.address, pki.client(pki.gw1))
    assert [g.gateway_id for g in reply.gateways] == ["gw-1"]


async def test_mtls_refuses_every_rpc_without_a_certificate_of_its_ca(
    pki: Pki, mtls_hub: HubServer
) -> None:
    """Without a client certificate, or with one from another CA, no RPC of the port answers
    (not even GetStats)."""
    for tls in (pki.client(), pki.client(pki.rogue)):
        with pytest.raises(aio.AioRpcError) as info:
            await get_stats(mtls_hub.address, tls)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls_hub.registry.attachments() == []


async def test_grpcurl_against_a_mutual_tls_hub(pki: Pki, mtls_hub: HubServer) -> None:
    """grpcurl -cacert/-cert/-key lists the service and calls GetStats on an mTLS hub;
    without -cert/-key it is refused."""
    tls = ["-cacert", str(pki.ca.cert), "-cert", str(pki.gw1.cert), "-key", str(pki.gw1.key)]
    code, out, err = await grpcurl(*tls, mtls_hub.address, "list")
    assert code == 0, err
    assert "transmit.v1.TransmitHubService" in out
    code, out, err = await grpcurl(
        *tls, "-d", "{}", mtls_hub.address, "transmit.v1.TransmitHubService/GetStats"
    )
    assert code == 0, err
    assert '"hubId": "test-hub"' in out
    code, _, _ = await grpcurl("-cacert", str(pki.ca.cert), mtls_hub.address, "list")
    assert code != 0


async def test_mtls_hub_process_and_link(pki: Pki, make_link: LinkFactory) -> None:
    """`python -m transmit_hub --tls-cert --tls-key --tls-client-ca` serves mutual TLS: a link
    with a certificate naming its id attaches."""
    err = await hub_process_with_link(
        make_link,
        "--tls-cert",
        str(pki.hub.cert),
        "--tls-key",
        str(pki.hub.key),
        "--tls-client-ca",
        str(pki.ca.cert),
        tls=pki.client(pki.gw1),
    )
    assert "(mutual TLS)" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert"),
        (["--tls-cert", "/etc/hostname"], "go together"),
        (["--tls-client-ca", "/etc/hostname"], "--tls-client-ca needs"),
    ],
)
def test_bad_tls_flags_exit_with_one_line(args: list[str], needle: str) -> None:
    """A missing TLS file or a half-given pair exits non-zero with one line naming the flag."""
    line = one_error_line([sys.executable, "-m", "transmit_hub", "--listen", "127.0.0.1:0", *args])
    assert needle in line


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_tls_file_that_never_ends_is_one_line_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO no one writes or an endless device as --tls-cert: the hub exits at once with
    one line naming the flag, rather than waiting or reading forever."""
    cert = endless_file(tmp_path, kind)
    line = one_error_line(
        [sys.executable, "-m", "transmit_hub", "--tls-cert", cert, "--tls-key", cert]
    )
    assert f"--tls-cert {cert}: not a regular file" in line
