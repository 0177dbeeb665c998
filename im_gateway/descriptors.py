"""The gateway's client sockets and the descriptors they may use.

Every TCP connection is a descriptor, and the process has a fixed number (the soft
RLIMIT_NOFILE, raised to the hard limit at start by ``python -m im_gateway``). Run out,
and ``accept()`` fails: the kernel's queue fills and clients see their handshakes vanish,
while ``/healthz``, the hub links and Redis reconnects fail too. :class:`Sockets` counts
the sockets clients hold (both ports) and keeps a reserve, so that does not happen:

- a WebSocket upgrade is refused with HTTP 503 once fewer than ``reserve`` descriptors
  are left (``/healthz`` and the other HTTP paths are still answered);
- a new TCP connection on either port is answered at once with a fixed 503 (its request
  is never parsed) once fewer than half the reserve is left (room for the hub links,
  Redis and one ``accept()`` batch), or when ``max_handshakes`` connections on the
  WebSocket port are still in their opening handshake. It stays half-closed for at most
  :data:`REFUSED_LINGER` (and :data:`REFUSED_MAX_BYTES` of input) so the client reads the
  answer (those are counted too); at most a quarter of the reserve linger at once, and
  none when fewer than that are left: the others are closed at once.

Pure state, no I/O (the gateway measures the descriptors already open at start with
:func:`open_descriptors` and passes them as ``baseline``). The counts only move in
synchronous callbacks (``connection_made``/``connection_lost``), so concurrent
connections cannot race past a bound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .admission import GATEWAY_FULL, Refusal
from .errors import ConfigError
from .lingering import linger

logger = logging.getLogger(__name__)

UNLIMITED: Final = resource.RLIM_INFINITY

_REFUSED_BODY = b'{"error":"unavailable","reason":"too many connections; try later"}\n'
REFUSED_RESPONSE: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"Retry-After: 1\r\n"
    b"\r\n" + _REFUSED_BODY
)
"""What a connection refused before its request is read gets: a fixed answer, written
once (no parser, no task of its own)."""

REFUSED_LINGER: Final = 1.0
"""Seconds a refused connection stays half-closed, its input discarded, so the client
reads the 503 instead of a reset (closing a socket with unread input sends RST)."""

REFUSED_MAX_BYTES: Final = 64 * 1024
"""What a refused connection may still send while it lingers (a WebSocket handshake is a
few hundred bytes); past it, the connection closes at once."""


def refuse(
    transport: asyncio.Transport,
    owner: asyncio.BaseProtocol,
    sockets: Sockets,
    response: bytes = REFUSED_RESPONSE,
    *,
    max_bytes: int = REFUSED_MAX_BYTES,
) -> None:
    """Write ``response`` (a whole HTTP response) and close the connection with a lingering
    close (:func:`~im_gateway.lingering.linger`: for at most :data:`REFUSED_LINGER` and
    ``max_bytes``); at once when a quarter of the reserve already lingers or is all that
    is left (a flood of refused connections must not hold the descriptors it was refused
    for). ``owner`` (the protocol that refused) still hears of the connection's end."""
    sockets.refusing += 1

    def closed(exc: Exception | None) -> None:
        sockets.refusing -= 1
        owner.connection_lost(exc)

    transport.write(response)
    quarter = sockets.reserve // 4
    spare = sockets.spare
    crowded = sockets.refusing > quarter or (spare is not None and spare < quarter)
    linger(
        transport,
        seconds=0 if crowded else REFUSED_LINGER,
        max_bytes=max_bytes,
        on_closed=closed,
    )


