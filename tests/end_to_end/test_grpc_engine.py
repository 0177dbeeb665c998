"""gRPC's I/O engine in a gateway process: the poll-based one when the operator starts it
with ``GRPC_EXPERIMENTS`` (the README's tuning for latency at moderate load), gRPC's
default otherwise, and the start line says which (``transmit_hub/grpc_io.py``; the hub's
side is ``tests/transmit_hub/test_grpc_io.py``)."""

from __future__ import annotations

from tests.end_to_end.harness import GatewayProcess
from transmit_hub import HubServer, grpc_io


async def traced_gateway(hub: HubServer, redis_url: str, experiments: str) -> str:
    """The output of a gateway process started with gRPC's TCP traces on and
    ``GRPC_EXPERIMENTS=experiments``, once it is linked to the hub (so its link has read
    and written)."""
    gw = GatewayProcess(
        gateway_id="gw-engine",
        hub=hub.address,
        redis_url=redis_url,
        extra=("--log-level", "INFO"),
        env={
            "GRPC_EXPERIMENTS": experiments,
            "GRPC_TRACE": "tcp,event_engine_endpoint",
            "GRPC_VERBOSITY": "debug",
        },
    )
    try:
        await gw.wait_healthy()
        return gw.output()
    finally:
        gw.stop()


async def test_a_gateway_started_with_poll_based_does_its_link_io_there(
    hub: HubServer, redis_url: str
) -> None:
    """gRPC's traces name the file that did the socket work: the poll-based engine's
    (tcp_posix.cc), not the EventEngine's (posix_endpoint.cc); the gateway logs it."""
    out = await traced_gateway(hub, redis_url, grpc_io.POLL_BASED)
    assert "tcp_posix.cc" in out
    assert "posix_endpoint.cc" not in out
    assert "gRPC I/O: the poll-based engine" in out
    assert "Unknown experiment" not in out


async def test_a_gateway_started_without_runs_grpcs_default(hub: HubServer, redis_url: str) -> None:
    """The other side: gRPC's default engine shows as posix_endpoint.cc, and says so."""
    out = await traced_gateway(hub, redis_url, "")
    assert "posix_endpoint.cc" in out
    assert "tcp_posix.cc" not in out
    assert "gRPC I/O: gRPC's default engine" in out
