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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from transmit_hub import logs
from transmit_hub.metrics import MetricsServer
from transmit_hub.server import parse_listen
from transmit_hub.settings import Loaded, Program, between, check_fields, setting

from . import auth
from .errors import ConfigError

logger = logging.getLogger(__name__)

PROG: Final = "python -m im_gateway probe"
ENV_PREFIX: Final = "IM_GATEWAY_PROBE_"
EXIT_USAGE: Final = 2
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


def _gateway_urls(text: str) -> tuple[str, ...]:
    return tuple(url.strip() for url in text.split(",") if url.strip())


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """The probe's settings: each field is a flag, an ``IM_GATEWAY_PROBE_*`` variable and a
    ``--config`` key (see :mod:`transmit_hub.settings`)."""

    gateway: str = setting(
        "",
        "the gateways' WebSocket URLs (ws://HOST:PORT/ws or wss://...), comma-separated; "
        "or give the flag once per gateway (required)",
        metavar="URL",
    )
    jwt_secret: str = setting(
        "",
        "the gateways' JWT secret: the probe signs its own users' tokens (required)",
        metavar="SECRET",
        secret=True,
    )
    user_base: int = setting(
        DEFAULT_USER_BASE,
        "the probe's users are ID, ID+1, ... (one per gateway; keep this range out of your "
        "application's users)",
        metavar="ID",
    )
    interval: float = setting(
        5.0, "seconds between rounds", metavar="SECONDS", check=between(0.1, 3600)
    )
    deadline: float = setting(
        3.0,
        "an acknowledged message not seen this long after it was sent is a loss",
        metavar="SECONDS",
        check=between(0.05, 3600),
    )
    summary_every: float = setting(
        60.0, "seconds between summary log lines", metavar="SECONDS", check=between(1, 86400)
    )
    metrics_listen: str | None = setting(
        None,
        "serve the probe's Prometheus metrics at GET /metrics here (default: off)",
        metavar="HOST:PORT",
    )
    audience: str | None = setting(
        None, "the aud claim of the tokens (the gateways' --jwt-audience)", metavar="AUD"
    )
    issuer: str | None = setting(
        None, "the iss claim of the tokens (the gateways' --jwt-issuer)", metavar="ISS"
    )
    token_ttl: float = setting(
        3600.0,
        "seconds the probe's tokens live (each connection signs a new one; keep it within "
        "the gateways' --jwt-max-lifetime)",
        metavar="SECONDS",
        check=between(10, 86400 * 365),
    )
    log_level: str = logs.level_setting()
    log_format: str = logs.format_setting()

    def __post_init__(self) -> None:
        check_fields(self, ConfigError)
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
        if self.metrics_listen is not None:
            try:
                parse_listen(self.metrics_listen)
            except Exception as exc:
                raise ConfigError(str(exc).replace("--listen", "--metrics-listen", 1)) from None

    @property
    def gateways(self) -> tuple[str, ...]:
        """The ``--gateway`` URLs, in order."""
        return _gateway_urls(self.gateway)


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


PROGRAM: Final = Program(
    ProbeConfig,
    prog=PROG,
    env_prefix=ENV_PREFIX,
    description=(
        "Probe a running cluster end to end: hold a synthetic user on each gateway, send a "
        "message between every pair every --interval seconds, and report the delivery "
        "latency per pair and any message acknowledged but not seen within --deadline (a "
        "loss)."
    ),
    error=ConfigError,
)


def build_parser() -> argparse.ArgumentParser:
    """The probe's flags, generated from :class:`ProbeConfig`'s fields."""
    return PROGRAM.build_parser()


def join_repeated_gateways(argv: Sequence[str]) -> list[str]:
    """``--gateway A --gateway B`` -> ``--gateway A,B`` (the flag may be repeated)."""
    urls: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--gateway":
            urls.append(next(args, ""))
        elif arg.startswith("--gateway="):
            urls.append(arg.partition("=")[2])
        else:
            rest.append(arg)
    return [*rest, "--gateway", ",".join(urls)] if urls else rest


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Loaded[ProbeConfig]:
    """Flags, ``IM_GATEWAY_PROBE_*`` variables and ``--config`` -> a validated config;
    ConfigError on a problem."""
    return PROGRAM.load(join_repeated_gateways(argv), os.environ if environ is None else environ)


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ProbeConfig:
    """Like :func:`load`, but a problem exits 2 with one line (in the log format asked for)."""
    try:
        return load(argv, environ).config
    except ConfigError as exc:
        _usage_error(str(exc), argv, environ)


def _usage_error(message: str, argv: Sequence[str], environ: Mapping[str, str] | None) -> NoReturn:
    json_format = logs.sniff_format(argv, os.environ if environ is None else environ, ENV_PREFIX)
    print(logs.error_line(PROG, message, json_format=json_format == "json"), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


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
    try:
        loaded = load(argv)
    except ConfigError as exc:
        _usage_error(str(exc), argv, None)
    config = loaded.config
    if loaded.print_config:
        print(PROGRAM.render(config), end="")
        return 0
    logs.configure(config.log_level, config.log_format, program="im_gateway.probe")
    if config.log_level.upper() != "DEBUG":
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve(config))
    except ConfigError as exc:
        print(
            logs.error_line(PROG, str(exc), json_format=config.log_format == "json"),
            file=sys.stderr,
        )
        return 1
    return 0
