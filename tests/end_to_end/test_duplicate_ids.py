"""Duplicate gateway ids with real `python -m im_gateway` processes (DESIGN: several hubs)."""

from __future__ import annotations

import json
import signal
import time

from tests.end_to_end.harness import GatewayProcess, http_get
from tests.helpers import wait_until
from transmit_hub import HubServer


async def health(process: GatewayProcess) -> tuple[int, dict[str, object]]:
    status, body, _ = await http_get(process.port, "/healthz")
    return status, json.loads(body)


async def test_second_process_is_told_and_takes_over_when_the_first_exits(
    hub: HubServer, redis_url: str
) -> None:
    """A second process started with a live id: /healthz 503 naming the id and one ERROR line,
    the first stays healthy; when the first exits, the second attaches within 30 s."""
    first = GatewayProcess(gateway_id="gw-dup", hub=hub.address, redis_url=redis_url)
    second: GatewayProcess | None = None
    try:
        await first.wait_healthy()
        second = GatewayProcess(gateway_id="gw-dup", hub=hub.address, redis_url=redis_url)
        told = second

        async def named() -> bool:
            try:
                status, report = await health(told)
            except OSError:
                return False  # not listening yet
            return status == 503 and "gateway id gw-dup is held by another process" in str(
                report.get("reason")
            )

        await wait_until(named, timeout=30, what="the second process's /healthz to name the id")
        assert "ERROR" in second.output()
        assert "gw-dup is held by another process" in second.output()
        assert (await health(first))[0] == 200
        first.proc.send_signal(signal.SIGTERM)
        first.proc.wait(15)
        started = time.monotonic()
        await second.wait_healthy(timeout=30)
        assert time.monotonic() - started < 30
        assert [g.gateway_id for g in hub.registry.gateways()] == ["gw-dup"]
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_restarted_process_attaches_again_at_once(hub: HubServer, redis_url: str) -> None:
    """A gateway whose old process the hub still holds (frozen, as a dead host looks) and that
    starts again with the same id is healthy in seconds: the hub's probe finds the old
    stream silent, well before keepalive would tell."""
    old = GatewayProcess(gateway_id="gw-r", hub=hub.address, redis_url=redis_url)
    new: GatewayProcess | None = None
    try:
        await old.wait_healthy()
        old.proc.send_signal(signal.SIGSTOP)  # the hub cannot notice a frozen process
        new = GatewayProcess(gateway_id="gw-r", hub=hub.address, redis_url=redis_url)
        started = time.monotonic()
        await new.wait_healthy(timeout=20)
        assert time.monotonic() - started < 10  # well before keepalive could tell
    finally:
        old.proc.send_signal(signal.SIGKILL)
        old.stop()
        if new is not None:
            new.stop()
