"""The Lua scripts of the Redis stores: one file each in ``lua/``, read once, at import.

A script's first line may name the files it builds on, ``-- uses: now, inbox``; those
come first, in that order (``now.lua`` defines ``now``, the server's clock in ms;
``inbox.lua`` the inbox functions). Every script reads the clock with ``TIME`` on the
Redis server, so gateways with skewed clocks agree on presence expiry and inbox age.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

_USES: Final = "-- uses: "


def source(name: str) -> str:
    """The full text of ``lua/<name>.lua``, the files it uses first."""
    text = resources.files("im_gateway.store").joinpath("lua", f"{name}.lua").read_text("utf-8")
    first = text.partition("\n")[0]
    if not first.startswith(_USES):
        return text
    return "".join(source(used.strip()) for used in first[len(_USES) :].split(",")) + text


# One Redis (store/redis.py) and Redis Cluster (store/cluster.py) alike.
ACK: Final = source("ack")
LOOKUP: Final = source("lookup")
REFRESH: Final = source("refresh")
LEAVE: Final = source("leave")
STREAMS: Final = source("streams")
GROUP_ACK: Final = source("group_ack")
MEMBERSHIPS: Final = source("memberships")
# One Redis only.
OPENING: Final = source("opening")
SUBMIT: Final = source("submit")
JOIN: Final = source("join")
ADD_MEMBERS: Final = source("add_members")
REMOVE_MEMBERS: Final = source("remove_members")
# Redis Cluster only.
CLAIM: Final = source("claim")
APPEND: Final = source("append")
JOIN_USER: Final = source("join_user")
JOIN_GROUP: Final = source("join_group")
JOIN_USERS: Final = source("join_users")
GROUP_ADD: Final = source("group_add")
GROUP_CHECK: Final = source("group_check")
GROUP_POST: Final = source("group_post")
