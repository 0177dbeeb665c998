"""Real hub processes for several-hub tests: ``python -m transmit_hub`` on a free port."""

from __future__ import annotations

import grpc  # type: ignore[import-untyped]

from devtools.launch import Process, free_port, hub_argv
from tests.helpers import wait_until
from transmit_hub.v1 import transmit_pb2, transmit_pb2_grpc


class HubProcess(Process):
    """``python -m transmit_hub`` as a child process; :meth:`restart` keeps its port."""

    def __init__(self, hub_id: str, *, port: int | None = None) -> None:
        self.hub_id = hub_id
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        argv = hub_argv(
            self.address, "--hub-id", hub_id, "--grace", "0.2", "--log-level", "WARNING"
        )
        super().__init__(hub_id, argv, die_with_parent=False)
        self.start()

    async def gateways(self) -> set[str]:
        """The gateway ids ListGateways shows (empty when the hub does not answer)."""
        try:
            async with grpc.aio.insecure_channel(self.address) as channel:
                stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
                reply = await stub.ListGateways(transmit_pb2.ListGatewaysRequest(), timeout=2)
        except grpc.RpcError:
            return set()
        return {g.gateway_id for g in reply.gateways}

    async def deliveries_sent(self) -> int:
        """The hub's GetStats ``deliveriesSent`` (one per message share written)."""
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
            reply = await stub.GetStats(transmit_pb2.GetStatsRequest(), timeout=5)
        return int(reply.deliveries_sent)

    async def wait_serving(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - a deadline
        """Wait until the hub answers ListGateways."""

        async def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"hub {self.hub_id} exited: {self.output()}")
            try:
                async with grpc.aio.insecure_channel(self.address) as channel:
                    stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
                    await stub.ListGateways(transmit_pb2.ListGatewaysRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return True

        await wait_until(serving, timeout=timeout, what=f"hub {self.hub_id} serving")

    def stop(self, timeout: float = 0) -> None:
        """SIGKILL the process if it still runs (a stopped one too), and drop its log."""
        self.kill()
        super().stop()
        self.log_path.unlink(missing_ok=True)
