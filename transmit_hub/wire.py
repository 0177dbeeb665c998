"""The hot path of the Connect stream, over protobuf wire bytes: pure functions, no I/O.

A busy link carries hundreds of thousands of maps a second, and building protobuf
objects field by field costs far more in Python than the routing itself. So the two
frames that carry the traffic are handled here at the wire level:

- the link encodes a batch of :class:`TransmitMap` straight into the bytes of a
  ``ConnectRequest{batch}`` (:func:`encode_batch_request`);
- the hub walks a ``ConnectRequest`` frame without decoding the messages in it
  (:func:`split_batch_request`): for each map it keeps the ``Message`` bytes and, per
  target gateway, the ``UserIds`` bytes, and forwards them verbatim. Each delivery is
  encoded exactly once (:func:`delivery_entry`) and the writer joins ready entries
  into one ``ConnectResponse{batch}`` frame (:func:`delivery_batch_response`).

The bytes are standard protobuf (``transmit.v1``); ``tests/transmit_hub/test_wire.py``
checks every function against the generated classes through :mod:`transmit_hub.codec`,
which stays the one module that converts protobuf objects to our types. The decision
of what goes where mirrors :func:`transmit_hub.routing.split` exactly (same tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import ProtocolError
from .types import TransmitMap

__all__ = [
    "WireMap",
    "delivery_batch_response",
    "delivery_entry",
    "delivery_entry_from_body",
    "encode_batch_request",
    "encode_transmit_map",
    "has_message_id",
    "has_users",
    "length_delimited_fields",
    "notice_fields",
    "split_batch_request",
]

_U64 = (1 << 64) - 1
# Varints 0..127 are one byte: precomputed, the common case for lengths and small ints.
_SMALL = tuple(bytes((i,)) for i in range(128))


def _varint(n: int) -> bytes:
    if n < 0x80:
        if n >= 0:
            return _SMALL[n]
        if n < -(1 << 63):
            raise ValueError(f"integer {n} does not fit in 64 bits")
        n &= _U64  # negative int32/int64: ten-byte two's complement, as protobuf does
    elif n < 0x4000:  # one int's bytes: cheaper than a tuple, then bytes of it
        return ((n & 0x7F) | 0x80 | (n >> 7) << 8).to_bytes(2, "little")
    elif n < 0x200000:
        return ((n & 0x7F) | 0x80 | ((n >> 7) & 0x7F | 0x80) << 8 | (n >> 14) << 16).to_bytes(
            3, "little"
        )
    elif n < 0x10000000:
        return (
            (n & 0x7F)
            | 0x80
            | ((n >> 7) & 0x7F | 0x80) << 8
            | ((n >> 14) & 0x7F | 0x80) << 16
            | (n >> 21) << 24
        ).to_bytes(4, "little")
    elif n > _U64:
        raise ValueError(f"integer {n} does not fit in 64 bits")
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    result = 0
    shift = 0
    while True:
        try:
            b = buf[pos]
        except IndexError:
            raise ProtocolError("truncated varint") from None
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ProtocolError("varint too long")


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    """The position after a field of ``wire_type`` whose value starts at ``pos``."""
    if wire_type == 0:
        return _read_varint(buf, pos)[1]
    if wire_type == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    raise ProtocolError(f"unsupported wire type {wire_type}")


# ---------------------------------------------------------------------------------------
# Link side: TransmitMap -> ConnectRequest bytes.


_time_cache: tuple[int, bytes] = (0, b"")
"""The last ``time`` encoded: messages of the same millisecond share it."""
_ints: dict[int, bytes] = {}
"""The varints of user ids (and other ints) beyond one byte: a gateway sends from and to
the same users over and over, and a dict look-up costs a fraction of encoding one.
Cleared when it holds _INTS_MAX (about 100 bytes each: 1.6 MB at most)."""
_INTS_MAX = 16384


def _known_varint(n: int) -> bytes:
    """``_varint(n)``, remembered in ``_ints`` (n >= 128 or negative)."""
    ints = _ints
    if len(ints) >= _INTS_MAX:
        ints.clear()
    b = ints[n] = _varint(n)
    return b


_keys: dict[str, bytes] = {}
"""A users entry's start for each gateway id (its key field, then the value's tag): a
gateway sends to the same few gateways over and over. Cleared when it holds _KEYS_MAX."""
_KEYS_MAX = 4096


def encode_transmit_map(tmap: TransmitMap) -> bytes:
    """The ``TransmitMap`` message bytes of ``tmap`` (without the field tag around it)."""
    global _time_cache
    small = _SMALL
    varint = _varint
    known = _ints.get
    m = tmap.message
    # Message: every field, in field-number order, zeros left out as protobuf does. Built
    # by concatenation (a few short pieces: cheaper than a list and a join), one-byte
    # varints looked up rather than computed, longer ones remembered (_ints).
    b = m.id.encode()
    n = len(b)
    msg = b"\x0a" + (small[n] if n < 128 else varint(n)) + b if n else b""
    v: int = m.sender
    if v:
        msg += b"\x10" + (small[v] if 0 < v < 128 else known(v) or _known_varint(v))
    v = m.to
    if v:
        msg += b"\x18" + (small[v] if 0 < v < 128 else known(v) or _known_varint(v))
    v = m.type
    if v:
        msg += b"\x20" + (small[v] if 0 < v < 128 else varint(v))
    v = m.content_type
    if v:
        msg += b"\x28" + (small[v] if 0 < v < 128 else varint(v))
    t = m.time
    if t:
        cached = _time_cache
        if cached[0] != t:
            cached = _time_cache = (t, b"\x30" + varint(t))
        msg += cached[1]
    b = m.content.encode()
    n = len(b)
    if n:
        msg += b"\x3a" + (small[n] if n < 128 else varint(n)) + b
    # The users map: one entry (key: gateway id, value: UserIds) per target.
    out: list[bytes] = []
    keys = _keys
    for gateway_id, recipients in tmap.users.items():
        head = keys.get(gateway_id)
        if head is None:
            if len(keys) >= _KEYS_MAX:
                keys.clear()
            key = gateway_id.encode()
            head = keys[gateway_id] = b"\x0a" + varint(len(key)) + key + b"\x12"
        if len(recipients) == 1:  # the common share: one user (with its seq)
            r = recipients[0]
            v = r.user_id
            ids = small[v] if 0 <= v < 128 else known(v) or _known_varint(v)
            users = b"\x0a" + small[len(ids)] + ids
            if r.seq:
                b = r.seq.encode()
                n = len(b)
                users += b"\x12" + (small[n] if n < 128 else varint(n)) + b
        elif recipients:
            ids = b"".join([varint(r.user_id) for r in recipients])
            n = len(ids)
            value = [b"\x0a", small[n] if n < 128 else varint(n), ids]
            for r in recipients:
                if r.seq:
                    for r2 in recipients:
                        b = r2.seq.encode()
                        value += (b"\x12", varint(len(b)), b)
                    break
            users = b"".join(value)
        else:
            users = b""
        n = len(users)
        entry = head + (small[n] if n < 128 else varint(n)) + users
        n = len(entry)
        out += (b"\x0a", small[n] if n < 128 else varint(n), entry)
    n = len(msg)
    out += (b"\x12", small[n] if n < 128 else varint(n), msg)
    return b"".join(out)


def encode_batch_request(maps: Iterable[bytes]) -> bytes:
    """A ``ConnectRequest{batch: TransmitBatch{maps}}`` frame from encoded maps."""
    parts: list[bytes] = []
    for m in maps:
        parts += (b"\x0a", _varint(len(m)), m)
    batch = b"".join(parts)
    return b"".join((b"\x12", _varint(len(batch)), batch))


# ---------------------------------------------------------------------------------------
# Hub side: ConnectRequest bytes -> maps -> delivery entries -> ConnectResponse bytes.


@dataclass(slots=True)
class WireMap:
    """One map of a request frame, still encoded.

    ``message`` is the ``Message`` bytes (``None`` when the map had none); ``targets``
    lists ``(gateway id, UserIds bytes)`` in wire order. ``raw`` is the whole
    ``TransmitMap`` encoding, for the rare slow path (notices, odd encodings).
    """

    message: bytes | None
    targets: list[tuple[str, bytes]]
    raw: bytes
    problem: str | None = None
    """Why the map cannot be read (then ``message`` and ``targets`` are empty)."""


def _map_entry(buf: bytes) -> tuple[str, bytes]:
    key = ""
    value = b""
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag == 0x0A:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise ProtocolError("truncated map entry")
            key = buf[pos : pos + n].decode()
            pos += n
        elif tag == 0x12:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise ProtocolError("truncated map entry")
            value = buf[pos : pos + n]
            pos += n
        else:
            pos = _skip(buf, pos, tag & 7)
    if pos != end:
        raise ProtocolError("truncated map entry")
    return key, value


def _transmit_map(buf: bytes) -> WireMap:
    message: bytes | None = None
    targets: list[tuple[str, bytes]] = []
    pos = 0
    end = len(buf)
    while pos < end:
        tag = buf[pos]
        if tag == 0x0A:  # users entry; lengths under 128 take one byte
            n = buf[pos + 1]
            if n < 128:
                pos += 2
            else:
                n, pos = _read_varint(buf, pos + 1)
            if pos + n > end:
                raise ProtocolError("truncated transmit map")
            # The usual entry: key (tag 1) then value (tag 2), both shorter than 128 bytes.
            k = buf[pos + 1] if n > 1 and buf[pos] == 0x0A else 128
            v = pos + 2 + k
            if k < 128 and v + 1 < pos + n and buf[v] == 0x12 and buf[v + 1] + v + 2 == pos + n:
                targets.append((buf[pos + 2 : v].decode(), buf[v + 2 : pos + n]))
            else:
                targets.append(_map_entry(buf[pos : pos + n]))
            pos += n
        elif tag == 0x12:  # message
            n, pos = _read_varint(buf, pos + 1)
            if pos + n > end:
                raise ProtocolError("truncated transmit map")
            message = buf[pos : pos + n]
            pos += n
        else:
            tag, pos = _read_varint(buf, pos)
            pos = _skip(buf, pos, tag & 7)
    if pos != end:
        raise ProtocolError("truncated transmit map")
    return WireMap(message, targets, buf)


def split_batch_request(frame: bytes) -> list[WireMap] | None:
    """The maps of a ``ConnectRequest`` frame, or ``None`` when it carries no batch.

    Raises :class:`ProtocolError` when the bytes are not a valid frame.
    """
    pos = 0
    end = len(frame)
    batch: bytes | None = None
    while pos < end:
        tag, pos = _read_varint(frame, pos)
        if tag == 0x12:
            n, pos = _read_varint(frame, pos)
            batch = frame[pos : pos + n]
            pos += n
        else:
            pos = _skip(frame, pos, tag & 7)
    if pos != end:
        raise ProtocolError("truncated request frame")
    if batch is None:
        return None
    maps: list[WireMap] = []
    pos = 0
    end = len(batch)
    try:
        while pos < end:
            tag = batch[pos]
            if tag == 0x0A:
                n = batch[pos + 1]
                if n < 128:
                    pos += 2
                else:
                    n, pos = _read_varint(batch, pos + 1)
                if pos + n > end:
                    raise ProtocolError("truncated transmit batch")
                maps.append(_read_map(batch[pos : pos + n]))
                pos += n
            else:
                tag, pos = _read_varint(batch, pos)
                pos = _skip(batch, pos, tag & 7)
    except IndexError:
        raise ProtocolError("truncated transmit batch") from None
    if pos != end:
        raise ProtocolError("truncated transmit batch")
    return maps


def _read_map(buf: bytes) -> WireMap:
    """One map of a batch; a map that cannot be read says why instead of raising.

    The frame around it was well formed, so the maps after it can still be routed: the
    sender hears that this one is INVALID and the stream stays up.
    """
    try:
        return _transmit_map(buf)
    except ProtocolError as exc:
        return WireMap(None, [], buf, str(exc))
    except IndexError:
        return WireMap(None, [], buf, "truncated transmit map")
    except UnicodeDecodeError:
        return WireMap(None, [], buf, "a gateway id is not UTF-8")


def length_delimited_fields(buf: bytes) -> list[tuple[int, bytes]]:
    """The ``(field number, bytes)`` of every length-delimited field of a message.

    Other fields are skipped; raises :class:`ProtocolError` when ``buf`` is not a
    well-formed protobuf message.
    """
    fields: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise ProtocolError("truncated field")
            fields.append((tag >> 3, buf[pos : pos + n]))
            pos += n
        else:
            pos = _skip(buf, pos, tag & 7)
    if pos != end:
        raise ProtocolError("truncated message")
    return fields


def has_message_id(message: bytes) -> bool | None:
    """Whether the ``Message`` bytes carry a non-empty id; ``None`` when unsure (odd order)."""
    if len(message) >= 2 and message[0] == 0x0A:
        return message[1] != 0
    return None


def has_users(users: bytes) -> bool | None:
    """Whether the ``UserIds`` bytes carry a user id; ``None`` when unsure (odd order)."""
    if not users:
        return False
    if users[0] == 0x0A:
        return len(users) >= 2 and users[1] != 0
    if users[0] == 0x08:
        return True
    return None


def delivery_entry(message: bytes, users: bytes) -> bytes:
    """A ``Delivery`` as a ready field of ``DeliveryBatch.deliveries`` (tag, length, bytes)."""
    body = b"".join((b"\x0a", _varint(len(message)), message, b"\x12", _varint(len(users)), users))
    return b"".join((b"\x0a", _varint(len(body)), body))


def delivery_entry_from_body(delivery: bytes) -> bytes:
    """An encoded ``Delivery`` message as a ready field of ``DeliveryBatch.deliveries``."""
    return b"".join((b"\x0a", _varint(len(delivery)), delivery))


def notice_fields(notices: Iterable[bytes]) -> bytes:
    """``Undeliverable`` message bytes as ready fields of ``DeliveryBatch.undeliverable``.

    One outbox item may carry many notices this way (all those of one wide map).
    """
    parts: list[bytes] = []
    for n in notices:
        parts += (b"\x12", _varint(len(n)), n)
    return b"".join(parts)


def delivery_batch_response(entries: Sequence[bytes], notices: Sequence[bytes] = ()) -> bytes:
    """A ``ConnectResponse{batch}`` frame from delivery entries and notice fields.

    ``notices`` are ready fields (:func:`notice_fields`), each holding one or more notices.
    """
    inner = b"".join((*entries, *notices)) if notices else b"".join(entries)
    return b"".join((b"\x12", _varint(len(inner)), inner))
