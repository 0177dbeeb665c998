"""The client core and a large group the connect replay's end marker did not list (its
Redis Cluster node silent at connect): the gateway follows it once read, from the user's
position. A client that showed part of that stream on an earlier connection catches up
from its own position (another device may have acknowledged further); a client with no
position shows it as it comes. The model-gateway state machine (test_client_state.py)
covers the orders; these are the cases by name."""

from __future__ import annotations

import json

from im_gateway.client_state import ClientState
from tests.im_gateway.test_client_group_starts import first_connection, marker
from tests.im_gateway.test_client_state import ME, message_frame, taken

G = "g7"


def shown_up_to_3(s: ClientState) -> None:
    """A first connection that lists g7 from 0 and shows g7:1..3, then is lost."""
    first_connection(s, groups=["g7:0"])
    for pos in (1, 2, 3):
        s.received(message_frame(f"p{pos}", pos, stream=G))
    assert [m.id for m in taken(s)] == ["p1", "p2", "p3"]
    s.disconnected()
    s.connected()
    assert s.take_writes() == []


def catch_up_4_to_9(s: ClientState) -> None:
    """The catch-up asked from g7:3 brings 4..9 (9 again) and its end marker."""
    for pos in range(4, 10):
        s.received(message_frame(f"p{pos}", pos, stream=G))
        assert taken(s) == []  # nothing shown before the catch-up's end
    s.received(marker("g7:9"))
    assert [m.id for m in taken(s)] == ["p4", "p5", "p6", "p7", "p8", "p9"]
    assert s.position(G) == 9


def test_a_reconnecting_client_catches_up_an_unlisted_stream_from_its_own_position() -> None:
    """The marker lists no groups; another device acknowledged g7 up to 8 meanwhile, and
    the gateway pushes g7:9 once it reads the group: the client asks from g7:3 and shows
    g7:9 only after 4..8, in order."""
    s = ClientState(ME, id_prefix="t")
    shown_up_to_3(s)
    s.received(marker("0"))
    assert s.take_writes() == []
    s.received(message_frame("p9", 9, stream=G))
    assert s.take_writes() == ['{"type":14,"seq":"g7:3"}']
    assert taken(s) == []
    catch_up_4_to_9(s)


def test_an_unlisted_streams_post_before_the_marker_is_caught_up_at_the_marker() -> None:
    """The gateway read the group while the connect replay ran (its push comes before the
    marker), and the marker lists another group only: the catch-up is asked at the
    marker."""
    s = ClientState(ME, id_prefix="t")
    shown_up_to_3(s)
    s.received(message_frame("p9", 9, stream=G))
    assert s.take_writes() == []  # no replay request before the connect replay's end
    assert taken(s) == []
    s.received(marker("0", groups=["g9:0"]))
    assert s.take_writes() == ['{"type":14,"seq":"g7:3"}']
    catch_up_4_to_9(s)


def test_an_unlisted_streams_catch_up_refused_rate_limited_is_asked_again() -> None:
    """A refused catch-up (``rate_limited``) is asked again after the backoff, from the
    client's position; the stream stays held meanwhile."""
    s = ClientState(ME, id_prefix="t")
    shown_up_to_3(s)
    s.received(marker("0"))
    s.received(message_frame("p9", 9, stream=G))
    assert s.take_writes() == ['{"type":14,"seq":"g7:3"}']
    s.received(json.dumps({"type": 99, "code": "rate_limited", "message": "slow down"}))
    assert s.take_replay_retry()
    assert taken(s) == []
    s.retry_replay()
    assert s.take_writes() == ['{"type":14,"seq":"g7:3"}']
    catch_up_4_to_9(s)


def test_a_new_client_shows_an_unlisted_stream_as_it_comes() -> None:
    """A client with no position in g7 (it never had any of it): the gateway started the
    stream at the user's position, and g7:9 is shown at once, with no catch-up."""
    s = ClientState(ME, id_prefix="t")
    first_connection(s)
    s.received(message_frame("p9", 9, stream=G))
    assert s.take_writes() == []
    assert [m.id for m in taken(s)] == ["p9"]
    s.received(message_frame("p10", 10, stream=G))
    assert [m.id for m in taken(s)] == ["p10"]


def test_a_new_client_on_a_later_connection_shows_an_unlisted_stream_as_it_comes() -> None:
    """A client that connected before but never had g7: after the marker (which does not
    list it) g7:9 is shown at once; before the marker it waits for it, then is shown."""
    for early in (False, True):
        s = ClientState(ME, id_prefix="t")
        first_connection(s)
        s.disconnected()
        s.connected()
        if not early:
            s.received(marker("0"))
        s.received(message_frame("p9", 9, stream=G))
        if early:
            assert taken(s) == []
            s.received(marker("0", groups=["g9:0"]))
        assert s.take_writes() == []
        assert [m.id for m in taken(s)] == ["p9"]


def test_a_group_rejoined_live_is_caught_up_once_and_shown_without_repeats() -> None:
    """The user left g7 (the client had shown up to 3) and joins again on this connection
    at 6: the gateway pushes from 7; the client asks once from g7:3 (the gateway starts
    the replay at the join) and shows 7, 8 once each."""
    s = ClientState(ME, id_prefix="t")
    shown_up_to_3(s)
    s.received(marker("0"))
    s.received(message_frame("p7", 7, stream=G))
    assert s.take_writes() == ['{"type":14,"seq":"g7:3"}']
    s.received(message_frame("p8", 8, stream=G))  # a push during the catch-up
    s.received(message_frame("p7", 7, stream=G))  # the replay, from the join
    s.received(message_frame("p8", 8, stream=G))
    s.received(marker("g7:8"))
    assert [m.id for m in taken(s)] == ["p7", "p8"]
    s.received(message_frame("p9", 9, stream=G))
    assert s.take_writes() == []  # at most once per connection
    assert [m.id for m in taken(s)] == ["p9"]
