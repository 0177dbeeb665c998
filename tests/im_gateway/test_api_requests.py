"""The server API's body checks (im_gateway.api_requests), without a server."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway import api_requests as req
from im_gateway import frames
from im_gateway.errors import ApiError
from transmit_hub.types import UserId


def parse(method: str, body: object) -> req.Request:
    return req.parse(method, json.dumps(body).encode(), max_content=100, max_users=3)


def test_publish_takes_ids_as_numbers_or_decimal_strings() -> None:
    """A user id may be 42 or "42"; from defaults to 0 (the system), id to "" (none)."""
    assert parse("publish", {"to": "42", "content": "hi"}) == req.Publish(
        to=42, group=None, content="hi", content_type=0, sender=UserId(0), id=""
    )
    got = parse("publish", {"group": 7, "content": "x", "from": 2, "id": "k", "contentType": 3})
    assert got == req.Publish(
        to=None, group=7, content="x", content_type=3, sender=UserId(2), id="k"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"content": "x"}, "bad_request"),
        ({"to": 1, "group": 1, "content": "x"}, "bad_request"),
        ({"to": 1, "content": "\ud800"}, "bad_request"),
        ({"to": 1, "content": "é" * 51}, "too_large"),
        ({"to": 1, "content": "x", "id": "k" * 129}, "bad_request"),
        ({"to": 1.0, "content": "x"}, "bad_request"),
        ({"to": True, "content": "x"}, "bad_request"),
    ],
)
def test_bad_publish_bodies_are_refused_with_their_code(body: object, code: str) -> None:
    """Each broken body: 400 and the pinned code."""
    with pytest.raises(ApiError) as caught:
        parse("publish", body)
    assert (caught.value.status, caught.value.code) == (400, code)


def test_user_lists_are_bounded_and_deduplicated() -> None:
    """More than max_users ids is refused; repeats count once."""
    assert parse("presence", {"users": [1, "1", 2]}) == req.PresenceQuery(
        users=(UserId(1), UserId(2))
    )
    with pytest.raises(ApiError, match="--api-max-users"):
        parse("groups/add", {"group": 1, "users": [1, 2, 3, 4]})


def test_history_defaults_and_limits() -> None:
    """after defaults to "0" and limit to 100; limit is 1 to 1000; after is a seq."""
    assert parse("history", {"user": 5}) == req.History(user=UserId(5), after=0, limit=100)
    assert parse("history", {"user": 5, "after": "9", "limit": 1000}).after == 9  # type: ignore[union-attr]
    for bad in ({"user": 5, "limit": 0}, {"user": 5, "after": "x"}, {"user": 5, "after": 9}):
        with pytest.raises(ApiError):
            parse("history", bad)


def test_unknown_methods_and_non_objects() -> None:
    """An unknown method is 404 not_found; a body that is not a JSON object is 400."""
    with pytest.raises(ApiError) as caught:
        parse("publish/now", {})
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as caught:
        req.parse("presence", b"[]", max_content=1, max_users=1)
    assert caught.value.status == 400
    assert set(req.METHODS) == {
        "publish",
        "groups/add",
        "groups/remove",
        "groups/members",
        "presence",
        "disconnect",
        "history",
    }


@given(
    client_id=st.text(min_size=1, max_size=frames.MAX_ID_LENGTH),
    api_id=st.text(min_size=1, max_size=frames.MAX_ID_LENGTH),
    other=st.text(min_size=1, max_size=frames.MAX_ID_LENGTH),
)
def test_publish_ids_have_a_dedupe_space_of_their_own(
    client_id: str, api_id: str, other: str
) -> None:
    """No publish id's dedupe key is a client id a frame may carry, and two publish ids
    share a key only when they are the same id."""
    assert req.dedupe_key(api_id) != client_id
    assert len(req.dedupe_key(api_id)) > frames.MAX_ID_LENGTH
    assert (req.dedupe_key(api_id) == req.dedupe_key(other)) == (api_id == other)
    assert req.dedupe_key("") == ""  # no id: no dedupe


def test_each_method_and_the_openapi_path_name_themselves_in_the_metrics() -> None:
    for method in req.METHODS:
        assert req.method_of(f"/api/{method}") == method
    assert req.method_of(req.OPENAPI_PATH) == "openapi.json"
    for path in ("/", "/api/", "/api/nope", "/api/publish/", "/x/api/publish", "/api/groups"):
        assert req.method_of(path) == "other"


@given(st.text(max_size=40))
def test_any_path_maps_to_a_bounded_label(path: str) -> None:
    """Whatever a caller sends, the label is one of len(METHODS) + 2 values."""
    assert req.method_of(path) in {*req.METHODS, "openapi.json", "other"}
