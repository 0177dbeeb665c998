"""``RedisStore.submit`` reads the batch script's reply into the same answers as before its
fast path (the old reading is kept here, verbatim, as the reference): every kind of row,
with and without live gateways, in any mix."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from im_gateway.store import entry
from im_gateway.store.contract import (
    Accepted,
    GroupPost,
    Refusal,
    Refused,
    Submission,
    new_accepted,
    new_submission,
)
from im_gateway.store.redis import _answers
from transmit_hub.types import GatewayId, Message, MessageId, Recipient, UserId, new_recipient

# --- the reading before the fast path (im_gateway/store/redis.py at 6822242) ----------------


def _old_result(
    sub: Submission, res: list[Any], presence: dict[int, tuple[GatewayId, ...]]
) -> Accepted | Refused:
    kind = res[0]
    if kind == 0:
        users: list[UserId] = [int(u) for u in res[1::2]]  # type: ignore[misc]
        return new_accepted(
            sub.client_id,
            sub.message,
            False,
            tuple(map(new_recipient, users, res[2::2])),
            {u: presence[u] for u in users if u in presence},
        )
    m = sub.message
    if kind == 2:
        return Refused(sub.client_id, Refusal.NOT_MEMBER)
    if kind in (3, 4):
        at = 1 if kind == 3 else 4
        n = int(res[at + 2])
        pairs = res[at + 3 : at + 3 + 2 * n]
        post = GroupPost(
            int(res[at]), int(res[at + 1]), tuple(map(GatewayId, res[at + 3 + 2 * n :]))
        )
        copies = tuple(
            Recipient(UserId(int(u)), str(p)) for u, p in zip(pairs[0::2], pairs[1::2], strict=True)
        )
        live = {r.user_id: presence[r.user_id] for r in copies if r.user_id in presence}
        first = m if kind == 3 else entry.decode(res[3])
        return Accepted(sub.client_id, first, kind == 4, copies, live, post)
    if kind == 1:
        stored = res[3]
        if isinstance(stored, str):
            m = entry.decode(stored)
        else:
            m = dataclasses.replace(m, id=MessageId(res[1]), time=int(res[2]))
        pairs = res[4:]
    else:
        pairs = res[1:]
    users = [UserId(int(u)) for u in pairs[0::2]]
    recipients = tuple(map(new_recipient, users, pairs[1::2]))
    live = {u: presence[u] for u in users if u in presence}
    return new_accepted(sub.client_id, m, kind == 1, recipients, live)


def _old_answers(
    todo: Sequence[Submission], results: list[list[Any]], live: list[list[str]]
) -> list[Accepted | Refused]:
    presence: dict[int, tuple[GatewayId, ...]] = {
        int(row[0]): (row[1],) if len(row) == 2 else tuple(row[1:])  # type: ignore[misc,arg-type]
        for row in live
    }
    return [_old_result(s, res, presence) for s, res in zip(todo, results, strict=True)]


# --- replies as lua/submit.lua writes them ------------------------------------------------

# Decimal text as the script writes it: a few users (so rows share them), and uint64 ends.
users = st.one_of(st.integers(1, 6), st.sampled_from([0, 2**53 + 1, 2**64 - 1])).map(str)
positions = st.integers(1, 10**12).map(str)
gateways = st.lists(st.sampled_from(["gw-1", "gw-2", "gw-3"]), min_size=1, max_size=3)
pairs = st.lists(st.tuples(users, positions), max_size=4).map(
    lambda ps: [x for pair in ps for x in pair]
)


@st.composite
def rows(draw: st.DrawFn) -> tuple[Submission, list[Any]]:
    m = draw(
        st.builds(
            Message,
            st.text("0123456789abcdef", min_size=1, max_size=30).map(MessageId),
            st.integers(0, 2**64 - 1).map(UserId),
            st.integers(0, 2**64 - 1),
            st.sampled_from([1, 2]),
            st.integers(-(2**31), 2**31 - 1),
            st.integers(0, 2**53),
            st.text(max_size=20),
        )
    )
    sub = new_submission(draw(st.text(max_size=8)), m, draw(st.booleans()))
    kind = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4]))
    if kind == 0:
        # The fast path's row (two pairs) most often, and every other length.
        two = st.tuples(users, positions, users, positions).map(list)
        res: list[Any] = [0, *draw(st.one_of(two, two, pairs))]
    elif kind == 1:
        stored = draw(st.one_of(st.just(False), st.just(entry.encode(m))))
        res = [1, "first-id", "1765000000000", stored, *draw(pairs)]
    elif kind == 2:
        res = [2]
    else:
        copies = draw(st.lists(st.tuples(users, positions), max_size=2))
        head = [3] if kind == 3 else [4, "first-id", "1765000000000", entry.encode(m)]
        res = [
            *head,
            "7",
            draw(positions),
            len(copies),
            *[x for pair in copies for x in pair],
            *draw(st.lists(st.sampled_from(["gw-1", "gw-2"]), max_size=2)),
        ]
    return sub, res


@given(
    st.lists(rows(), max_size=8),
    st.dictionaries(users, gateways, max_size=6),
)
def test_answers_are_the_old_readings(batch: list[tuple[Submission, list[Any]]], at: Any) -> None:
    """Same answers (equal, and the same types) as the reading before the fast path."""
    todo = [sub for sub, _ in batch]
    results = [res for _, res in batch]
    live = [[user, *gws] for user, gws in at.items()]
    new, old = _answers(todo, results, live), _old_answers(todo, results, live)
    assert new == old
    assert [type(a) for a in new] == [type(a) for a in old]
    for a, b in zip(new, old, strict=True):
        if isinstance(a, Accepted):
            assert isinstance(b, Accepted)
            assert dict(a.presence) == dict(b.presence)
            assert [type(u) for u in a.presence] == [type(u) for u in b.presence]
            assert [type(r.user_id) for r in a.recipients] == [int] * len(a.recipients)
