"""The pure position logic of one connection (im_gateway.cursor), without a loop."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from im_gateway.cursor import Cursor

PAGE = 3


def ready(acked: int = 0) -> Cursor[str]:
    """A cursor whose connect replay found an empty inbox after ``acked``."""
    c: Cursor[str] = Cursor()
    assert c.start(acked) == []
    c.begin_fill()
    c.filled([], acked, complete=True)
    return c


def test_the_next_position_is_sent_at_once_and_repeats_are_dropped() -> None:
    """In order: each push goes straight out; a repeat or an older one is dropped."""
    c = ready()
    assert c.live(1, "a") == ["a"]
    assert c.live(2, "b") == ["b"]
    assert c.live(2, "b") == []
    assert c.live(1, "a") == []
    assert not c.wants_fill


def test_a_hole_holds_later_pushes_until_the_fill_brings_it() -> None:
    """A push beyond a hole waits; the inbox read fills the hole and the held one follows."""
    c = ready()
    assert c.live(2, "b") == []
    assert c.wants_fill
    assert c.begin_fill() == 0
    out = c.filled([(1, "a"), (2, "b-from-inbox")], 2, complete=True)
    assert out.send == ["a", "b-from-inbox"]
    assert not out.trimmed
    assert c.last == 2
    assert not c.wants_fill


def test_a_hole_that_arrives_by_itself_needs_no_read() -> None:
    """Pushes that merely arrive out of order settle without the inbox."""
    c = ready()
    assert c.live(2, "b") == []
    assert c.live(1, "a") == ["a", "b"]
    assert not c.wants_fill


def test_own_positions_move_on_without_a_frame() -> None:
    """The sender's own message advances the position; nothing is sent for it."""
    c = ready()
    assert c.own(1) == []
    assert c.last == 1
    assert c.live(2, "b") == ["b"]
    assert c.own(4) == []
    assert c.wants_fill  # 3 is missing
    c.begin_fill()
    out = c.filled([(3, "c"), (4, "mine")], 4, complete=True)
    assert out.send == ["c"]


def test_a_forged_position_beyond_the_inbox_is_dropped_after_one_read() -> None:
    """A position the inbox never had (a hub may send anything) does not stall the rest."""
    c = ready()
    assert c.live(2**64 - 1, "forged") == []
    c.begin_fill()
    out = c.filled([], 0, complete=True)
    assert out.send == []
    assert not c.wants_fill
    assert c.last == 0
    assert c.live(1, "real") == ["real"]


def test_trimmed_positions_are_reported() -> None:
    """Positions gone from the inbox before the client saw them are said, then skipped."""
    c: Cursor[str] = Cursor()
    c.start(2)
    c.begin_fill()
    out = c.filled([(7, "g"), (8, "h")], 8, complete=True)
    assert out.send == ["g", "h"]
    assert out.trimmed
    c2: Cursor[str] = Cursor()
    c2.start(2)
    c2.begin_fill()
    out2 = c2.filled([], 9, complete=True)
    assert out2.trimmed
    assert c2.last == 9


def test_a_failed_read_is_wanted_again_even_without_a_hole() -> None:
    """A read that failed (or was left for later) changes nothing and is wanted again,
    also when it was only asked for (sync: a catch-up), with no hole to bring it back."""
    c = ready()
    c.sync()
    assert c.begin_fill() == 0
    assert not c.wants_fill
    c.unfilled()
    assert c.wants_fill
    assert c.last == 0
    assert c.begin_fill() == 0
    assert c.filled([(1, "a")], 1, complete=True).send == ["a"]
    assert not c.wants_fill


def test_pushes_before_start_are_held() -> None:
    """Before the connect replay begins nothing is sent; the held pushes go out after it."""
    c: Cursor[str] = Cursor()
    assert c.live(3, "c") == []
    assert not c.wants_fill
    assert c.start(2) == ["c"]


