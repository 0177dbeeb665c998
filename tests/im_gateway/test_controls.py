"""The server API's disconnect control: sent through every hub (a silent link to one hub
would swallow it: the hub writes into the dead stream and nothing sends it again), and
acted on once per control id (its copies, and resends after a broken stream, close
nothing more: not a connection the user opened since)."""

from __future__ import annotations

from typing import Any

from im_gateway.close_codes import CLOSE_DISCONNECTED
from im_gateway.fanout import CONTROL_DISCONNECT, Fanout
from im_gateway.once import Once
from im_gateway.store import MemoryStore
from tests.im_gateway.fakes import FakeLink
from transmit_hub.types import Delivery, GatewayId, Message, MessageId, Recipient, UserId

BOB = UserId(12)


class Socket:
    def __init__(self, user: UserId) -> None:
        self.user = user
        self.closed: list[int] = []

    def disconnect(self, code: int, reason: str) -> None:
        self.closed.append(code)


def control(msg_id: str) -> Delivery:
    message = Message(MessageId(msg_id), UserId(0), BOB, CONTROL_DISCONNECT, 0, 1, "")
    return Delivery(message, (Recipient(BOB, ""),))


def test_a_disconnect_goes_through_every_hub() -> None:
    """The control to the user's other gateways is sent everywhere, not through one hub
    (old code: ``link.everywhere == []``)."""
    link = FakeLink()
    fanout: Any = Fanout(gateway_id=GatewayId("gw-1"), store=MemoryStore(), link=link)
    fanout.disconnect(BOB, [GatewayId("gw-1"), GatewayId("gw-2")], MessageId("d1"), 1)
    assert [t.message.id for t in link.everywhere] == ["d1"]
    assert [dict(t.users) for t in link.everywhere] == [{GatewayId("gw-2"): (Recipient(BOB, ""),)}]
    assert link.sent == []


def test_a_disconnect_control_arriving_twice_closes_once() -> None:
    """A second copy of one control id closes nothing (the connection opened after the
    first stays); another id closes again (old code: ``[4001] == []`` for the new one)."""
    fanout: Any = Fanout(gateway_id=GatewayId("gw-2"), store=MemoryStore(), link=FakeLink())
    first = Socket(BOB)
    fanout.add(first)
    fanout._deliver_other(control("d1"))
    assert first.closed == [CLOSE_DISCONNECTED]
    fanout.discard(first)
    again = Socket(BOB)
    fanout.add(again)
    fanout._deliver_other(control("d1"))
    assert again.closed == []
    fanout._deliver_other(control("d2"))
    assert again.closed == [CLOSE_DISCONNECTED]


def test_once_remembers_the_newest_ids_only() -> None:
    """First time true, then false; past the bound the oldest id is forgotten."""
    once = Once(2)
    assert [once.first(k) for k in ("a", "a", "b", "c", "b", "a")] == [
        True,
        False,
        True,
        True,
        False,
        True,
    ]
