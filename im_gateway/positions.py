"""Inbox positions: what a seq is, parsed once for everyone (pure).

Each inbox numbers its messages 1, 2, 3, ...; the seq a client sees is that number in
decimal, and ``0`` means "before everything". Frames, hub deliveries, the server API and
the store all parse a seq with :func:`position`, so nothing a client or a hub sends can
pass as one unless it is one.
"""

from __future__ import annotations

from .errors import BadPosition

MAX_POSITION = 2**64 - 1
"""Positions are uint64."""


def position(seq: str) -> int:
    """An inbox position from its seq: ``"0"`` (or ``""``) is 0, ``"17"`` is 17.

    Decimal digits only, at most ``2**64 - 1``; raises
    :class:`~im_gateway.errors.BadPosition` (a ValueError) for anything else, so nothing a
    client or a hub sends can pass as one.
    """
    if not seq:
        return 0
    if len(seq) <= 20 and seq.isascii() and seq.isdigit():
        value = int(seq)
        if value <= MAX_POSITION:
            return value
    raise BadPosition(f"bad inbox position {seq[:40]!r}")


def group_seq(group: int, pos: int) -> str:
    """The seq of position ``pos`` in large group ``group``'s stream: ``g<group>:<pos>``."""
    return f"g{group}:{pos}"


def stream_position(seq: str) -> tuple[int | None, int]:
    """``(None, position)`` for an inbox seq, ``(group, position)`` for ``g<group>:<pos>``.

    Raises :class:`~im_gateway.errors.BadPosition` for anything else.
    """
    if seq[:1] != "g":
        return None, position(seq)
    group, sep, pos = seq[1:].partition(":")
    if not sep or not group or not pos:
        raise BadPosition(f"bad group seq {seq[:40]!r}")
    try:
        return position(group), position(pos)
    except BadPosition:
        raise BadPosition(f"bad group seq {seq[:40]!r}") from None