def test_a_client_replay_resends_everything_asked_for() -> None:
    """Type 14 after X: every entry after X is sent, even ones sent before."""
    c = ready()
    c.live(1, "a")
    c.live(2, "b")
    out = c.replayed(0, [(1, "a"), (2, "b"), (3, "c")], 3, complete=True)
    assert out.send == ["a", "b", "c"]
    assert c.last == 3
    assert c.replayed(0, [(2, "b")], 3, complete=True).trimmed


class CursorMachine(RuleBasedStateMachine):
    """Any order of pushes (repeats, reordering, forged positions), own messages, trims,
    fills and client replays: each stored message reaches the client once, in order, and
    the only positions skipped are the client's own and those trimmed (which are said)."""

    def __init__(self) -> None:
        super().__init__()
        self.cursor: Cursor[int] = Cursor(hold_max=4)
        self.stored = 0  # positions 1..stored exist
        self.trimmed_upto = 0  # positions <= this are gone from the inbox
        self.own: set[int] = set()
        self.sent: list[int] = []  # live path (not client replays), in order
        self.said_trimmed = False
        self.acked = 0
        self.claimed: set[int] = set()

    @initialize(acked=st.integers(0, 3), before=st.integers(0, 5))
    def connect(self, acked: int, before: int) -> None:
        self.stored = before
        self.acked = min(acked, before)
        self.sent += self.cursor.start(self.acked)

    def _page(self, after: int) -> tuple[list[tuple[int, int]], int, bool]:
        first = max(after, self.trimmed_upto) + 1
        entries = [(p, p) for p in range(first, min(self.stored, first + PAGE - 1) + 1)]
        complete = not entries or entries[-1][0] >= self.stored
        return entries, self.stored, complete

    @rule(own=st.booleans())
    def store(self, own: bool) -> None:
        self.stored += 1
        if own:
            self.own.add(self.stored)

    @rule(back=st.integers(0, 6))
    def push(self, back: int) -> None:
        pos = self.stored - back
        if pos < 1:
            return
        if pos in self.own:
            self.sent += self.cursor.own(pos)
        else:
            self.sent += self.cursor.live(pos, pos)

    @rule(ahead=st.integers(1, 2**40))
    def forge(self, ahead: int) -> None:
        # A position far beyond the inbox (a hub may send anything). One that is next in
        # line cannot be told from a real push: the hub link is authenticated for that.
        pos = max(self.stored, self.cursor.last) + 1000 + ahead
        self.sent += self.cursor.live(pos, -pos)

    @rule(k=st.integers(0, 3))
    def trim(self, k: int) -> None:
        self.trimmed_upto = min(self.stored, self.trimmed_upto + k)

    @precondition(lambda self: self.cursor.wants_fill)
    @rule()
    def fill(self) -> None:
        after = self.cursor.begin_fill()
        entries, last, complete = self._page(after)
        out = self.cursor.filled(entries, last, complete=complete)
        self.sent += out.send
        self.said_trimmed = self.said_trimmed or out.trimmed

    @precondition(lambda self: self.cursor.wants_fill)
    @rule()
    def failed_fill(self) -> None:
        last = self.cursor.last
        self.cursor.begin_fill()
        self.cursor.unfilled()  # the read failed (a silent node): nothing applied
        assert self.cursor.last == last
        assert self.cursor.wants_fill

    @rule(after=st.integers(0, 8))
    def client_replay(self, after: int) -> None:
        entries, last, complete = self._page(after)
        before = self.cursor.last
        out = self.cursor.replayed(after, entries, last, complete=complete)
        # What the replay brought beyond the live path counts as sent on it; what the
        # client said it has (up to ``after``) it has.
        self.sent += [p for p in out.send if abs(p) > before]
        self.claimed.update(range(before + 1, after + 1))
        self.said_trimmed = self.said_trimmed or out.trimmed

    @invariant()
    def in_order_and_genuine(self) -> None:
        positions = [abs(p) for p in self.sent]
        assert positions == sorted(set(positions)), f"not strictly rising: {self.sent}"
        forged = [-p for p in self.sent if p < 0]
        assert all(p <= self.stored for p in forged), f"a phantom position was sent: {forged}"

    def teardown(self) -> None:
        # Deliver everything stored once more and let the fills run out: nothing is missing.
        for pos in range(1, self.stored + 1):
            if pos in self.own:
                self.sent += self.cursor.own(pos)
            else:
                self.sent += self.cursor.live(pos, pos)
        for _ in range(self.stored + 5):
            if not self.cursor.wants_fill:
                break
            self.fill()
        assert not self.cursor.wants_fill
        seen = {abs(p) for p in self.sent}
        for pos in range(self.acked + 1, self.stored + 1):
            if pos not in seen and pos not in self.own and pos not in self.claimed:
                assert pos <= self.trimmed_upto, f"position {pos} never sent: {self.sent}"
                assert self.said_trimmed, "a trimmed position was skipped silently"


