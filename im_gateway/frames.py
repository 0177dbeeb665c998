"""Client frames in, server frames out: pure parsing, validation and encoding, no I/O.

:func:`parse` turns one WebSocket message into a frame dataclass or raises
:class:`~im_gateway.errors.FrameError` (and nothing else) with a pinned code. The
``encode_*`` functions build the server's JSON frames with the keys DESIGN.md pins.
A message pushed to many sockets is encoded once (:func:`message_prefix`) and each
recipient's inbox position is spliced in (:func:`with_seq`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from transmit_hub.types import Message, MessageFields

from .errors import BadPosition, FrameError
from .positions import group_seq, stream_position

HEARTBEAT: Final = 0
PRIVATE: Final = 1
GROUP: Final = 2
ACCEPTED: Final = 10
ACK: Final = 11
JOIN: Final = 12
LEAVE: Final = 13
REPLAY: Final = 14
ERROR: Final = 99

BAD_REQUEST: Final = "bad_request"
TOO_LARGE: Final = "too_large"
NOT_MEMBER: Final = "not_member"
RATE_LIMITED: Final = "rate_limited"
INTERNAL: Final = "internal"

UINT64_MAX: Final = 2**64 - 1
INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
MAX_ID_LENGTH: Final = 128
DEFAULT_MAX_CONTENT: Final = 16 * 1024

_DUMPS = json.encoder.encode_basestring
"""A str as a JSON string literal, non-ASCII kept (what ``json.dumps(s, ensure_ascii=False)``
gives, without the encoder's Python-level dispatch: this runs several times per message)."""


_FAST_LOADS = msgspec.json.Decoder().decode
"""JSON to Python objects, in C: several times faster than ``json.loads`` on a client
frame. Only its successes are used: any text it refuses is parsed again by ``json.loads``,
whose answer (or error) is the one the gateway gives, so both accept the same frames with
the same values (arbitrary-size integers, lone surrogate escapes such as ``"\\ud800"``)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Type 0: the gateway answers with a heartbeat."""


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Type 1 (private, ``to`` is a user) or 2 (group, ``to`` is a group)."""

    type: int
    id: str
    to: int
    content_type: int
    content: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Type 11: the client has everything up to position ``upto`` (cumulative) of its
    inbox, or with ``group``, of that large group's stream (seq ``g<group>:<upto>``)."""

    upto: int
    group: int | None = None


@dataclass(frozen=True, slots=True)
class GroupChange:
    """Type 12 (join) or 13 (leave) group ``to``."""

    type: int
    id: str
    to: int


@dataclass(frozen=True, slots=True)
class Replay:
    """Type 14: send what came after position ``after`` (``None``: the acknowledged one)
    of the inbox, or with ``group``, of that large group's stream."""

    after: int | None
    group: int | None = None


ClientFrame = Heartbeat | SendMessage | Ack | GroupChange | Replay

# Every message a client sends is a SendMessage: its slots are filled directly, for about
# a third of the CPU of the frozen dataclass's __init__ (object.__setattr__ per field);
# the object is the same (tests/im_gateway/test_frames_fast.py).
_new = object.__new__
_SEND_SET = tuple(
    SendMessage.__dict__[name].__set__ for name in ("type", "id", "to", "content_type", "content")
)


def _send_message(
    kind: int, frame_id: str, to: int, content_type: int, content: str
) -> SendMessage:
    frame: SendMessage = _new(SendMessage)
    set_type, set_id, set_to, set_content_type, set_content = _SEND_SET
    set_type(frame, kind)
    set_id(frame, frame_id)
    set_to(frame, to)
    set_content_type(frame, content_type)
    set_content(frame, content)
    return frame


_HEARTBEAT_FRAME: Final = Heartbeat()


class _Fields(msgspec.Struct):
    """The fields of the frames a client sends most (messages, acks, heartbeats) as
    msgspec decodes them for :func:`parse`; other keys are ignored, as ``json.loads`` then
    ``dict.get`` ignore them. A missing field gets a value its check refuses (a missing
    ``contentType`` is 0, as it is for :func:`parse_any`)."""

    type: int
    id: str = ""
    to: int = -1
    content: str | None = None
    contentType: int = 0
    seq: str | None = None


_FAST_FIELDS = msgspec.json.Decoder(_Fields).decode
"""A client frame straight into its fields, in C. Only frames that pass every check of
:func:`parse_any` are answered from it; anything else (another type, a field of another
JSON type, a number or size beyond a limit, text it refuses) is parsed again by
:func:`parse_any`, whose answer is the one given (tests/im_gateway/test_frames_fast.py)."""


def parse(data: str | bytes, *, max_content: int = DEFAULT_MAX_CONTENT) -> ClientFrame:
    """One client frame from a WebSocket message; raises :class:`FrameError` only."""
    try:
        fields = _FAST_FIELDS(data)
    except Exception:
        return parse_any(data, max_content=max_content)
    kind = fields.type
    if kind in (PRIVATE, GROUP):
        # msgspec's strings are valid Unicode (it refuses lone surrogates): an id needs
        # no encoding to be checked, and an ASCII content's size is its length.
        frame_id, to, content = fields.id, fields.to, fields.content
        content_type = fields.contentType
        if (
            content is not None
            and 0 < len(frame_id) <= MAX_ID_LENGTH
            and 0 <= to <= UINT64_MAX
            and INT32_MIN <= content_type <= INT32_MAX
            and (len(content) <= max_content if content.isascii() else _fits(content, max_content))
        ):
            return _send_message(kind, frame_id, to, content_type, content)
    elif kind == HEARTBEAT:
        return _HEARTBEAT_FRAME
    elif kind == ACK and fields.seq:
        try:
            group, upto = stream_position(fields.seq)
        except BadPosition:
            pass
        else:
            return Ack(upto, group)
    return parse_any(data, max_content=max_content)


def _fits(text: str, limit: int) -> bool:
    try:
        return len(text.encode("utf-8")) <= limit
    except UnicodeEncodeError:
        return False


def parse_any(data: str | bytes, *, max_content: int = DEFAULT_MAX_CONTENT) -> ClientFrame:
    """:func:`parse` for every frame: each check in turn, with its error."""
    try:
        obj = _FAST_LOADS(data)
    except Exception:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise FrameError(BAD_REQUEST, "frame is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise FrameError(BAD_REQUEST, "frame must be a JSON object")
    frame_id = _optional_id(obj)
    kind = obj.get("type")
    if type(kind) is not int:
        raise FrameError(BAD_REQUEST, "field 'type' must be an integer", frame_id)
    if kind == HEARTBEAT:
        return _HEARTBEAT_FRAME
    if kind in (PRIVATE, GROUP):
        content = obj.get("content")
        if not isinstance(content, str):
            raise FrameError(BAD_REQUEST, "field 'content' must be a string", frame_id)
        size = _utf8_size(content, "content", frame_id)
        if size > max_content:
            raise FrameError(
                TOO_LARGE, f"content is {size} bytes; the limit is {max_content}", frame_id
            )
        content_type = obj.get("contentType", 0)
        if type(content_type) is not int or not INT32_MIN <= content_type <= INT32_MAX:
            raise FrameError(BAD_REQUEST, "field 'contentType' must be an int32", frame_id)
        return _send_message(
            kind, _required_id(frame_id), _uint64(obj, "to", frame_id), content_type, content
        )
    if kind == ACK:
        seq = obj.get("seq")
        if seq is None:
            raise FrameError(BAD_REQUEST, "field 'seq' is required", frame_id)
        group, upto = _seq(seq, frame_id)
        return Ack(upto, group)
    if kind in (JOIN, LEAVE):
        return GroupChange(type=kind, id=_required_id(frame_id), to=_uint64(obj, "to", frame_id))
    if kind == REPLAY:
        seq = obj.get("seq")
        if seq is None:
            return Replay(None)
        group, after = _seq(seq, frame_id)
        return Replay(after, group)
    raise FrameError(BAD_REQUEST, f"unknown frame type {kind}", frame_id)


def too_fast(frame: ClientFrame) -> FrameError:
    """The refusal of a frame beyond the rate limit."""
    return FrameError(RATE_LIMITED, "too many frames; slow down", getattr(frame, "id", None))


def _utf8_size(text: str, name: str, frame_id: str | None) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. "\ud800"
        raise FrameError(BAD_REQUEST, f"field '{name}' is not valid Unicode", frame_id) from exc


def _optional_id(obj: dict[str, object]) -> str | None:
    value = obj.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value
    return None


def _required_id(frame_id: str | None) -> str:
    if frame_id is None:
        raise FrameError(
            BAD_REQUEST, f"field 'id' must be a non-empty string of at most {MAX_ID_LENGTH}"
        )
    return frame_id


def _uint64(obj: dict[str, object], name: str, frame_id: str | None) -> int:
    value = obj.get(name)
    if type(value) is int:
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise FrameError(
            BAD_REQUEST, f"field '{name}' must be a uint64 (number or decimal string)", frame_id
        )
    if not 0 <= number <= UINT64_MAX:
        raise FrameError(BAD_REQUEST, f"field '{name}' is out of the uint64 range", frame_id)
    return number


def _seq(value: object, frame_id: str | None) -> tuple[int | None, int]:
    if isinstance(value, str) and value:
        try:
            return stream_position(value)
        except BadPosition:
            pass
    raise FrameError(
        BAD_REQUEST,
        "field 'seq' must be an inbox position (a decimal string below 2**64, such as \"17\")"
        ' or a large group\'s ("g7:17")',
        frame_id,
    )


# --- server frames -------------------------------------------------------------------

HEARTBEAT_REPLY: Final = '{"type":0}'


def message_prefix(message: Message) -> str:
    """A message frame up to its ``seq`` value; finish it with :func:`with_seq`."""
    return (
        f'{{"type":{message.type},"id":{_DUMPS(message.id)},"from":{message.sender},'
        f'"to":{message.to},"contentType":{message.content_type},"time":"{message.time}",'
        f'"content":{_DUMPS(message.content)},"seq":"'
    )


def fields_prefix(fields: MessageFields) -> str:
    """:func:`message_prefix` of a message's fields (a delivery row's; the same format,
    written out twice so that neither path builds the other's input first: a hypothesis
    test in tests/im_gateway/test_frames.py holds the two equal)."""
    mid, sender, to, kind, content_type, time, content = fields
    return (
        f'{{"type":{kind},"id":{_DUMPS(mid)},"from":{sender},"to":{to},'
        f'"contentType":{content_type},"time":"{time}","content":{_DUMPS(content)},"seq":"'
    )


def with_seq(prefix: str, seq: str) -> str:
    """The full message frame for one recipient: ``seq`` is a trusted inbox position."""
    return f'{prefix}{seq}"}}'


def encode_message(message: Message, seq: str) -> str:
    """A message frame (type 1 or 2) for the inbox position ``seq``."""
    return with_seq(message_prefix(message), seq)


def encode_accepted(frame_id: str, msg_id: str, time_ms: int) -> str:
    """Type 10: the client's frame ``frame_id`` is accepted as message ``msg_id``."""
    return f'{{"type":10,"id":{_DUMPS(frame_id)},"msgId":{_DUMPS(msg_id)},"time":"{time_ms}"}}'


def encode_error(code: str, message: str, frame_id: str | None = None) -> str:
    """Type 99: a refused frame; ``id`` is present when the frame carried a usable one."""
    if frame_id is None:
        return f'{{"type":99,"code":{_DUMPS(code)},"message":{_DUMPS(message)}}}'
    return (
        f'{{"type":99,"id":{_DUMPS(frame_id)},"code":{_DUMPS(code)},"message":{_DUMPS(message)}}}'
    )


MARKER_GROUPS_MAX: Final = 10_000
"""Groups an end marker lists at most (about 460 KB at most, under the Python client's
1 MiB frame bound; a user may be in more with a raised ``--max-groups-per-user``: the
rest, unlisted, catch up with their next post)."""


def encode_replay_end(
    upto: int,
    *,
    truncated: bool = False,
    group: int | None = None,
    starts: Sequence[tuple[int, int]] = (),
) -> str:
    """Type 14 from the gateway: the replay ends at position ``upto`` (of the inbox, or
    with ``group``, of that large group's stream); ``truncated`` when messages the client
    had not acknowledged were trimmed before it got them (by length or age).

    ``starts`` (the connect replay's marker only): the large groups the connection
    follows, each with the position its replay started after, as ``"groups"``, a list of
    group seqs (absent when empty). A client that has shown less of a stream than that
    asks for the rest (type 14 from its own position, or from ``g<group>:0`` for a stream
    it has shown nothing of: the gateway starts at the user's join)."""
    seq = upto if group is None else group_seq(group, upto)
    extra = ',"truncated":true' if truncated else ""
    if starts:
        listed = ",".join(f'"{group_seq(g, p)}"' for g, p in starts[:MARKER_GROUPS_MAX])
        extra += f',"groups":[{listed}]'
    return f'{{"type":14,"seq":"{seq}"{extra}}}'


_ID_TIME = re.compile(r'"id":"([^"]*)","from":-?\d+,"to":-?\d+,"contentType":-?\d+,"time":"(\d+)"')


def order_of(frame: str) -> tuple[int, str]:
    """A message frame this module encoded, its place in time order: its ``time``, then
    its id (ids made by one process sort by creation, so messages of one millisecond
    keep the order they were made in); ``(0, "")`` when it has none."""
    found = _ID_TIME.search(frame)
    return (int(found.group(2)), found.group(1)) if found else (0, "")
