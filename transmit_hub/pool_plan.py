"""The hub pool's pure parts (:class:`~transmit_hub.pool.HubPool` does the I/O): plain
functions and small classes, tested without a loop.

- :func:`rank` and :func:`route_key`: which hub carries a map (rendezvous hashing);
- :func:`plan` and :class:`Absences`: which shares go elsewhere, where a hub said lately
  that their gateway is not attached to it;
- :class:`SendLog` and :func:`merge_resend`: what to send again when a hub breaks.

What each decides, and why, is told in :mod:`transmit_hub.pool`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from .errors import ConfigError
from .types import GatewayId, MessageId, TransmitMap

__all__ = ["Absences", "SendLog", "merge_resend", "plan", "rank", "route_key"]

ABSENT_FOR: Final = 2.0
"""Seconds a hub's "not attached" for a gateway steers that gateway's shares elsewhere."""
RANK_CACHE: Final = 4096
"""Routing keys whose hub order is remembered (the cache is emptied when it is full)."""
TRIM_SLACK: Final = 0.05
"""Seconds past its window a send record may stay before the records past it are
dropped together (a few hundred at full load, rather than one per send)."""


def route_key(gateway_id: str, tmap: TransmitMap) -> str:
    """The key a map is placed by: the sender gateway and the map's target gateways."""
    users = tmap.users
    if len(users) == 1:
        (target,) = users
        return f"{gateway_id}>{target}"
    return f"{gateway_id}>" + ",".join(sorted(users))


def rank(key: str, hubs: Sequence[str]) -> tuple[str, ...]:
    """``hubs`` in rendezvous order for ``key``: highest hash of (hub, key) first.

    Adding or losing a hub moves only the keys whose first hub it is.
    """

    def score(hub: str) -> bytes:
        return hashlib.blake2b(f"{hub}|{key}".encode(), digest_size=8).digest()

    return tuple(sorted(hubs, key=score, reverse=True))


class Absences:
    """Which hubs said lately that a gateway is not attached to them (for ``ttl`` s)."""

    def __init__(self, ttl: float = ABSENT_FOR) -> None:
        self._ttl = ttl
        self._until: dict[tuple[str, GatewayId], float] = {}

    def __bool__(self) -> bool:
        return bool(self._until)

    def mark(self, hub: str, gateway: GatewayId, now: float) -> None:
        """``hub`` said ``gateway`` is not attached to it."""
        self._until[(hub, gateway)] = now + self._ttl
        if len(self._until) > RANK_CACHE:  # bounded: forget what has expired
            self._until = {k: t for k, t in self._until.items() if t > now}

    def absent(self, hub: str, gateway: GatewayId, now: float) -> bool:
        """Whether ``hub`` said lately that ``gateway`` is not attached to it."""
        until = self._until.get((hub, gateway))
        if until is None:
            return False
        if until <= now:
            del self._until[(hub, gateway)]
            return False
        return True


def plan(
    tmap: TransmitMap,
    order: Iterable[str],
    absent: Callable[[str, GatewayId], bool] | None = None,
) -> list[tuple[str, TransmitMap]]:
    """Which hub carries which part of ``tmap``; ``[]`` when ``order`` is empty.

    ``order``: the attached hubs, best first. The map goes whole through the first,
    except the shares of targets that ``absent`` says are missing there and present on
    a later hub: each of those goes through the first such hub.
    """
    hubs = list(order)
    if not hubs:
        return []
    first = hubs[0]
    if absent is None or len(hubs) == 1:
        return [(first, tmap)]
    moved: dict[str, dict[GatewayId, Any]] = {}
    for gateway, recipients in tmap.users.items():
        if not absent(first, gateway):
            continue
        for hub in hubs[1:]:
            if not absent(hub, gateway):
                moved.setdefault(hub, {})[gateway] = recipients
                break
    if not moved:
        return [(first, tmap)]
    gone = {g for shares in moved.values() for g in shares}
    parts: list[tuple[str, TransmitMap]] = []
    rest = {g: rs for g, rs in tmap.users.items() if g not in gone}
    if rest:
        parts.append((first, TransmitMap(tmap.message, rest)))
    parts.extend((hub, TransmitMap(tmap.message, shares)) for hub, shares in moved.items())
    return parts


_Sent = tuple[TransmitMap, str, float, frozenset[str], int]
"""A record: the map, the hub it went through, when, every hub that carried it so far,
and its number (records ever made before it). A plain tuple: one is made per send."""


