"""The store answers in its own words; the layers above put them into the wire's."""

from __future__ import annotations

import pytest

from im_gateway import frames
from im_gateway.errors import GroupLimitError
from im_gateway.group_policy import group_limit_reason
from im_gateway.pipeline import Rejected, rejected
from im_gateway.store import Refusal, Refused, Submission
from transmit_hub.types import MESSAGE_GROUP, Message, MessageId, UserId


def group_post(client_id: str, group: int) -> Submission:
    return Submission(
        client_id, Message(MessageId("m-1"), UserId(5), group, MESSAGE_GROUP, 0, 1, "x")
    )


@pytest.mark.parametrize(
    ("why", "code", "reason"),
    [
        (Refusal.NOT_MEMBER, frames.NOT_MEMBER, "you are not in group 7"),
        (Refusal.UNENCODABLE, frames.BAD_REQUEST, "content is not valid Unicode"),
        (Refusal.NOT_REPLICATED, frames.INTERNAL, "not replicated; send again"),
        (Refusal.UNAVAILABLE, frames.INTERNAL, "storage unavailable; send again"),
    ],
)
def test_each_refusal_has_its_pinned_code(why: Refusal, code: str, reason: str) -> None:
    """Every store refusal maps to a type 99 code from DESIGN.md, with the client's id."""
    assert rejected(Refused("c-1", why), group_post("c-1", 7)) == Rejected("c-1", code, reason)


def test_every_refusal_is_worded() -> None:
    """No refusal of the store falls through to another's words."""
    said = {rejected(Refused("c", why), group_post("c", 7)) for why in Refusal}
    assert len({(r.code, r.reason) for r in said}) == len(Refusal)


def test_a_group_limit_names_the_flag_to_raise() -> None:
    """A full user and a full group are told apart, each naming its flag and the bound."""
    mine = group_limit_reason(GroupLimitError(3, 1000, user_full=True))
    assert mine == (
        "you are in 1000 groups, the most allowed (--max-groups-per-user); leave one first"
    )
    full = group_limit_reason(GroupLimitError(7, 50, user_full=False))
    assert full == "group 7 is full: 50 members (--max-group-members)"
    assert "--" not in str(GroupLimitError(7, 50, user_full=False))  # the store's own words
