"""Inbox positions (im_gateway.positions): what a seq is."""

import pytest

from im_gateway.errors import BadPosition
from im_gateway.positions import MAX_POSITION, position


def test_position_parses_only_decimal_uint64() -> None:
    """position() takes decimal digits up to 2**64 - 1 and refuses everything else."""
    assert position("0") == 0
    assert position("") == 0
    assert position("17") == 17
    assert position(str(MAX_POSITION)) == MAX_POSITION
    for bad in ("1-2", "-1", str(2**64), "abc", " 1", "1 ", "+1", "\uff11", "1.0", "9" * 21):
        with pytest.raises(BadPosition, match="bad inbox position"):
            position(bad)
    with pytest.raises(ValueError, match="bad inbox position"):  # BadPosition is one too
        position("1700000000000-3")


def test_a_group_seq_parses_and_anything_else_is_refused() -> None:
    """``g<group>:<position>`` names a large group's stream; an inbox seq never starts with g."""
    from im_gateway.errors import BadPosition
    from im_gateway.positions import group_seq, stream_position

    assert stream_position("17") == (None, 17)
    assert stream_position("g7:0") == (7, 0)
    assert stream_position(group_seq(2**64 - 1, 5)) == (2**64 - 1, 5)
    for bad in ("g", "g7", "g7:", "g:3", "gx:1", "g7:-1", "g7:1:2", "g7:1 ", "g 7:1", "G7:1"):
        with pytest.raises(BadPosition):
            stream_position(bad)
