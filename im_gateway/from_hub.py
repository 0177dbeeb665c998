"""One frame of the hub's deliveries to this gateway's sockets, as the hub link reads them.

The fan-out's hot path from the hub (:meth:`~im_gateway.fanout.Fanout.start` has the link
hand it each frame's deliveries as rows, :data:`~transmit_hub.types.DeliveryRow`): an
ordinary message (type 1 or 2, inbox positions for seqs) is checked as
:mod:`im_gateway.inbound` checks any delivery, encoded once, and pushed to each of its
recipients' sockets here from the row's fields, with no Message, Recipient or Delivery
built for it. Anything else (a control, a large group's post, a type no client may get)
goes to the fan-out as a :class:`~transmit_hub.types.Delivery`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from transmit_hub.types import (
    MESSAGE_GROUP,
    MESSAGE_PRIVATE,
    Delivery,
    DeliveryRow,
    UserId,
    row_delivery,
)

from . import frames, inbound
from .frames import UINT64_MAX
from .ports import Connection
from .positions import MAX_POSITION
from .throttle import Throttled

logger = logging.getLogger(__name__)

_ORDINARY = frozenset((MESSAGE_PRIVATE, MESSAGE_GROUP))


def push(
    rows: Sequence[DeliveryRow],
    sessions: Mapping[UserId, Sequence[Connection]],
    *,
    other: Callable[[Delivery], None],
    bad: Throttled,
    max_content: int,
) -> list[int]:
    """Push one frame's ordinary messages to their recipients' ``sessions``; hand every
    other delivery to ``other``; count the malformed in ``bad``. Returns the times of the
    messages written to sockets (for the push latency histogram)."""
    pushed: list[int] = []
    for row in rows:
        fields, users, seqs = row
        if fields[3] not in _ORDINARY:
            other(row_delivery(row))  # a control, or refused
            continue
        problem = inbound.fields_problem(fields, max_content)
        if problem is not None:
            logger.debug("dropped a delivery from the hub: %s", problem)
            bad.hit()
            continue
        prefix: str | None = None
        malformed = 0
        for i in range(len(users)):
            seq = seqs[i]
            # inbound.positions' check of a recipient, inlined (once per recipient): a seq
            # of 1 to 20 ASCII digits, a position above 0, a uint64 user id.
            if 0 < len(seq) <= 20 and seq.isdigit() and seq.isascii():
                pos = int(seq)
                user = users[i]
                if 0 < pos <= MAX_POSITION and 0 <= user <= UINT64_MAX:
                    connections = sessions.get(user)
                    if connections:
                        if prefix is None:
                            prefix = frames.fields_prefix(fields)
                        text = frames.with_seq(prefix, str(pos))
                        for connection in connections:
                            connection.deliver(pos, text)
                    continue
            elif i == 0 and seq[:1] == "g":
                other(row_delivery(row))  # a large group's post (or a claim to be one)
                break
            malformed += 1
        if malformed:
            logger.debug("dropped %d malformed recipients of a delivery from the hub", malformed)
            bad.hit(malformed)
        if prefix is not None:
            pushed.append(fields[5])
    return pushed
