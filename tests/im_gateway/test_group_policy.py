"""The group-join policy: pure decisions (no event loop), and a session applying it."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from im_gateway.errors import ConfigError
from im_gateway.group_policy import (
    JOIN,
    LEAVE,
    OPEN,
    OPEN_RIGHTS,
    SERVER,
    TOKEN,
    GroupRights,
    refusal,
)
from im_gateway.session_limits import SessionLimits
from im_gateway.sessions import Session
from im_gateway.store import MemoryStore
from im_gateway.tasks import cancel_and_wait
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeRouter, FakeWebSocket
from transmit_hub.types import UserId


@pytest.mark.parametrize("kind", [JOIN, LEAVE])
def test_server_policy_refuses_joins_and_leaves(kind: int) -> None:
    """Under ``server`` a client may neither join nor leave, whatever its token lists."""
    reason = refusal(SERVER, kind, 7, {7})
    assert reason is not None
    assert "--group-join server" in reason


def test_token_policy_joins_only_listed_groups() -> None:
    """Under ``token`` a join needs the group in the token's list; no list: no join."""
    assert refusal(TOKEN, JOIN, 7, {7, 8}) is None
    assert refusal(TOKEN, JOIN, 9, {7, 8}) == "your token does not let you join group 9"
    assert refusal(TOKEN, JOIN, 7, frozenset()) is not None


def test_token_policy_leaves_any_group() -> None:
    """Under ``token`` leaving is always allowed (a user can always get out)."""
    assert refusal(TOKEN, LEAVE, 9, frozenset()) is None


@pytest.mark.parametrize("kind", [JOIN, LEAVE])
def test_open_policy_allows_everything(kind: int) -> None:
    """Under ``open`` anyone joins or leaves anything."""
    assert refusal(OPEN, kind, 2**64 - 1, frozenset()) is None
    assert OPEN_RIGHTS.refusal(kind, 1) is None


def test_rights_default_to_server_and_reject_unknown_policies() -> None:
    """A bare GroupRights is the safe default (server); an unknown policy is an error."""
    assert GroupRights().refusal(JOIN, 1) is not None
    assert GroupRights(TOKEN, frozenset({1})).refusal(JOIN, 1) is None
    with pytest.raises(ConfigError, match="server, token, open"):
        GroupRights("anyone")


async def test_a_session_refuses_group_changes_unless_given_rights() -> None:
    """A Session built without group rights answers 12 and 13 with forbidden and joins
    nothing; given token rights, it joins a listed group only."""
    store = MemoryStore()
    for rights, expected in (
        (None, ["forbidden", "forbidden"]),
        (GroupRights(TOKEN, frozenset({7})), [10, "forbidden"]),
    ):
        ws = FakeWebSocket()
        options: dict[str, Any] = {} if rights is None else {"group_rights": rights}
        session = Session(
            ws,
            UserId(5),
            store=store,
            pipeline=(r := FakeRouter()),
            groups=r,
            limits=SessionLimits(),
            **options,
        )
        session.start()
        reader = asyncio.create_task(session.run())
        try:

            def answered(ws: FakeWebSocket = ws, count: int = 1) -> bool:
                return len(ws.frames()) >= count

            await wait_until(answered, what="the replay end")
            ws.client_sends({"type": 12, "id": "j-7", "to": 7})
            ws.client_sends({"type": 12, "id": "j-8", "to": 8})
            await wait_until(functools.partial(answered, count=3), what="two answers")
            answers = [f.get("code", f["type"]) for f in ws.frames()[1:]]
            assert answers == expected
        finally:
            reader.cancel()
            await session.close()
            await cancel_and_wait(reader)
    assert await store.is_member(7, UserId(5))
    assert not await store.is_member(8, UserId(5))
