"""The client core and the connect replay's end marker's ``groups`` (each followed large
group's start): a device that was away catches up what another device acknowledged, in
a stream it had shown some of, or one its user joined meanwhile (Defect A of
bench/chaos.py). The model-gateway state machine (test_client_state.py) covers the
orders; these are the cases by name."""

from __future__ import annotations

import json
from typing import Any

from im_gateway.client_protocol import parse_group_starts, with_groups
from im_gateway.client_state import ClientState
from tests.im_gateway.test_client_state import ME, message_frame, taken

G = "g7"


def marker(seq: str, **fields: Any) -> str:
    return json.dumps({"type": 14, "seq": seq, **fields})


def first_connection(s: ClientState, **fields: Any) -> None:
    s.connected()
    s.received(marker("0", **fields))
    s.take_writes()


def test_a_group_joined_while_away_is_asked_for_from_the_join() -> None:
    s = ClientState(ME, id_prefix="t")
    first_connection(s)
    s.disconnected()
    s.connected()
    s.received(message_frame("p3", 3, stream=G))  # the replay starts after the phone's ack
    assert taken(s) == []  # held: the marker says where the replay started
    s.received(marker("0", groups=["g7:2"]))
    assert s.take_writes() == ['{"type":14,"seq":"g7:0"}']  # the gateway starts at the join
    for pos in (1, 2, 3):
        s.received(message_frame(f"p{pos}", pos, stream=G))
    assert taken(s) == []
    s.received(marker("g7:3"))
    assert [m.id for m in taken(s)] == ["p1", "p2", "p3"]


def test_a_known_group_stream_is_caught_up_at_the_marker_without_a_next_post() -> None:
    s = ClientState(ME, id_prefix="t")
    first_connection(s, groups=["g7:0"])
    s.received(message_frame("p1", 1, stream=G))
    assert [m.id for m in taken(s)] == ["p1"]
    s.disconnected()
    s.connected()
    s.received(marker("0", groups=["g7:3"]))  # another device acknowledged p2 and p3
    assert s.take_writes() == ['{"type":14,"seq":"g7:1"}']
    s.received(message_frame("p2", 2, stream=G))
    s.received(message_frame("p3", 3, stream=G))
    s.received(marker("g7:3"))
    assert [m.id for m in taken(s)] == ["p2", "p3"]


def test_a_new_client_starts_each_listed_group_where_the_user_is() -> None:
    s = ClientState(ME, id_prefix="t")
    first_connection(s, groups=["g7:5", "g9:0"])
    assert s.position(G) == 5
    assert not any("g7" in f for f in s.ack_frames())  # the user's own position: no ack
    s.received(message_frame("p6", 6, stream=G))
    assert [m.id for m in taken(s)] == ["p6"]


def test_a_stream_held_for_the_marker_that_it_does_not_list_is_shown() -> None:
    """A gateway that lists no groups (older than the field): as before, the stream's
    arrivals are shown once the marker came."""
    s = ClientState(ME, id_prefix="t")
    first_connection(s)
    s.disconnected()
    s.connected()
    s.received(message_frame("p1", 1, stream=G))
    s.received(message_frame("p2", 2, stream=G))
    assert taken(s) == []
    s.received(marker("0"))
    assert s.take_writes() == []
    assert [m.id for m in taken(s)] == ["p1", "p2"]


def test_a_group_catch_up_refused_not_member_shows_what_it_held() -> None:
    """The user left the group before the catch-up was asked: what the connection
    brought is shown, and the client does not wait on that stream forever."""
    s = ClientState(ME, id_prefix="t")
    first_connection(s)
    s.disconnected()
    s.connected()
    s.received(message_frame("p3", 3, stream=G))
    s.received(marker("0", groups=["g7:2"]))
    assert s.take_writes() == ['{"type":14,"seq":"g7:0"}']
    s.received(json.dumps({"type": 99, "code": "not_member", "message": "left"}))
    assert [m.id for m in taken(s)] == ["p3"]
    s.received(marker("0"))  # a later replay's marker: nothing asked again
    assert s.take_writes() == []


def test_malformed_groups_are_ignored() -> None:
    assert parse_group_starts(None) == []
    assert parse_group_starts("g7:1") == []
    assert parse_group_starts([7, "7", "g7", "g7:x", "gx:1", {"g7": 1}, "g7:1"]) == [("g7", 1)]
    assert parse_group_starts(["g7:1", "g8:2", "g7:9"]) == [("g7", 1), ("g8", 2)]
    assert parse_group_starts([f"g{i}:1" for i in range(50)], limit=3) == [
        ("g0", 1),
        ("g1", 1),
        ("g2", 1),
    ]
    s = ClientState(ME, id_prefix="t")
    first_connection(s)
    s.disconnected()
    s.connected()
    s.received(marker("0", groups=[["g7:1"], 3, "17", "g7:" + "9" * 40]))
    assert s.take_writes() == []
    assert s.ignored == 0


def test_the_client_asks_for_the_groups_in_its_url() -> None:
    assert with_groups("ws://gw:8080/ws") == "ws://gw:8080/ws?groups=1"
    assert with_groups("wss://gw/ws?x=1") == "wss://gw/ws?x=1&groups=1"
