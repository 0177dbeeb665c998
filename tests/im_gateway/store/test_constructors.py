"""The store's fast constructors build the same objects as the dataclasses'."""

from __future__ import annotations

import dataclasses

from im_gateway.store.contract import Accepted, Submission, new_accepted, new_submission
from transmit_hub.types import GatewayId, Message, MessageId, Recipient, UserId

MESSAGE = Message(MessageId("m1"), UserId(7), 8, 1, 0, 1_765_000_000_000, "hi")


def test_they_set_every_field() -> None:
    """A field added to a dataclass fails here until its fast constructor sets it."""
    assert [f.name for f in dataclasses.fields(Submission)] == [
        "client_id",
        "message",
        "check_member",
    ]
    assert [f.name for f in dataclasses.fields(Accepted)] == [
        "client_id",
        "message",
        "duplicate",
        "recipients",
        "presence",
        "post",
    ]


def test_new_submission_is_submission() -> None:
    for check in (True, False):
        fast, plain = new_submission("c1", MESSAGE, check), Submission("c1", MESSAGE, check)
        assert type(fast) is Submission
        assert fast == plain
        assert hash(fast) == hash(plain)
        assert repr(fast) == repr(plain)


def test_new_accepted_is_accepted() -> None:
    recipients = (Recipient(UserId(8), "3"), Recipient(UserId(7), "5"))
    presence = {UserId(8): (GatewayId("gw-2"),)}
    for duplicate in (True, False):
        fast = new_accepted("c1", MESSAGE, duplicate, recipients, presence)
        plain = Accepted("c1", MESSAGE, duplicate, recipients, presence)
        assert type(fast) is Accepted
        assert fast == plain
        assert repr(fast) == repr(plain)
        assert fast.post is None
