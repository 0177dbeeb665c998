"""The server API's request bodies: pure parsing and validation, no I/O.

:func:`parse` turns a method name and a JSON body into one of the request dataclasses
below, or raises :class:`~im_gateway.errors.ApiError` with the HTTP status and the code
the answer carries (``bad_request``, ``too_large``, ``not_found``). Ids follow the
WebSocket rules: user and group ids are uint64, as numbers or decimal strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from transmit_hub.types import UserId

from .errors import ApiError, BadPosition
from .frames import INT32_MAX, INT32_MIN, MAX_ID_LENGTH, UINT64_MAX
from .positions import stream_position

METHODS: Final = (
    "publish",
    "groups/add",
    "groups/remove",
    "groups/members",
    "presence",
    "disconnect",
    "history",
)
"""Every method of ``POST /api/<method>`` (DESIGN.md, "the server API")."""

OPENAPI_PATH: Final = "/api/openapi.json"


def method_of(path: str) -> str:
    """The metrics' name for a request's path: a method of :data:`METHODS`,
    ``openapi.json``, or ``other`` (so a caller's paths cannot grow the label set)."""
    if path == OPENAPI_PATH:
        return "openapi.json"
    name = path[len("/api/") :] if path.startswith("/api/") else ""
    return name if name in METHODS else "other"


HISTORY_LIMIT: Final = 100
HISTORY_MAX: Final = 1000


@dataclass(frozen=True, slots=True)
class Publish:
    """Store a message in every recipient's inbox, then push it."""

    to: int | None
    group: int | None
    content: str
    content_type: int
    sender: UserId
    id: str
    """The idempotency key ("" for none), deduplicated like a client id of ``sender``."""


@dataclass(frozen=True, slots=True)
class GroupChange:
    """Add users to a group (``add``) or remove them."""

    group: int
    users: tuple[UserId, ...]
    add: bool


@dataclass(frozen=True, slots=True)
class Members:
    group: int


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    users: tuple[UserId, ...]


@dataclass(frozen=True, slots=True)
class Disconnect:
    user: UserId


@dataclass(frozen=True, slots=True)
class History:
    """A user's inbox (``group`` None), or a large group's stream."""

    user: UserId | None
    after: int
    limit: int
    group: int | None = None


Request = Publish | GroupChange | Members | PresenceQuery | Disconnect | History


def bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def parse(method: str, body: bytes, *, max_content: int, max_users: int) -> Request:
    """The request for ``method`` from the raw ``body``; :class:`ApiError` when it is bad."""
    if method not in METHODS:
        raise ApiError(404, "not_found", f"no method {method[:64]!r}; the methods: {METHODS}")
    try:
        obj = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:
        raise bad("the body is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise bad("the body must be a JSON object")
    if method == "publish":
        return _publish(obj, max_content)
    if method in ("groups/add", "groups/remove"):
        _only(obj, "group", "users")
        return GroupChange(
            _uint64(obj, "group"), _users(obj, max_users), add=method == "groups/add"
        )
    if method == "groups/members":
        _only(obj, "group")
        return Members(_uint64(obj, "group"))
    if method == "presence":
        _only(obj, "users")
        return PresenceQuery(_users(obj, max_users))
    if method == "disconnect":
        _only(obj, "user")
        return Disconnect(UserId(_uint64(obj, "user")))
    _only(obj, "user", "group", "after", "limit")
    if ("user" in obj) == ("group" in obj):
        raise bad("give exactly one of 'user' (an inbox) and 'group' (a large group's stream)")
    group = _uint64(obj, "group") if "group" in obj else None
    after = obj.get("after", "0")
    if not isinstance(after, str):
        raise bad("'after' must be a seq (a decimal string)")
    try:
        stream, after_pos = stream_position(after)
    except BadPosition as exc:
        raise bad("'after' must be a seq (a decimal string below 2**64, or g<group>:<n>)") from exc
    if stream is not None and stream != group:
        raise bad("'after' names another stream than the one asked for")
    limit = obj.get("limit", HISTORY_LIMIT)
    if type(limit) is not int or not 1 <= limit <= HISTORY_MAX:
        raise bad(f"'limit' must be an integer from 1 to {HISTORY_MAX}")
    if group is not None:
        return History(None, after_pos, limit, group)
    return History(UserId(_uint64(obj, "user")), after_pos, limit)


API_ID_SPACE: Final = "server-api:".ljust(MAX_ID_LENGTH + 1, "_")
"""What a publish ``id`` is prefixed with in the dedupe space of its ``from``: one
character longer than any client id may be (:data:`~im_gateway.frames.MAX_ID_LENGTH`),
so the server API's ids and a user's own client ids never meet there."""


def dedupe_key(api_id: str) -> str:
    """The client id a publish ``id`` is deduplicated by (``""``: none, no dedupe)."""
    return API_ID_SPACE + api_id if api_id else ""


def _publish(obj: dict[str, object], max_content: int) -> Publish:
    _only(obj, "to", "group", "content", "contentType", "from", "id")
    if ("to" in obj) == ("group" in obj):
        raise bad("give exactly one of 'to' (a user) and 'group'")
    content = obj.get("content")
    if not isinstance(content, str):
        raise bad("'content' must be a string")
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise bad("'content' is not valid Unicode") from exc
    if size > max_content:
        raise ApiError(400, "too_large", f"content is {size} bytes; the limit is {max_content}")
    content_type = obj.get("contentType", 0)
    if type(content_type) is not int or not INT32_MIN <= content_type <= INT32_MAX:
        raise bad("'contentType' must be an int32")
    key = obj.get("id", "")
    if not isinstance(key, str) or len(key) > MAX_ID_LENGTH:
        raise bad(f"'id' must be a string of at most {MAX_ID_LENGTH} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad("'id' is not valid Unicode") from exc
    sender = UserId(_uint64(obj, "from")) if "from" in obj else UserId(0)
    return Publish(
        to=_uint64(obj, "to") if "to" in obj else None,
        group=_uint64(obj, "group") if "group" in obj else None,
        content=content,
        content_type=content_type,
        sender=sender,
        id=key,
    )


def _only(obj: dict[str, object], *names: str) -> None:
    extra = sorted(set(obj) - set(names))
    if extra:
        raise bad(f"unknown field {extra[0][:64]!r}; this method takes {', '.join(names)}")


def _id(value: object, what: str) -> int:
    if type(value) is int:
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise bad(f"{what} must be a uint64 (a number or a decimal string)")
    if not 0 <= number <= UINT64_MAX:
        raise bad(f"{what} is out of the uint64 range")
    return number


def _uint64(obj: dict[str, object], name: str) -> int:
    if name not in obj:
        raise bad(f"'{name}' is required")
    return _id(obj[name], f"'{name}'")


def _users(obj: dict[str, object], max_users: int) -> tuple[UserId, ...]:
    users = obj.get("users")
    if not isinstance(users, list):
        raise bad("'users' must be a list of user ids")
    if len(users) > max_users:
        raise bad(f"'users' has {len(users)} ids; the limit is {max_users} (--api-max-users)")
    return tuple(dict.fromkeys(UserId(_id(u, "each of 'users'")) for u in users))
