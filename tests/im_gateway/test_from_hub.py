"""The hub's deliveries to local sockets from rows (im_gateway.from_hub, through the fan-out)
do what the fan-out's loop over Delivery objects did: no event loop, fake sockets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from im_gateway import frames, inbound
from im_gateway.fanout import CONTROL_DISCONNECT, CONTROL_REGROUP, Fanout
from im_gateway.positions import group_seq
from im_gateway.screening import FROM_HUB
from im_gateway.store import MemoryStore
from tests.im_gateway.fakes import FakeLink
from transmit_hub.types import (
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    UserId,
    delivery_row,
)

MAX_CONTENT = 12
GROUP = 7


class Log:
    """Everything the fan-out did, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.bad = 0

    def hit(self, n: int = 1) -> None:  # the malformed-delivery counter
        self.bad += n

    def post(self, group: int, pos: int, text: str, sent_ms: int, caller: object) -> None:
        assert caller is FROM_HUB
        self.calls.append(("post", group, pos, text, sent_ms))

    def pushed_all(self, times: Sequence[int]) -> None:
        self.calls.append(("pushed", list(times)))


class Socket:
    """A local connection that writes down what it is handed."""

    def __init__(self, user: int, name: str, log: Log) -> None:
        self.user = UserId(user)
        self.name = name
        self.log = log

    def deliver(self, pos: int, text: str) -> None:
        self.log.calls.append(("deliver", self.name, pos, text))

    def regroup(self, left: int | None = None) -> None:
        self.log.calls.append(("regroup", self.name, left))

    def disconnect(self, code: int, reason: str) -> None:
        self.log.calls.append(("disconnect", self.name, code))


def fanout(log: Log) -> Any:
    """A fan-out with sockets for users 1, 2 (two devices) and 3, following group 7."""
    out: Any = Fanout(gateway_id=GatewayId("gw-2"), store=MemoryStore(), link=FakeLink())
    for user, name in ((1, "a"), (2, "b1"), (2, "b2"), (3, "c")):
        out.add(Socket(user, name, log))
    out._groups[GROUP] = [out._sessions[UserId(3)][0]]
    out._screen = log
    out._bad_delivery = log
    out._metrics = log
    out._max_content = MAX_CONTENT
    return out


def old_deliver_all(self: Any, deliveries: Sequence[Delivery]) -> None:
    """The fan-out's loop over a hub frame's Delivery objects, as it was before the rows
    (6822242: _deliver_all and _control), logging aside; and one rule since: a disconnect
    control is acted on once per id (it comes through every hub)."""
    pushed: list[int] = []
    disconnects: set[str] = set()
    for delivery in deliveries:
        message = delivery.message
        if message.type in (CONTROL_DISCONNECT, CONTROL_REGROUP):
            if message.type == CONTROL_DISCONNECT:
                if message.id in disconnects:
                    continue
                disconnects.add(message.id)
            text = delivery.message.content
            left = int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None
            for r in delivery.recipients:
                if delivery.message.type == CONTROL_DISCONNECT:
                    self._close_local(r.user_id)
                else:
                    for connection in self._sessions.get(r.user_id, ()):
                        connection.regroup(left)
            continue
        problem = inbound.message_problem(message, max_content=self._max_content)
        if problem is not None:
            self._bad_delivery.hit()
            continue
        post = inbound.group_post(delivery)
        if post is not None:
            group, pos = post
            if pos == 0:
                self._bad_delivery.hit()
            elif group in self._groups:
                text = frames.encode_message(message, group_seq(group, pos))
                self._screen.post(group, pos, text, message.time, FROM_HUB)
            continue
        good, bad = inbound.recipients(delivery)
        if bad:
            self._bad_delivery.hit(bad)
        prefix: str | None = None
        for user, pos in good:
            sessions = self._sessions.get(user)
            if not sessions:
                continue
            if prefix is None:
                prefix = frames.message_prefix(message)
            text = frames.with_seq(prefix, str(pos))
            for session in sessions:
                session.deliver(pos, text)
        if prefix is not None:
            pushed.append(message.time)
    self._metrics.pushed_all(pushed)


def mostly(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    """Good values most of the time (a message is refused whole for one bad field)."""
    return st.sampled_from(good * 4 + bad)


messages = st.builds(
    Message,
    id=mostly(["m-1", "m-2"], ["", "i" * 129, "\ud800", "é"]).map(MessageId),
    sender=mostly([0, 5, 2**64 - 1], [2**64, -1]).map(UserId),
    to=mostly([GROUP, 3], [2**64, -1]),
    type=mostly([1, 2], [0, 99, CONTROL_DISCONNECT, CONTROL_REGROUP]),
    content_type=mostly([0, 3], [2**31]),
    time=mostly([5, 1_700_000_000_123], [-1, 2**63]),
    content=st.one_of(
        st.text(max_size=8), st.sampled_from(["x" * 13, "é" * 4, "\ud800", "3", "12"])
    ),
)
recipients = st.builds(
    Recipient,
    st.sampled_from([0, 1, 2, 3, 4, 2**64]).map(UserId),
    st.one_of(
        st.sampled_from(["1", "2", "17", "007", "0", "", "x", "1-0", str(2**64), "g7:3", "g"]),
        st.sampled_from(["00", " 1", "+1", "٣", "²", str(2**64 - 1), "9" * 21]),
        st.text(max_size=4),
        st.integers(0, 2**65).map(str),
    ),
)
deliveries = st.builds(
    Delivery, messages, st.lists(recipients, max_size=3).map(tuple)
) | st.builds(  # a large group's post as a hub sends it (and near misses)
    Delivery,
    messages,
    st.sampled_from(["g7:3", "g7:0", "g8:1", "g:1"]).map(lambda s: (Recipient(UserId(0), s),)),
)


GOOD = Message(MessageId("m-1"), UserId(5), 3, 1, 0, 5, "hi")


@settings(max_examples=300, deadline=None)
@given(st.lists(deliveries, max_size=5))
# A group seq after the first recipient is that recipient's fault alone.
@example([Delivery(GOOD, (Recipient(UserId(1), "1"), Recipient(UserId(2), "g7:3"),
                          Recipient(UserId(3), "1")))])  # fmt: skip
def test_rows_are_delivered_as_the_objects_were(frame: list[Delivery]) -> None:
    """Any frame (good messages, refused ones, malformed recipients, controls, large group
    posts and near misses): pushed from rows, every socket gets the same frames, the same
    controls reach the same sockets, the same posts are screened, the same count is
    refused and the same times observed, in the same order, as the old loop did."""
    old_log, new_log = Log(), Log()
    old_deliver_all(fanout(old_log), frame)
    fanout(new_log)._deliver_rows(tuple(map(delivery_row, frame)))
    assert new_log.calls == old_log.calls
    assert new_log.bad == old_log.bad