class SendLog:
    """What went through which hub lately: the maps to send again when a hub breaks, and
    the shares to try elsewhere when a hub says their gateway is not attached to it.

    Bounded: a record is forgotten after ``window`` seconds, or when ``max_entries``
    newer ones exist. A record costs one tuple in a deque (this is on every send).
    Records past the window are dropped together once the oldest is ``TRIM_SLACK``
    seconds past it (not one per send); :meth:`through` trims to the window first.

    The look-up by message id (a hub's "not attached" notice) goes through an index by
    message id, brought up to date at each look-up with the records made since the
    last one (notices are rare; sends are not), so it costs the same whatever a hub
    claims: a hub may name ids never sent, each one dict look-up, not a scan. Index
    entries of forgotten records are skipped by their number, and the index is made
    anew once it holds twice as many ids as there are records.
    """

    def __init__(self, *, window: float, max_entries: int) -> None:
        if window < 0 or max_entries < 1:
            raise ConfigError("need window >= 0 and max_entries >= 1")
        self._window = window
        self._lag = window + TRIM_SLACK
        self._max = max_entries
        self._sent: deque[_Sent] = deque()
        self._made = 0
        """Records made since the start (the next record's number)."""
        self._by_id: dict[MessageId, list[_Sent]] = {}
        """Message id -> its records, oldest first (almost always one); may hold
        forgotten ones (numbered below the oldest kept)."""
        self._indexed = 0
        """Records numbered below this are in :attr:`_by_id`."""

    def __len__(self) -> int:
        return len(self._sent)

    def record(
        self, tmap: TransmitMap, hub: str, now: float, tried: frozenset[str] | None = None
    ) -> None:
        """``tmap`` went through ``hub`` at ``now``; ``tried``: every hub that carried it,
        ``hub`` included (default: ``hub`` alone)."""
        sent = self._sent
        made = self._made
        self._made = made + 1
        sent.append((tmap, hub, now, frozenset((hub,)) if tried is None else tried, made))
        if len(sent) > self._max:
            sent.popleft()
        if sent[0][2] < now - self._lag:
            self.trim(now)

    def trim(self, now: float) -> None:
        """Forget what is older than the window, and the oldest beyond ``max_entries``."""
        sent = self._sent
        horizon = now - self._window
        while sent and (len(sent) > self._max or sent[0][2] < horizon):
            sent.popleft()

    def through(self, hub: str, now: float) -> list[TransmitMap]:
        """The maps that went through ``hub`` in the window, oldest first."""
        self.trim(now)
        return [record[0] for record in self._sent if record[1] == hub]

    def share(
        self, message_id: MessageId, gateway: GatewayId, hub: str
    ) -> tuple[TransmitMap, frozenset[str]] | None:
        """``gateway``'s share of the message sent through ``hub``, and the hubs tried
        (``None``: no such share went through ``hub`` in the window)."""
        oldest = self._index()
        for tmap, via, _, tried, number in reversed(self._by_id.get(message_id, ())):
            if number < oldest:
                break  # forgotten, and so is every older one
            if via == hub and gateway in tmap.users:
                users = tmap.users
                part = (
                    tmap
                    if len(users) == 1
                    else TransmitMap(tmap.message, {gateway: users[gateway]})
                )
                return part, tried
        return None

    def _index(self) -> int:
        """Bring the index up to date; the number of the oldest record kept."""
        sent = self._sent
        oldest = sent[0][4] if sent else self._made
        if len(self._by_id) > 2 * len(sent) + 1024:
            self._by_id = {}  # mostly forgotten ids: made anew from the records kept
            self._indexed = oldest
        new: list[_Sent] = []
        for record in reversed(sent):
            if record[4] < self._indexed:
                break
            new.append(record)
        by_id = self._by_id
        for record in reversed(new):
            by_id.setdefault(record[0].message.id, []).append(record)
        self._indexed = self._made
        return oldest


def merge_resend(
    window: Sequence[TransmitMap], waiting: Sequence[TransmitMap]
) -> list[TransmitMap]:
    """What a broken hub had: the maps written in the window, then those still waiting.

    ``waiting`` (never written, oldest first) is newer than anything written, and the
    window may hold some of it: each map comes out once, in the order it was sent.
    """
    held = {id(m) for m in waiting}
    return [*(m for m in window if id(m) not in held), *waiting]
