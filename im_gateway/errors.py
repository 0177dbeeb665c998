"""The exceptions of im_gateway.

All derive from :class:`GatewayError`::

    GatewayError
    ├── ConfigError        a flag, setting or constructor argument is invalid
    ├── StartupError       a dependency (Redis, the listening port) is unusable at start
    ├── LifecycleError     the gateway used before start() (its id, fan-out, pipeline, store)
    ├── AuthError          a token is missing, malformed, badly signed or expired
    ├── GroupLimitError    a join would break --max-groups-per-user or --max-group-members
    ├── FrameError         a client frame was refused; carries the pinned error code
    ├── ApiError           a server API call was refused; carries the HTTP status and code
    └── StoreError         the store was used wrongly or answered nonsense
        ├── BadPosition    a seq that is no inbox position (also a ValueError)
        └── StoreBusy      no store slot came free within --store-wait (also a TimeoutError)

Expected failures are mapped to the wire at the edge only: an :class:`AuthError`
becomes HTTP 401 before the upgrade, a :class:`FrameError` becomes a type 99 frame.
"""

from __future__ import annotations


class GatewayError(Exception):
    """The root of every exception this package raises on purpose."""


class ConfigError(GatewayError):
    """A flag, setting or constructor argument is invalid; the message names the fix."""


class StartupError(GatewayError):
    """The gateway cannot start: Redis does not answer, the port is taken, ..."""


class LifecycleError(GatewayError):
    """The gateway was used in the wrong state: its id, fan-out, pipeline or store asked for
    before ``start()``."""


class AuthError(GatewayError):
    """A token is missing, malformed, badly signed, expired or names no valid user."""


class GroupLimitError(GatewayError):
    """A join was refused because the user is in too many groups or the group is full.

    ``user_full``: the user is in ``limit`` groups already (the store's
    ``max_groups_per_user``); otherwise ``group`` has ``limit`` members (its
    ``max_group_members``). The store raises it; the layer above words it for the client
    (:func:`~im_gateway.group_policy.group_limit_reason`).
    """

    def __init__(self, group: int, limit: int, *, user_full: bool) -> None:
        super().__init__(
            f"the user is in {limit} groups, the most allowed"
            if user_full
            else f"group {group} is full: {limit} members"
        )
        self.group = group
        self.limit = limit
        self.user_full = user_full


class FrameError(GatewayError):
    """A client frame is refused with one of the pinned codes.

    ``code`` is ``bad_request``, ``too_large``, ``not_member``, ``forbidden``,
    ``rate_limited`` or ``internal``; ``frame_id`` is the client's ``id`` when the frame carried a usable one.
    """

    def __init__(self, code: str, message: str, frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id


class StoreError(GatewayError):
    """The store was used wrongly (closed, bad limits) or answered something unreadable."""


class BadPosition(StoreError, ValueError):
    """A seq that is not an inbox position (decimal, at most 2**64 - 1)."""


class StoreBusy(StoreError, TimeoutError):
    """No store slot (``--store-concurrency``) came free within ``--store-wait``: the
    calls holding them wait on a slow or silent Redis."""


class ApiError(GatewayError):
    """A server API call is refused: ``status`` (400, 401, 404, ...) and ``code`` (the
    answer's ``error.code``: ``bad_request``, ``too_large``, ``unauthorized``, ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
