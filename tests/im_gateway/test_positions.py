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
