"""The client protocol's vocabulary, shared by :mod:`im_gateway.client_state` (the pure
state machine) and :mod:`im_gateway.client` (its asyncio adapter): the frame types, what
a submitted frame's answer is (:class:`Sent` or :class:`Refused`), a :class:`Message` as
the application sees it, and positions (``seq``) as the wire writes them.

Imports only the standard library: :mod:`im_gateway.client` must stay usable without the
server's dependencies.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
from dataclasses import dataclass
from typing import Any, Final

HEARTBEAT: Final = 0
PRIVATE: Final = 1
GROUP: Final = 2
ACCEPTED: Final = 10
ACK: Final = 11
JOIN: Final = 12
LEAVE: Final = 13
REPLAY: Final = 14
ERROR: Final = 99

RETRIED: Final = frozenset({"internal", "rate_limited"})
"""Type 99 codes the client handles itself by sending again after a backoff."""

HEARTBEAT_REPLY: Final = '{"type":0}'
"""A heartbeat's answer, as the gateway writes it."""

INBOX: Final = ""
"""The stream key of the user's inbox (large groups' streams are ``"g<group>"``)."""


class ClientError(Exception):
    """The root of the client's exceptions::

    ClientError
    └── Refused    the gateway refused a frame (type 99), or the token (``unauthorized``)
    """


class Refused(ClientError):
    """The gateway refused: ``code`` is the type 99 code, or ``"unauthorized"`` for a
    refused handshake (HTTP 401); ``message`` says why."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Sent:
    """A message stored for every recipient (type 10)."""

    client_id: str
    msg_id: str
    time: str
    """Server time in milliseconds since the Unix epoch, as a decimal string."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message for this user, as on the wire (``from`` is :attr:`sender`)."""

    id: str
    sender: int
    to: int
    """The user (type 1) or the group (type 2)."""
    type: int
    content_type: int
    time: str
    content: str
    seq: str


Answer = Sent | Refused

UINT64_MAX: Final = 2**64 - 1


def parse_seq(seq: object) -> tuple[str, int] | None:
    """``"17"`` -> ``("", 17)``; ``"g7:17"`` -> ``("g7", 17)``; anything else (a group
    or a position beyond the uint64 range too): None."""
    if not isinstance(seq, str) or not seq or len(seq) > 48 or not seq.isascii():
        return None
    stream, number = INBOX, seq
    if seq[0] == "g":
        group, sep, number = seq[1:].partition(":")
        if not sep or not group.isdigit() or int(group) > UINT64_MAX:
            return None
        stream = "g" + group
    if not number.isdigit() or int(number) > UINT64_MAX:
        return None
    return stream, int(number)


def with_groups(url: str) -> str:
    """``url`` asking for the connect replay's end marker to list the large groups
    followed (``groups=1``: the gateway leaves the pinned marker as it is otherwise)."""
    return f"{url}{'&' if '?' in url else '?'}groups=1"


def parse_group_starts(value: object, limit: int = 10_000) -> list[tuple[str, int]]:
    """The ``groups`` of a connect replay's end marker (a list of large groups' seqs):
    ``[("g7", 12), ...]``; what is malformed (not a list, not a group seq) is skipped, and
    at most ``limit`` are read; of a stream listed twice, the first (as the JavaScript
    client's ``listedStreams``)."""
    if not isinstance(value, list):
        return []
    starts: dict[str, int] = {}
    for item in value[:limit]:
        parsed = parse_seq(item)
        if parsed is not None and parsed[0] != INBOX:
            starts.setdefault(*parsed)
    return list(starts.items())


def format_seq(stream: str, pos: int) -> str:
    """The wire form of position ``pos`` in ``stream`` (the inverse of :func:`parse_seq`)."""
    return f"{stream}:{pos}" if stream else str(pos)


def parse_message(frame: dict[str, Any]) -> Message | None:
    """A message frame's fields, checked; None when any is missing or of the wrong type."""
    msg_id, sender, to, content_type = (
        frame.get("id"),
        frame.get("from"),
        frame.get("to"),
        frame.get("contentType", 0),
    )
    time, content, seq = frame.get("time"), frame.get("content"), frame.get("seq")
    if (
        not isinstance(msg_id, str)
        or type(sender) is not int
        or type(to) is not int
        or type(content_type) is not int
        or not isinstance(time, str)
        or not isinstance(content, str)
        or not isinstance(seq, str)
    ):
        return None
    return Message(msg_id, sender, to, frame["type"], content_type, time, content, seq)


def message_frame(
    to: int | None, group: int | None, content: str, content_type: int
) -> dict[str, Any]:
    """A type 1 (to user ``to``) or type 2 (to ``group``) frame without its id, checked."""
    if (to is None) == (group is None):
        raise ValueError("give exactly one of to= and group=")
    target = to if group is None else group
    if type(target) is not int or not 0 <= target <= UINT64_MAX:
        raise ValueError("to= and group= take a user or group id (an int in the uint64 range)")
    if not isinstance(content, str):
        raise TypeError("content must be a str")
    if type(content_type) is not int:
        raise TypeError("content_type must be an int")
    kind = PRIVATE if group is None else GROUP
    return {"type": kind, "to": target, "contentType": content_type, "content": content}


def group_id(group: int) -> int:
    """``group``, checked to be a group id (an int in the uint64 range)."""
    if type(group) is not int or not 0 <= group <= UINT64_MAX:
        raise ValueError("a group id is an int in the uint64 range")
    return group


def backoff(attempt: int, initial: float, cap: float) -> float:
    """Full-jitter-ish exponential backoff: between half and all of ``initial * 2**attempt``."""
    base: float = min(cap, initial * 2.0 ** min(attempt, 30))
    return base / 2 + random.random() * base / 2


def token_subject(token: str) -> int | None:
    """The user id in a JWT's ``sub``, read without checking the signature (only to tell
    this user's own messages; the gateway checks the token); None when it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    if type(sub) is int and 0 <= sub <= UINT64_MAX:
        return sub
    if isinstance(sub, str) and sub.isascii() and sub.isdigit() and int(sub) <= UINT64_MAX:
        return int(sub)
    return None


def close_echo(data: str | bytes, probing: bool) -> tuple[bool, bool]:
    """A frame read while :meth:`Client.close <im_gateway.client.Client.close>` waits for
    the gateway to take its last frames: (whether it ends the wait, whether the closing
    probe still runs). The probe's end marker ends it; without a probe, the heartbeat's
    answer does; a refused probe (a replay is running) leaves it to the heartbeat."""
    if data == HEARTBEAT_REPLY:
        return not probing, probing
    raw = data if isinstance(data, bytes) else data.encode()
    if b'"type":14' in raw:
        return True, probing
    return False, probing and b'"type":99' not in raw
