"""``python -m im_gateway probe`` against a local cluster: latencies, and a loss it must see."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from im_gateway.probe_ledger import Expired, Ledger, Seen
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import SECRET, http_get
from tests.helpers import free_port, wait_until
from tests.metrics_scrape import Samples, parse, promtool_check_metrics

BASE = 7_000_000


@contextmanager
def probe_process(
    *gateway_ports: int, interval: float, deadline: float
) -> Iterator[tuple[int, str]]:
    """A probe process over the gateways; yields its metrics port and log file name."""
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="probe-", suffix=".log") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "im_gateway",
                "probe",
                *(f"--gateway=ws://127.0.0.1:{p}/ws" for p in gateway_ports),
                "--user-base",
                str(BASE),
                "--interval",
                str(interval),
                "--deadline",
                str(deadline),
                "--summary-every",
                "1",
                "--metrics-listen",
                f"127.0.0.1:{port}",
            ],
            env={**os.environ, "IM_GATEWAY_PROBE_JWT_SECRET": SECRET},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield port, log.name
        finally:
            proc.terminate()
            code = proc.wait(10)
            with open(log.name, encoding="utf-8") as f:
                text = f.read()
            assert code == 0, text
            assert "Traceback" not in text, text


async def probe_scrape(port: int) -> Samples:
    try:
        status, body, _ = await http_get(port, "/metrics")
    except OSError:
        return {}
    return parse(body.decode()) if status == 200 else {}


def sample(samples: Samples, name: str, source: int, target: int) -> float:
    labels = frozenset({("source", f"127.0.0.1:{source}"), ("target", f"127.0.0.1:{target}")})
    return samples.get((name, labels), 0.0)


async def test_probe_reports_latency_per_pair_and_a_dropped_push_as_a_loss(
    monkeypatch: pytest.MonkeyPatch, start_gateway: GatewayFactory
) -> None:
    """Two gateways, the second made to drop its 3rd push to the hub: the probe exports
    latencies for both directions, counts exactly that message lost (then late, once a
    hole fill brings it), and writes summary lines naming the pairs."""
    healthy = await start_gateway("gw-healthy")
    monkeypatch.setenv("IM_GATEWAY_FAULTS", "drop-push:3")
    faulty = await start_gateway("gw-faulty")
    monkeypatch.delenv("IM_GATEWAY_FAULTS")
    a, b = healthy.port, faulty.port
    # The dropped message comes only with the next round's push (a hole fill): later than
    # the deadline, which is what makes it a loss; every other one takes milliseconds.
    with probe_process(a, b, interval=3.0, deadline=2.0) as (port, log):
        samples: Samples = {}

        async def loss_then_late() -> bool:
            nonlocal samples
            samples = await probe_scrape(port)
            return sample(samples, "im_gateway_probe_late_total", b, a) >= 1

        try:
            await wait_until(loss_then_late, timeout=60, what="the dropped push seen late")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; probe log:\n{Path(log).read_text()}") from None  # noqa: ASYNC240
        # (At least: a machine loaded enough to delay another message by 2 s adds one.)
        assert sample(samples, "im_gateway_probe_lost_total", b, a) >= 1
        for source, target in ((a, b), (b, a)):
            assert sample(samples, "im_gateway_probe_latency_seconds_count", source, target) >= 2
            assert sample(samples, "im_gateway_probe_sent_total", source, target) >= 3
        status, body, _ = await http_get(port, "/metrics")
        assert status == 200
        promtool_check_metrics(body)
        text = Path(log).read_text(encoding="utf-8")  # noqa: ASYNC240 - a small local file
        assert f"127.0.0.1:{b}->127.0.0.1:{a}" in text
        assert "p99=" in text
        assert "was acknowledged but not seen within" in text


def test_ledger_tells_loss_from_a_reconnected_receiver_and_late_arrivals() -> None:
    """The pure core: seen in time, lost (receiver stayed), unverified (it reconnected),
    late (seen after expiry), refused, and strangers ignored."""
    ledger = Ledger(deadline=1.0)
    ledger.sent("c1", (0, 1), 0.0, receiver_epoch=1)
    ledger.sent("c2", (0, 1), 0.0, receiver_epoch=1)
    ledger.sent("c3", (1, 0), 0.0, receiver_epoch=1)
    ledger.sent("c4", (1, 0), 0.0, receiver_epoch=1)
    for cid in ("c1", "c2", "c3"):
        ledger.acked(cid, "m" + cid)
    assert ledger.seen("mc1", 0.2) == Seen((0, 1), 0.2, late=False)
    assert ledger.seen("mc1", 0.3) is None  # a repeat
    assert ledger.seen("stranger", 0.3) is None
    assert ledger.refused("c4") == (1, 0)
    expired = ledger.expire(1.5, epochs=[2, 1])
    assert sorted(expired, key=str) == sorted(
        [Expired((0, 1), lost=True), Expired((1, 0), lost=False)], key=str
    )
    assert ledger.seen("mc2", 2.0) == Seen((0, 1), 2.0, late=True)
    assert ledger.in_flight == 0
