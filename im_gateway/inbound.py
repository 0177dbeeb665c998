"""What a hub delivers, checked as strictly as what a client sends: pure, no I/O.

A gateway never trusts a hub more than a client (DESIGN.md, "identity and TLS"): a
delivery whose message breaks a limit (type, ids, content size, UTF-8) is refused whole,
and a recipient whose user id or inbox position is malformed is refused alone. The
fan-out drops what is refused, counts it and logs it (throttled); the other deliveries of
the same frame go on.
"""

from __future__ import annotations

from collections.abc import Sequence

from transmit_hub.types import (
    MESSAGE_GROUP,
    MESSAGE_PRIVATE,
    Delivery,
    Message,
    MessageFields,
    UserId,
)

from .errors import BadPosition
from .frames import INT32_MAX, INT32_MIN, MAX_ID_LENGTH, UINT64_MAX
from .positions import MAX_POSITION, stream_position

_MAX_TIME = 2**63 - 1


def message_problem(message: Message, *, max_content: int) -> str | None:
    """Why ``message`` may not be pushed to a client, or None when it may."""
    m = message
    fields = (m.id, m.sender, m.to, m.type, m.content_type, m.time, m.content)
    return fields_problem(fields, max_content)


def fields_problem(fields: MessageFields, max_content: int) -> str | None:
    """:func:`message_problem` of a message's fields (a delivery row's)."""
    mid, sender, to, kind, content_type, time, content = fields
    if kind not in (MESSAGE_PRIVATE, MESSAGE_GROUP):
        return f"message type {kind} is not 1 or 2"
    if not 0 < len(mid) <= MAX_ID_LENGTH:
        return "message id is empty or too long"
    if not mid.isascii():
        try:
            mid.encode("utf-8")
        except UnicodeEncodeError:
            return "message id is not valid Unicode"
    if not (0 <= sender <= UINT64_MAX and 0 <= to <= UINT64_MAX):
        return "from or to is not a uint64"
    if not INT32_MIN <= content_type <= INT32_MAX:
        return "contentType is not an int32"
    if not 0 <= time <= _MAX_TIME:
        return "time is out of range"
    # A character is at most 4 bytes in UTF-8: short content needs no encoding to check.
    if len(content) * 4 > max_content or not content.isascii():
        try:
            size = len(content.encode("utf-8"))
        except UnicodeEncodeError:
            return "content is not valid Unicode"
        if size > max_content:
            return f"content is {size} bytes; the limit is {max_content}"
    return None


def recipients(delivery: Delivery) -> tuple[list[tuple[UserId, int]], int]:
    """The (user, position) pairs of ``delivery`` that are well formed, and how many
    were not (a user id beyond uint64, a seq that is no inbox position)."""
    rs = delivery.recipients
    return positions([r.user_id for r in rs], [r.seq for r in rs])


def positions(users: Sequence[UserId], seqs: Sequence[str]) -> tuple[list[tuple[UserId, int]], int]:
    """:func:`recipients` of a delivery row's users and their seqs (one per user)."""
    good: list[tuple[UserId, int]] = []
    bad = 0
    for i in range(len(users)):
        seq = seqs[i]
        # positions.position, inlined (once per delivered message): 1 to 20 ASCII digits.
        if 0 < len(seq) <= 20 and seq.isdigit() and seq.isascii():
            pos = int(seq)
            user = users[i]
            if 0 < pos <= MAX_POSITION and 0 <= user <= UINT64_MAX:
                good.append((user, pos))
                continue
        bad += 1
    return good, bad


def group_post(delivery: Delivery) -> tuple[int, int] | None:
    """``(group, position)`` when ``delivery`` is a large group's post (its one recipient
    carries a ``g<group>:<n>`` seq for the group the message is to); ``(group, 0)`` when
    it claims to be one and is malformed; None for an ordinary delivery."""
    rs = delivery.recipients
    if not rs or not rs[0].seq.startswith("g"):
        return None
    try:
        group, pos = stream_position(rs[0].seq)
    except BadPosition:
        return (0, 0)
    m = delivery.message
    if len(rs) != 1 or group is None or m.type != MESSAGE_GROUP or m.to != group:
        return (0, 0)
    return group, pos
