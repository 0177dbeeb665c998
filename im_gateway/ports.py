"""What the fan-out needs of its two sides: a local socket (:class:`Connection`, a
:class:`~im_gateway.sessions.Session`) and the hub link (:class:`Link`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from transmit_hub.link import LinkEvent
from transmit_hub.types import TransmitMap, UserId


class Connection(Protocol):
    """What the fan-out needs of a local socket (a :class:`~im_gateway.sessions.Session`)."""

    @property
    def user(self) -> UserId: ...

    def deliver(self, pos: int, text: str) -> None:
        """A message at inbox position ``pos`` (``text`` is its frame)."""
        ...

    def own(self, pos: int) -> None:
        """The connection sent the message at ``pos`` itself."""
        ...

    def deliver_group(self, group: int, pos: int, text: str) -> None:
        """A post at ``pos`` in large group ``group``'s stream."""
        ...

    def own_group(self, group: int, pos: int) -> None:
        """The connection sent the post at ``pos`` in ``group``'s stream itself."""
        ...

    def regroup(self, left: int | None = None) -> None:
        """The user's large groups changed: read them again; ``left``: the user left that
        group (stop following it at once)."""
        ...

    @property
    def follows_groups(self) -> bool:
        """True while the connection follows a large group's stream."""
        ...

    def catch_up(self, end: int | None = None) -> None:
        """Read the inbox to its end (pushes may have been missed); ``end``: the inbox's
        newest position when known (nothing to read when the connection has it)."""
        ...

    def rebase(self) -> None:
        """The store lost its data: inbox positions start again from 1."""
        ...

    def disconnect(self, code: int, reason: str) -> None:
        """Close the socket with ``code``."""
        ...


class Link(Protocol):
    """The part of :class:`transmit_hub.link.HubLink` the fan-out uses."""

    @property
    def connected(self) -> bool: ...

    def send(self, tmap: TransmitMap) -> bool: ...

    def send_everywhere(self, tmap: TransmitMap) -> bool: ...

    def events(self) -> AsyncIterator[LinkEvent]: ...