def open_descriptors() -> int | None:
    """How many descriptors this process has open now (None where that cannot be read)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # listdir's own descriptor
        except OSError:
            continue
    return None


def soft_limit() -> int | None:
    """The soft open-file limit in force (None: unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == UNLIMITED else soft


@dataclass(frozen=True, slots=True)
class Fit:
    """Whether ``--max-connections`` fits under the open-file limit, and what does."""

    fits: bool
    room: int
    """WebSockets the limit leaves room for (after what is open and the reserve)."""


class Sockets:
    """Client sockets on both ports, and the descriptor budget they share."""

    __slots__ = (
        "_max_handshakes",
        "_spare_at_start",
        "api",
        "handshaking",
        "on_refused",
        "refusing",
        "reserve",
        "ws",
    )

    def __init__(
        self, *, limit: int | None, baseline: int, reserve: int, max_handshakes: int
    ) -> None:
        if reserve < 0 or max_handshakes < 1:
            raise ConfigError("the reserve must not be negative and max_handshakes positive")
        self._spare_at_start = None if limit is None else limit - baseline
        self.reserve = reserve
        self._max_handshakes = max_handshakes
        self.ws = 0
        """TCP connections open on the WebSocket port (handshakes and WebSockets)."""
        self.handshaking = 0
        """Of those, the ones still in their opening handshake (or an HTTP request)."""
        self.api = 0
        """TCP connections open on the server API port."""
        self.refusing = 0
        """Connections refused at once, half-closed until the client reads the 503."""
        self.on_refused: Callable[[str], None] | None = None
        """Told the code (``descriptors``, ``handshakes``) of each WebSocket-port connection
        refused at connect (the gateway counts them in its handshakes-refused metric)."""

    def budget(self, *, limit: int | None, baseline: int) -> None:
        """Set the limit and the descriptors open besides the client sockets."""
        self._spare_at_start = None if limit is None else limit - baseline

    @property
    def spare(self) -> int | None:
        """Descriptors left, as far as the client sockets go (None: no limit)."""
        if self._spare_at_start is None:
            return None
        return self._spare_at_start - self.ws - self.api - self.refusing

    def _accept_refusal(self) -> Refusal | None:
        spare = self.spare
        if spare is not None and spare < self.reserve // 2:
            return Refusal(
                GATEWAY_FULL,
                "descriptors",
                f"{spare} descriptors left, under half the --fd-reserve ({self.reserve})",
            )
        return None

    def open_ws(self) -> Refusal | None:
        """A TCP connection arrived on the WebSocket port (it already holds its
        descriptor): count it as handshaking, or say why it is closed at once (then it
        is not counted)."""
        refused = self._accept_refusal()
        if refused is None and self.handshaking >= self._max_handshakes:
            refused = Refusal(
                GATEWAY_FULL,
                "handshakes",
                f"{self.handshaking} handshakes already under way (--max-handshakes)",
            )
        if refused is None:
            self.ws += 1
            self.handshaking += 1
        elif self.on_refused is not None:
            self.on_refused(refused.code)
        return refused

    def upgraded(self) -> None:
        """A counted connection finished its handshake: it is a WebSocket now."""
        if self.handshaking > 0:
            self.handshaking -= 1

    def close_ws(self, *, handshaking: bool) -> None:
        """A counted connection on the WebSocket port is gone."""
        self.ws = max(0, self.ws - 1)
        if handshaking:
            self.upgraded()

    def upgrade_refusal(self) -> Refusal | None:
        """Whether one more WebSocket may be kept (checked before the upgrade)."""
        spare = self.spare
        if spare is not None and spare < self.reserve:
            return Refusal(
                GATEWAY_FULL,
                "gateway_full",
                "this gateway is at its open-file limit (the descriptors left are kept "
                "for /healthz, the hubs and Redis: --fd-reserve); try another gateway "
                "or later",
            )
        return None

    def open_api(self, max_connections: int) -> Refusal | None:
        """A TCP connection arrived on the server API port: count it, or say why not."""
        refused = self._accept_refusal()
        if refused is None and self.api >= max_connections:
            refused = Refusal(
                GATEWAY_FULL,
                "api_connections",
                f"{self.api} server API connections open (--api-max-connections)",
            )
        if refused is None:
            self.api += 1
        return refused

    def close_api(self) -> None:
        """A counted server API connection is gone."""
        self.api = max(0, self.api - 1)

    def fit(self, max_connections: int, others: int = 0) -> Fit:
        """Whether ``max_connections`` WebSockets, and ``others`` sockets besides (the
        server API's), fit under the limit with the reserve kept."""
        if self._spare_at_start is None:
            return Fit(True, max_connections)
        room = max(0, self._spare_at_start - self.reserve - others)
        return Fit(max_connections <= room, room)


def budget_at_start(sockets: Sockets, *, max_connections: int, api_connections: int) -> None:
    """Measure the descriptors open now and the limit (once the gateway's own links are
    up, before it serves), set ``sockets``' budget, and warn when ``max_connections``
    WebSockets (and ``api_connections`` server API ones) cannot fit under it."""
    limit = soft_limit()
    baseline = open_descriptors() or 0
    sockets.budget(limit=limit, baseline=baseline)
    fit = sockets.fit(max_connections, api_connections)
    if not fit.fits:
        logger.warning(
            "--max-connections %d cannot fit under the open-file limit (%s descriptors: "
            "%d open now, --fd-reserve %d kept, %d for --api-max-connections): beyond "
            "about %d WebSockets, upgrades get HTTP 503; raise the hard limit (systemd: "
            "LimitNOFILE=) or lower --max-connections",
            max_connections,
            limit,
            baseline,
            sockets.reserve,
            api_connections,
            fit.room,
        )
