"""Client text frames read straight from the bytes of a read: pure, no I/O.

The gateway's :class:`~im_gateway.ws.Connection` hands the start of each read here while
websockets' parser waits between frames: whole, final, masked text frames (no RSV bit, no
extension) are unmasked and offered to the session at once, without the parser's
generators, a ``Frame`` object and an event each. Anything else (a partial frame, another
opcode, a frame websockets would refuse) is left where it starts, for websockets' parser
to see the stream exactly where it would have.
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask


def masked_text(data: bytes, pos: int, limit: int | None) -> tuple[str, int] | None:
    """The text of the client frame at ``data[pos:]`` and the position after it, when it
    is a whole, final, masked text frame (no RSV bit) of at most 65,535 bytes and
    ``limit`` (None: no limit), its payload valid UTF-8; else None (websockets' parser
    decides about it: it may be partial, another frame, or one to refuse)."""
    end = len(data)
    if end - pos < 6 or data[pos] != 0x81:
        return None
    length = data[pos + 1]
    if length < 0x80:  # unmasked
        return None
    length &= 0x7F
    start = pos + 6
    if length == 126:
        start = pos + 8
        if start > end:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
    elif length == 127:
        return None
    stop = start + length
    if stop > end or (limit is not None and length > limit):
        return None
    try:
        return str(apply_mask(data[start:stop], data[start - 4 : start]), "utf-8"), stop
    except UnicodeDecodeError:
        return None


def take_texts(
    data: bytes, limit: int | None, offer: Callable[[str], bool]
) -> tuple[int, str | None]:
    """Offer the whole text frames at the start of ``data`` to ``offer``, in order, up to
    the first that is not one (:func:`masked_text`) or that ``offer`` declines (False).
    Returns where the frames taken end, and the declined frame's text (it ends there too),
    or None when none was declined."""
    pos = 0
    while (taken := masked_text(data, pos, limit)) is not None:
        text, pos = taken
        if not offer(text):
            return pos, text
    return pos, None
