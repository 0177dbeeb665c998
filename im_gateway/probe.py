"""``python -m im_gateway probe``: an end-to-end prober of a running cluster.

It holds one synthetic user on each gateway given (user ``--user-base + i`` on the i-th
gateway, with tokens it signs itself with ``--jwt-secret``), and every ``--interval``
seconds sends a small private message between every ordered pair of them, through the
real path (the sender's gateway, Redis, a hub, the receiver's gateway). It reports:

- the delivery latency per pair (acknowledged send -> seen by the receiver),
- a **loss**: a message acknowledged (type 10) but not seen by its receiver within
  ``--deadline`` seconds while the receiver stayed connected (a receiver that reconnected
  meanwhile gets the message from its inbox replay; such a message counts as
  ``unverified`` if it still has not come);

as Prometheus metrics (``--metrics-listen``) and as one summary log line every
``--summary-every`` seconds. With one gateway, the user sends to itself on a second
connection (the local path).

The bookkeeping is pure (:mod:`im_gateway.probe_ledger`), the settings are
:mod:`im_gateway.probe_config`; :class:`Probe` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import signal
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from transmit_hub import cli
from transmit_hub.config import parse_listen
from transmit_hub.metrics import MetricsServer

from . import auth
from .errors import ConfigError
from .probe_config import PROGRAM, ProbeConfig, join_repeated_gateways
from .probe_ledger import Ledger, Pair, summary_line

logger = logging.getLogger(__name__)

LATENCY_BUCKETS: Final = (
    0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
CONTENT_PREFIX: Final = "probe "


# --- metrics -----------------------------------------------------------------------------


class ProbeMetrics:
    """The probe's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        pair = ["source", "target"]
        self.latency = Histogram(
            "im_gateway_probe_latency_seconds",
            "Probe message delivery latency (sent -> seen by the receiver), per gateway pair.",
            pair,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sent = Counter(
            "im_gateway_probe_sent_total", "Probe messages sent, per pair.", pair, registry=r
        )
        self.lost = Counter(
            "im_gateway_probe_lost_total",
            "Probe messages acknowledged but not seen within the deadline while the "
            "receiver stayed connected, per pair.",
            pair,
            registry=r,
        )
        self.unverified = Counter(
            "im_gateway_probe_unverified_total",
            "Probe messages not seen within the deadline whose receiver reconnected.",
            pair,
            registry=r,
        )
        self.late = Counter(
            "im_gateway_probe_late_total",
            "Probe messages seen after they were counted lost or unverified.",
            pair,
            registry=r,
        )
        self.refused = Counter(
            "im_gateway_probe_refused_total",
            "Probe sends answered type 99.",
            pair,
            registry=r,
        )
        self.unanswered = Counter(
            "im_gateway_probe_unanswered_total",
            "Probe sends not acknowledged within the deadline (the sender's gateway silent, "
            "or its socket broke), per pair.",
            pair,
            registry=r,
        )
        self.connected = Gauge(
            "im_gateway_probe_connected",
            "1 while the probe's user is connected to the gateway.",
            ["gateway"],
            registry=r,
        )
        self.connect_failures = Counter(
            "im_gateway_probe_connect_failures_total",
            "Failed connection attempts to a gateway.",
            ["gateway"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Member:
    """The probe's user on one gateway: its socket, and how many times it (re)connected."""

    def __init__(self, index: int, url: str, user: int) -> None:
        self.index = index
        self.url = url
        self.name = urlsplit(url).netloc
        self.user = user
        self.ws: ClientConnection | None = None
        self.epoch = 0
        self.last_seq: str | None = None


class Probe:
    """Runs until cancelled; ``async with`` is not needed (see :func:`run`)."""

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        self.metrics = ProbeMetrics()
        self.ledger = Ledger(deadline=config.deadline)
        gateways = config.gateways
        # One gateway: a second connection of another user on the same gateway.
        urls = list(gateways) if len(gateways) > 1 else [gateways[0], gateways[0]]
        self.members = [_Member(i, url, config.user_base + i) for i, url in enumerate(urls)]
        self._ids = itertools.count(1)
        self._window: dict[Pair, list[float]] = {}
        self._window_lost: dict[Pair, int] = {}
        self._window_unanswered: dict[Pair, int] = {}
        self._connected = [asyncio.Event() for _ in self.members]

    def _labels(self, pair: Pair) -> tuple[str, str]:
        return self.members[pair[0]].name, self.members[pair[1]].name

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._hold(m)) for m in self.members]
        tasks.append(asyncio.create_task(self._send_loop()))
        tasks.append(asyncio.create_task(self._summary_loop()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- connections -------------------------------------------------------------------

    async def _hold(self, member: _Member) -> None:
        """Keep ``member`` connected, reading its frames; reconnect with backoff."""
        cfg = self.config
        backoff = 0.2
        while True:
            token = auth.mint(
                member.user,
                cfg.jwt_secret,
                ttl=cfg.token_ttl,
                audience=cfg.audience,
                issuer=cfg.issuer,
            )
            try:
                async with connect(
                    member.url,
                    additional_headers={"Authorization": f"Bearer {token}"},
                    open_timeout=10,
                    max_size=1 << 20,
                ) as ws:
                    member.ws = ws
                    member.epoch += 1
                    self._connected[member.index].set()
                    self.metrics.connected.labels(member.name).set(1)
                    logger.info("probe user %s connected to %s", member.user, member.name)
                    backoff = 0.2
                    async for data in ws:
                        self._on_frame(member, data)
            except asyncio.CancelledError:
                raise
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                self.metrics.connect_failures.labels(member.name).inc()
                logger.warning("probe: %s: %s", member.name, exc or type(exc).__name__)
            finally:
                member.ws = None
                self._connected[member.index].clear()
                self.metrics.connected.labels(member.name).set(0)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    def _on_frame(self, member: _Member, data: str | bytes) -> None:
        try:
            frame = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        now = time.monotonic()
        if kind == 10:
            self.ledger.acked(str(frame.get("id")), str(frame.get("msgId")))
        elif kind == 99 and "id" in frame:
            pair = self.ledger.refused(str(frame["id"]))
            if pair is not None:
                self.metrics.refused.labels(*self._labels(pair)).inc()
                logger.warning("probe: %s refused a message: %s", member.name, frame.get("code"))
        elif kind in (1, 2):
            if isinstance(frame.get("seq"), str):
                member.last_seq = frame["seq"]
            seen = self.ledger.seen(str(frame.get("id")), now)
            if seen is not None:
                labels = self._labels(seen.pair)
                self.metrics.latency.labels(*labels).observe(seen.latency)
                if seen.late:
                    self.metrics.late.labels(*labels).inc()
                else:
                    self._window.setdefault(seen.pair, []).append(seen.latency)

    # -- sending -----------------------------------------------------------------------

    async def _send_loop(self) -> None:
        interval = self.config.interval
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            await self._round()
            next_round += interval
            await asyncio.sleep(max(0.0, next_round - loop.time()))

    async def _round(self) -> None:
        now = time.monotonic()
        for expired in self.ledger.expire(now, [m.epoch for m in self.members]):
            labels = self._labels(expired.pair)
            if expired.unanswered:  # in the summary line, not a log line each
                self.metrics.unanswered.labels(*labels).inc()
                window = self._window_unanswered
                window[expired.pair] = window.get(expired.pair, 0) + 1
            elif expired.lost:
                self.metrics.lost.labels(*labels).inc()
                self._window_lost[expired.pair] = self._window_lost.get(expired.pair, 0) + 1
                logger.error(
                    "probe: a message %s -> %s was acknowledged but not seen within %ss",
                    *labels,
                    self.config.deadline,
                )
            else:
                self.metrics.unverified.labels(*labels).inc()
        members = self.members
        for sender in members:
            ws = sender.ws
            if ws is None:
                continue
            with contextlib.suppress(ConnectionClosed):
                if sender.last_seq is not None:  # keep the probe users' inboxes acknowledged
                    await ws.send(json.dumps({"type": 11, "seq": sender.last_seq}))
                for receiver in members:
                    if receiver is sender or receiver.ws is None:
                        continue
                    pair = (sender.index, receiver.index)
                    cid = f"probe-{next(self._ids)}"
                    self.ledger.sent(cid, pair, time.monotonic(), receiver.epoch)
                    self.metrics.sent.labels(*self._labels(pair)).inc()
                    frame = {
                        "type": 1,
                        "id": cid,
                        "to": receiver.user,
                        "contentType": 0,
                        "content": f"{CONTENT_PREFIX}{sender.name} -> {receiver.name}",
                    }
                    await ws.send(json.dumps(frame))

    # -- the summary -------------------------------------------------------------------

    async def _summary_loop(self) -> None:
        every = self.config.summary_every
        while True:
            await asyncio.sleep(every)
            logger.info("%s", self.summary())

    def summary(self) -> str:
        """One line: per pair, messages seen, p50/p99/max latency (ms) and losses since the
        last summary."""
        down = [m.name for m in self.members if m.ws is None]
        line = summary_line(
            self._window, self._window_lost, self._labels, down, self._window_unanswered
        )
        self._window.clear()
        self._window_lost.clear()
        self._window_unanswered.clear()
        return line


async def run(config: ProbeConfig) -> None:
    """Run the probe (and its metrics server) until cancelled."""
    probe = Probe(config)
    server: MetricsServer | None = None
    if config.metrics_listen is not None:
        host, port = parse_listen(config.metrics_listen)
        server = MetricsServer(host, port, probe.metrics.render)
        await server.start()
        logger.info("probe metrics at http://%s:%d/metrics", host, server.port)
    logger.info(
        "probing %d gateways every %ss (users %d..%d)",
        len(config.gateways),
        config.interval,
        config.user_base,
        config.user_base + len(probe.members) - 1,
    )
    try:
        await probe.run()
    finally:
        if server is not None:
            await server.close()


async def _serve(config: ProbeConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await run(config)
    logger.info("probe stopped")


def main(argv: Sequence[str]) -> int:
    """``python -m im_gateway probe ...``; returns the exit code."""
    config = cli.configure(PROGRAM, join_repeated_gateways(argv), quiet=("websockets",))
    if config is None:
        return 0  # --print-config
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        return cli.failed(PROGRAM, config, exc)
    return 0
