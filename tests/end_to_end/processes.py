"""Real hub processes for several-hub tests: ``python -m transmit_hub`` on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import grpc

from tests.helpers import free_port, wait_until
from transmit_hub.v1 import transmit_pb2, transmit_pb2_grpc


class HubProcess:
    """``python -m transmit_hub`` as a child process; :meth:`restart` keeps its port."""

    def __init__(self, hub_id: str, *, port: int | None = None) -> None:
        self.hub_id = hub_id
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"{hub_id}-", suffix=".log")  # noqa: SIM115
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transmit_hub",
                "--listen",
                self.address,
                "--hub-id",
                self.hub_id,
                "--grace",
                "0.2",
                "--log-level",
                "WARNING",
            ],
            env=dict(os.environ),
            stdout=self.log,
            stderr=self.log,
        )

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

    def kill(self) -> None:
        """SIGKILL, and reap."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        """Start the hub again on the same port (after :meth:`kill`)."""
        self.proc = self._spawn()

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """Make sure the process is gone (continued first if stopped) and drop its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()
