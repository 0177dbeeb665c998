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

The bookkeeping is the pure :class:`Ledger`; :class:`Probe` does the I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from transmit_hub.metrics import MetricsServer
from transmit_hub.server import parse_listen

from . import auth
from .errors import ConfigError

logger = logging.getLogger(__name__)

PROG: Final = "python -m im_gateway probe"
ENV_PREFIX: Final = "IM_GATEWAY_PROBE_"
DEFAULT_USER_BASE: Final = 9_000_000_000_000_000_000
LATENCY_BUCKETS: Final = (
    0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
CONTENT_PREFIX: Final = "probe "


# --- the pure core ---------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    pair: tuple[int, int]
    sent_at: float
    receiver_epoch: int
    acked_at: float | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """A probe message seen by its receiver."""

    pair: tuple[int, int]
    latency: float
    late: bool
    """It had already been counted lost or unverified."""


@dataclass(frozen=True, slots=True)
class Expired:
    """An acknowledged probe message not seen within the deadline."""

    pair: tuple[int, int]
    lost: bool
    """True: the receiver stayed connected (a loss); False: it reconnected (unverified)."""


@dataclass(slots=True)
class Ledger:
    """Messages in flight, by client id until acknowledged, then by message id.

    No I/O and no clock of its own: every call says what time it is.
    """

    deadline: float
    _sent: dict[str, _Pending] = field(default_factory=dict)
    _acked: dict[str, _Pending] = field(default_factory=dict)
    _expired: dict[str, tuple[tuple[int, int], float]] = field(default_factory=dict)
    """Expired message id -> (pair, sent_at), to recognise a late arrival (bounded)."""
    max_expired: int = 10_000

    def sent(self, client_id: str, pair: tuple[int, int], now: float, receiver_epoch: int) -> None:
        self._sent[client_id] = _Pending(pair, now, receiver_epoch)

    def acked(self, client_id: str, msg_id: str, now: float) -> None:
        pending = self._sent.pop(client_id, None)
        if pending is not None:
            pending.acked_at = now
            self._acked[msg_id] = pending

    def refused(self, client_id: str) -> tuple[int, int] | None:
        """The send was answered type 99 (or its socket closed unanswered)."""
        pending = self._sent.pop(client_id, None)
        return pending.pair if pending is not None else None

    def seen(self, msg_id: str, now: float) -> Seen | None:
        """The receiver got ``msg_id``; None when it is not one of ours (or a repeat)."""
        pending = self._acked.pop(msg_id, None)
        if pending is not None:
            return Seen(pending.pair, now - pending.sent_at, late=False)
        gone = self._expired.pop(msg_id, None)
        if gone is not None:
            return Seen(gone[0], now - gone[1], late=True)
        return None

    def expire(self, now: float, epochs: Sequence[int]) -> list[Expired]:
        """Acknowledged messages past the deadline; unanswered sends past it are dropped
        (their sender's socket broke: counted by the caller as errors)."""
        out: list[Expired] = []
        for msg_id, p in list(self._acked.items()):
            if now - p.sent_at >= self.deadline:
                del self._acked[msg_id]
                lost = epochs[p.pair[1]] == p.receiver_epoch
                out.append(Expired(p.pair, lost))
                self._expired[msg_id] = (p.pair, p.sent_at)
        for client_id, p in list(self._sent.items()):
            if now - p.sent_at >= self.deadline * 2:
                del self._sent[client_id]
        while len(self._expired) > self.max_expired:
            del self._expired[next(iter(self._expired))]
        return out

    @property
    def in_flight(self) -> int:
        return len(self._sent) + len(self._acked)


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
            "Probe sends answered type 99 or left unanswered by a broken socket.",
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


# --- I/O ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    gateways: tuple[str, ...]
    jwt_secret: str = ""
    user_base: int = DEFAULT_USER_BASE
    interval: float = 5.0
    deadline: float = 3.0
    summary_every: float = 60.0
    metrics_listen: str | None = None
    audience: str | None = None
    issuer: str | None = None
    token_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if not self.gateways:
            raise ConfigError("give at least one --gateway URL (ws://HOST:PORT/ws)")
        for url in self.gateways:
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss") or not parts.netloc:
                raise ConfigError(f"--gateway {url!r}: expected ws://HOST:PORT/ws or wss://...")
        if len(set(self.gateways)) != len(self.gateways):
            raise ConfigError("a --gateway is given twice")
        if not self.jwt_secret:
            raise ConfigError(f"--jwt-secret (or {ENV_PREFIX}JWT_SECRET) is required")
        last = self.user_base + max(len(self.gateways), 2) - 1
        if self.user_base < 1 or last > auth.UINT64_MAX:
            raise ConfigError("--user-base must leave room for the probe users in 1..2^64-1")
        if not 0.1 <= self.interval <= 3600:
            raise ConfigError(f"--interval must be 0.1 to 3600 seconds, got {self.interval}")
        if not 0.05 <= self.deadline <= 3600:
            raise ConfigError(f"--deadline must be 0.05 to 3600 seconds, got {self.deadline}")
        if not 1 <= self.summary_every <= 86400:
            raise ConfigError("--summary-every must be 1 to 86400 seconds")
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except Exception as exc:
                raise ConfigError(str(exc).replace("--listen", "--metrics-listen", 1)) from None


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
        self._window: dict[tuple[int, int], list[float]] = {}
        self._window_lost: dict[tuple[int, int], int] = {}
        self._connected = [asyncio.Event() for _ in self.members]

    def _labels(self, pair: tuple[int, int]) -> tuple[str, str]:
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
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        now = time.monotonic()
        if kind == 10:
            self.ledger.acked(str(frame.get("id")), str(frame.get("msgId")), now)
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
            if expired.lost:
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
        parts = []
        pairs = sorted(set(self._window) | set(self._window_lost))
        for pair in pairs:
            times = sorted(self._window.get(pair, []))
            lost = self._window_lost.get(pair, 0)
            source, target = self._labels(pair)
            if times:
                p50 = statistics.median(times) * 1000
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
                stats = (
                    f"n={len(times)} p50={p50:.1f}ms p99={p99:.1f}ms max={times[-1] * 1000:.1f}ms"
                )
            else:
                stats = "n=0"
            parts.append(f"{source}->{target} {stats} lost={lost}")
        self._window.clear()
        self._window_lost.clear()
        down = [m.name for m in self.members if m.ws is None]
        line = "probe summary: " + ("; ".join(parts) if parts else "no deliveries")
        if down:
            line += f"; not connected: {', '.join(sorted(set(down)))}"
        return line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Probe a running cluster end to end: hold a synthetic user on each gateway, "
            "send a message between every pair every --interval seconds, and report the "
            "delivery latency per pair and any message acknowledged but not seen within "
            f"--deadline (a loss). Every flag can also be set as {ENV_PREFIX}<FLAG>."
        ),
    )
    parser.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="a gateway's WebSocket URL (ws://HOST:PORT/ws); give it once per gateway, or "
        "a comma-separated list",
    )
    parser.add_argument(
        "--jwt-secret",
        metavar="SECRET",
        help="the gateways' JWT secret: the probe signs its own users' tokens",
    )
    parser.add_argument(
        "--user-base",
        type=int,
        metavar="ID",
        help=f"the probe's users are ID, ID+1, ... (one per gateway; keep this range out "
        f"of your application's users) (default {DEFAULT_USER_BASE})",
    )
    parser.add_argument(
        "--interval", type=float, metavar="SECONDS", help="seconds between rounds (default 5)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="an acknowledged message not seen this long after it was sent is a loss (default 3)",
    )
    parser.add_argument(
        "--summary-every",
        type=float,
        metavar="SECONDS",
        help="seconds between summary log lines (default 60)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve the probe's Prometheus metrics at GET /metrics here (default: off)",
    )
    parser.add_argument("--audience", help="the aud claim of the tokens (--jwt-audience)")
    parser.add_argument("--issuer", help="the iss claim of the tokens (--jwt-issuer)")
    parser.add_argument(
        "--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    return parser


def parse_config(
    argv: Sequence[str], environ: dict[str, str] | None = None
) -> tuple[ProbeConfig, str]:
    """The probe's config and log level from flags, then ``IM_GATEWAY_PROBE_*`` variables."""
    env = dict(os.environ) if environ is None else environ
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    for name, value in args.items():
        if value is None:
            text = env.get(ENV_PREFIX + name.upper())
            if text:
                value = [text] if name == "gateway" else text
        if value is not None:
            values[name] = value
    log_level = str(values.pop("log_level", "INFO")).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        parser.error("--log-level must be DEBUG, INFO, WARNING or ERROR")
    gateways = tuple(
        url.strip() for item in values.pop("gateway", []) for url in item.split(",") if url.strip()
    )
    try:
        for name, kind in (
            ("user_base", int),
            ("interval", float),
            ("deadline", float),
            ("summary_every", float),
        ):
            if name in values:
                values[name] = kind(values[name])
        return ProbeConfig(gateways=gateways, **values), log_level
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))


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
    config, log_level = parse_config(argv)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    return 0