TestCursorMachine = CursorMachine.TestCase
TestCursorMachine.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)


def test_an_inbox_ending_at_the_acknowledged_position_needs_no_read() -> None:
    """ends_at: nothing beyond ``last`` and nothing held means no fill; an inbox ending
    further on, a held push or a cursor not started yet still wants its read."""
    c: Cursor[str] = Cursor()
    assert not c.ends_at(0)  # not started
    c.start(5)
    assert c.wants_fill
    assert not c.ends_at(6)
    assert c.wants_fill
    assert c.ends_at(5)
    assert not c.wants_fill
    assert c.live(6, "six") == ["six"]

    held: Cursor[str] = Cursor()
    assert held.live(3, "three") == []  # before start: held
    held.start(1)
    assert not held.ends_at(1)
    assert held.wants_fill

    drained: Cursor[str] = Cursor()
    drained.live(2, "two")
    assert drained.start(1) == ["two"]  # the held push came in order
    assert drained.ends_at(1)
    assert not drained.wants_fill


_OPS = st.one_of(
    st.tuples(st.just("live"), st.integers(1, 12)),
    st.tuples(st.just("next"), st.integers(0, 2)),  # last + 1 + this: the fast path's case
    st.tuples(st.just("own"), st.integers(1, 12)),
    st.tuples(st.just("start"), st.integers(0, 4)),
    st.tuples(st.just("sync"), st.just(0)),
    st.tuples(st.just("fill"), st.integers(0, 12)),
    st.tuples(st.just("ends_at"), st.integers(0, 12)),
    st.tuples(st.just("rebase"), st.just(0)),
)


def _state(c: Cursor[int]) -> tuple[object, ...]:
    return tuple(getattr(c, name) for name in Cursor.__slots__)


@settings(max_examples=400, deadline=None)
@given(st.lists(_OPS, max_size=40))
# A push claimed 4 beyond the held one (the hold is full); 3 comes next with nothing held:
# the hole at 4 still wants its read.
@example([("start", 0), ("fill", 0), ("live", 2), ("live", 4), ("next", 0), ("next", 0)])
def test_next_live_is_live_when_it_says_so(ops: list[tuple[str, int]]) -> None:
    """next_live (the replayer's fast path) moves the cursor exactly as live does, with
    no fill wanted after, when it returns True, and changes nothing when it returns False:
    two cursors, one fed live only, one next_live first, send the same and stay equal."""
    plain: Cursor[int] = Cursor(hold_max=1)
    fast: Cursor[int] = Cursor(hold_max=1)
    for op, n in ops:
        for c in (plain, fast):
            if op == "own":
                c.own(n)
            elif op == "start":
                c.start(n)
            elif op == "sync":
                c.sync()
            elif op == "fill":
                c.begin_fill()
                c.filled([(p, p) for p in range(c.last + 1, n + 1)], n, complete=True)
            elif op == "ends_at":
                c.ends_at(n)
            elif op == "rebase":
                c.rebase()
        if op in ("live", "next"):
            pos = n if op == "live" else plain.last + 1 + n
            expected = plain.live(pos, pos)
            before = _state(fast)
            if fast.next_live(pos):
                assert expected == [pos]
                assert not plain.wants_fill
            else:
                assert _state(fast) == before
                assert fast.live(pos, pos) == expected
        assert _state(fast) == _state(plain)
        assert fast.wants_fill == plain.wants_fill
