"""What a hub delivers is checked as strictly as what a client sends: pure, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway import inbound
from im_gateway.errors import BadPosition
from im_gateway.positions import position
from transmit_hub.types import Delivery, Message, MessageId, Recipient, UserId

GOOD = Message(MessageId("m-1"), UserId(1), 2, 1, 0, 1_700_000_000_000, "hi")


def message(**changes: object) -> Message:
    fields = {
        "id": GOOD.id,
        "sender": GOOD.sender,
        "to": GOOD.to,
        "type": GOOD.type,
        "content_type": GOOD.content_type,
        "time": GOOD.time,
        "content": GOOD.content,
    }
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def test_a_good_message_passes() -> None:
    """Private and group messages within every limit have no problem."""
    assert inbound.message_problem(GOOD, max_content=10) is None
    assert inbound.message_problem(message(type=2), max_content=10) is None
    assert inbound.message_problem(message(content="é" * 5), max_content=10) is None
    assert inbound.message_problem(message(content="x" * 10), max_content=10) is None
    assert inbound.message_problem(message(id="i" * 128, sender=2**64 - 1), max_content=10) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"type": 99},
        {"type": 0},
        {"id": ""},
        {"id": "i" * 129},
        {"sender": -1},
        {"sender": 2**64},
        {"to": 2**64},
        {"content_type": 2**31},
        {"time": -1},
        {"time": 2**63},
        {"content": "x" * 11},
        {"content": "é" * 6},
        {"content": "\ud800"},
        {"content": "é\udfff"},
        {"id": "\ud800", "content": "é"},
        {"id": "\ud800"},  # short ASCII content: the id must still be checked
    ],
    ids=lambda changes: ",".join(f"{k}={v!r:.20}" for k, v in changes.items()),
)
def test_a_message_breaking_a_limit_is_refused(changes: dict[str, object]) -> None:
    """Wrong type, ids, sizes, time or UTF-8 (content or id): the delivery is refused whole."""
    assert inbound.message_problem(message(**changes), max_content=10) is not None


def test_bad_recipients_are_refused_alone() -> None:
    """A recipient whose seq is no position (or is 0), or whose user id is no uint64, is
    dropped and counted; the others stay, with their positions parsed."""
    delivery = Delivery(
        GOOD,
        (
            Recipient(UserId(2), "17"),
            Recipient(UserId(3), "x"),
            Recipient(UserId(3), "1-0"),
            Recipient(UserId(3), str(2**64)),
            Recipient(UserId(3), "0"),
            Recipient(UserId(3), ""),
            Recipient(UserId(3), "-1"),
            Recipient(UserId(2**64), "1"),
            Recipient(UserId(4), str(2**64 - 1)),
        ),
    )
    good, bad = inbound.recipients(delivery)
    assert good == [(2, 17), (4, 2**64 - 1)]
    assert bad == 7


seqs = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="0123456789", max_size=22),
    st.integers(min_value=0, max_value=2**65).map(str),
    st.sampled_from(["", "0", "00", "007", "1-0", " 1", "1 ", "+1", "٣", "²", str(2**64)]),
)


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=2**65), seqs), max_size=4))
def test_recipients_parse_seqs_as_positions_do(pairs: list[tuple[int, str]]) -> None:
    """The recipients' check (its position parse inlined) keeps exactly the recipients
    whose seq positions.position accepts as a position above 0 and whose id is a uint64."""
    expected: list[tuple[int, int]] = []
    for user, seq in pairs:
        try:
            pos = position(seq)
        except BadPosition:
            continue
        if pos and user < 2**64:
            expected.append((user, pos))
    delivery = Delivery(GOOD, tuple(Recipient(UserId(u), s) for u, s in pairs))
    good, bad = inbound.recipients(delivery)
    assert good == expected
    assert bad == len(pairs) - len(expected)


def test_a_large_group_post_from_a_hub_is_checked() -> None:
    """A share of a large group's post names user 0 with ``g<group>:<n>`` for the group the
    message is to; anything else claiming that form is refused (group 0)."""
    m = Message(MessageId("m"), UserId(1), 7, 2, 0, 1, "hi")
    assert inbound.group_post(Delivery(m, (Recipient(UserId(0), "g7:3"),))) == (7, 3)
    assert inbound.group_post(Delivery(m, (Recipient(UserId(5), "3"),))) is None
    for recipients in (
        (Recipient(UserId(0), "g8:3"),),  # another group than the message's
        (Recipient(UserId(0), "g7:x"),),
        (Recipient(UserId(0), "g7:3"), Recipient(UserId(0), "g7:4")),
    ):
        assert inbound.group_post(Delivery(m, recipients)) == (0, 0)
    private = Message(MessageId("m"), UserId(1), 7, 1, 0, 1, "hi")
    assert inbound.group_post(Delivery(private, (Recipient(UserId(0), "g7:3"),))) == (0, 0)
