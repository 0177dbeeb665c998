"""The byte budget the gateways' outboxes share (``--queue-bytes-total``): pure tests, and a
hypothesis state machine over offers, takes, writes completed, replacements, closes and
discards."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from transmit_hub import GatewayId
from transmit_hub.errors import ConfigError
from transmit_hub.outbox import ByteBudget, Outbox
from transmit_hub.registry import Registry


def queued_bytes(box: Outbox) -> int:
    """The bytes of the items in ``box``, counted from its queues (not its own count)."""
    return sum(map(len, box._deliveries)) + sum(map(len, box._notices))


def test_past_the_shared_budget_offers_are_refused_but_an_empty_outbox_takes_one() -> None:
    """Outboxes sharing a budget refuse what would take their total past it (deliveries
    counted in ``refused``, notices too but not counted); an empty one takes one item
    whatever the total; frames written give the bytes back and offers go in again."""
    budget = ByteBudget(10)
    a, b, c = (Outbox(100, 1000, budget) for _ in range(3))
    assert a.offer(b"x" * 6)
    assert b.offer(b"y" * 4)
    assert budget.total == 10
    assert not a.offer(b"z")
    assert not b.offer_notice(b"n")
    assert budget.refused == 1  # the notice is not a delivery refused
    assert c.offer(b"w" * 30)  # empty: takes one, however far past the budget
    assert budget.total == 40
    assert not c.offer(b"v")
    assert budget.refused == 2
    assert c.take(10, 100) == ([b"w" * 30], [])
    assert b.take(10, 100) == ([b"y" * 4], [])
    assert budget.total == 40  # taken, being written: still held
    c.written()
    b.written()
    assert budget.total == 6
    assert a.offer(b"z" * 4)
    assert not a.offer(b"z")
    assert (budget.total, budget.refused) == (10, 3)


def test_an_outbox_without_a_budget_has_its_own_unlimited_one() -> None:
    """Outboxes made without a budget share none: each counts its own bytes."""
    a, b = Outbox(10), Outbox(10)
    assert a.budget is not b.budget
    a.offer(b"abc")
    assert (a.budget.total, b.budget.total) == (3, 0)
    with pytest.raises(ConfigError, match="budget"):
        ByteBudget(0)


def test_discard_drops_what_waits_and_gives_its_bytes_back_once() -> None:
    """discard() closes the outbox, drops its items and gives their bytes back; a second
    discard, a close or a take afterwards gives nothing back again."""
    budget = ByteBudget(100)
    box, other = Outbox(10, 100, budget), Outbox(10, 100, budget)
    box.offer(b"a" * 5)
    box.offer_notice(b"n" * 3)
    other.offer(b"o" * 7)
    box.discard()
    assert (budget.total, box.waiting_bytes, len(box), box.closed) == (7, 0, 0, True)
    box.discard()
    box.close()
    assert box.take(10, 100) == ([], [])
    assert not box.offer(b"late")
    assert budget.total == 7


def test_a_replaced_gateway_moves_its_bytes_and_a_detach_gives_them_back() -> None:
    """Registry: a gateway attached again adopts its old outbox's items (the total
    unchanged; the old stream's detach gives back nothing more), a stream detached with
    items waiting gives their bytes back, and the total ends at 0."""
    registry = Registry("hub", 8, queue_bytes=1024, queue_bytes_total=4096)
    budget = registry.budget
    old = registry.attach(GatewayId("gw"), "p1")
    for i in range(3):
        assert old.outbox.offer(bytes([i]) * 100)
    assert old.outbox.offer_notice(b"n" * 10)
    other = registry.attach(GatewayId("other"), "p2")
    assert other.outbox.offer(b"o" * 50)
    assert budget.total == 360
    new = registry.attach(GatewayId("gw"), "p3")
    assert (len(new.outbox), len(old.outbox), budget.total) == (4, 0, 360)
    assert registry.detach(old) is False  # replaced: not the registered stream
    assert budget.total == 360
    assert new.outbox.take(1, 1000) == ([], [b"n" * 10])
    assert registry.detach(new)
    assert budget.total == 50
    assert registry.detach(other)
    assert budget.total == 0
    assert registry.detach(other) is False
    assert budget.total == 0


def test_a_frame_taken_stays_counted_until_written() -> None:
    """take() moves the items' bytes into the frame being written, still counted in the
    outbox's bound and the budget (an outbox writing a frame is not empty: past the budget
    it refuses); written() gives them back, once."""
    budget = ByteBudget(10)
    box, other = Outbox(10, 8, budget), Outbox(10, 100, budget)
    assert box.offer(b"a" * 3)
    assert box.offer_notice(b"n" * 3)
    assert box.take(10, 100) == ([b"a" * 3], [b"n" * 3])
    assert (box.waiting_bytes, box.writing_bytes, box.held_bytes, budget.total) == (0, 6, 6, 6)
    assert budget.writing == 6
    assert len(box) == 0
    assert not box.offer(b"b" * 3)  # its own bound: 6 being written + 3 > 8
    assert other.offer(b"o" * 4)
    assert not box.offer(b"c")  # the budget: 10 + 1 > 10, and box is not empty
    assert budget.refused == 1
    box.written()
    assert (box.held_bytes, box.writing_bytes, budget.total) == (0, 0, 4)
    box.written()
    assert budget.total == 4
    assert box.offer(b"b" * 8)  # empty again: takes one item past the budget
    assert budget.total == 12


def test_discard_gives_back_the_frame_being_written_once() -> None:
    """A gateway detached mid-write: discard() gives back what waits and the frame being
    written; the write completing afterwards (written()) gives back nothing more."""
    budget = ByteBudget(100)
    box = Outbox(10, 100, budget)
    box.offer(b"a" * 5)
    box.offer(b"b" * 7)
    box.take(1, 100)
    assert (box.waiting_bytes, box.writing_bytes, budget.total) == (7, 5, 12)
    box.discard()
    assert (box.held_bytes, box.writing_bytes, budget.total, budget.writing) == (0, 0, 0, 0)
    box.written()
    box.discard()
    assert budget.total == 0


def test_a_replaced_stream_keeps_its_frame_being_written_until_detached() -> None:
    """Registry: a gateway attached again while its old stream writes a frame: the new
    outbox adopts what waits, the frame stays counted in the old one until the old stream
    is detached, which gives it back."""
    registry = Registry("hub", 8, queue_bytes=1024, queue_bytes_total=4096)
    budget = registry.budget
    old = registry.attach(GatewayId("gw"), "p1")
    for i in range(3):
        assert old.outbox.offer(bytes([i]) * 100)
    old.outbox.take(1, 1000)
    new = registry.attach(GatewayId("gw"), "p2")
    assert (old.outbox.held_bytes, new.outbox.held_bytes, budget.total) == (100, 200, 300)
    assert registry.detach(old) is False
    assert budget.total == 200
    old.outbox.written()
    assert budget.total == 200


def test_the_registry_shares_one_budget_of_queue_bytes_total() -> None:
    """Every attached gateway's outbox shares the registry's budget (1 GiB by default)."""
    assert Registry("hub", 8).budget.limit == 1024 * 1024 * 1024
    registry = Registry("hub", 8, queue_bytes_total=2048)
    a = registry.attach(GatewayId("a"), "p1")
    b = registry.attach(GatewayId("b"), "p2")
    assert a.outbox.budget is b.outbox.budget is registry.budget
    assert registry.budget.limit == 2048


LIMIT = 60
BIGGEST = 25
"""The largest item the machine offers."""


class SharedBudgetMachine(RuleBasedStateMachine):
    """Outboxes sharing one budget under random offers, takes (a frame being written),
    writes completed, replacements (a new outbox adopting an old one, as
    :meth:`Registry.attach` does), closes and discards (a detach, mid-write or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = ByteBudget(LIMIT)
        self.live: list[Outbox] = []
        self.gone: list[Outbox] = []
        self.writing: dict[Outbox, int] = {}
        """The bytes of the frames taken from each outbox and not yet written (the model)."""
        self.refused = 0

    def _pick(self, i: int) -> Outbox:
        return self.live[i % len(self.live)]

    @rule(capacity=st.integers(1, 6), max_bytes=st.integers(1, 80))
    def new_outbox(self, capacity: int, max_bytes: int) -> None:
        box = Outbox(capacity, max_bytes, self.budget)
        self.live.append(box)
        self.writing[box] = 0

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 50), size=st.integers(1, BIGGEST), notice=st.booleans())
    def offer(self, i: int, size: int, notice: bool) -> None:
        box = self._pick(i)
        before, total = box.held_bytes, self.budget.total
        room = not box.closed and len(box) < box.capacity and before + size <= box._max_bytes
        item = bytes([i % 256]) * size
        taken = box.offer_notice(item) if notice else box.offer(item)
        if taken:
            assert self.budget.total == total + size
            if before:  # only an empty outbox may take the total past the budget
                assert self.budget.total <= LIMIT
        else:
            assert self.budget.total == total
        if not box.closed and len(box) < box.capacity and not before:
            assert taken, "an empty outbox (nothing waiting or being written) takes one item"
        if room and before and total + size > LIMIT:
            assert not taken
            self.refused += not notice
        assert self.budget.refused == self.refused

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 50), items=st.integers(1, 5), max_bytes=st.integers(1, 60))
    def take(self, i: int, items: int, max_bytes: int) -> None:
        box = self._pick(i)
        held, waiting, total = box.held_bytes, box.waiting_bytes, self.budget.total
        deliveries, notices = box.take(items, max_bytes)
        size = sum(map(len, deliveries)) + sum(map(len, notices))
        self.writing[box] += size
        assert box.waiting_bytes == waiting - size
        assert (box.held_bytes, self.budget.total) == (held, total)  # still counted

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 50))
    def written(self, i: int) -> None:
        box = self._pick(i)
        total = self.budget.total
        box.written()
        assert self.budget.total == total - self.writing[box]
        self.writing[box] = 0

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 50), capacity=st.integers(1, 6), max_bytes=st.integers(1, 80))
    def replace(self, i: int, capacity: int, max_bytes: int) -> None:
        old = self._pick(i)
        total = self.budget.total
        old.close()
        new = Outbox(capacity, max_bytes, self.budget)
        new.adopt(old)
        assert self.budget.total == total
        assert old.writing_bytes == self.writing[old]  # its frame stays with it
        self.live.append(new)  # the old one stays until it is discarded
        self.writing[new] = 0

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 50))
    def close(self, i: int) -> None:
        self._pick(i).close()

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 50), twice=st.booleans())
    def discard(self, i: int, twice: bool) -> None:
        box = self._pick(i)
        total, held = self.budget.total, box.held_bytes
        box.discard()
        if twice:
            box.discard()
        assert self.budget.total == total - held
        self.live.remove(box)
        self.gone.append(box)
        self.writing[box] = 0

    @precondition(lambda self: self.gone)
    @rule(i=st.integers(0, 50))
    def written_after_discard(self, i: int) -> None:
        total = self.budget.total
        self.gone[i % len(self.gone)].written()
        assert self.budget.total == total

    @invariant()
    def the_total_is_the_sum_of_the_outboxes(self) -> None:
        assert self.budget.total == sum(box.held_bytes for box in self.live)
        assert self.budget.writing == sum(self.writing.values())
        for box in self.live:
            assert box.waiting_bytes == queued_bytes(box)
            assert box.writing_bytes == self.writing[box]
            assert box.held_bytes == queued_bytes(box) + self.writing[box]
        for box in self.gone:
            assert (box.held_bytes, len(box)) == (0, 0)

    @invariant()
    def past_the_budget_by_at_most_one_item_per_outbox(self) -> None:
        holding = sum(1 for box in self.live if box.held_bytes)
        assert self.budget.total <= LIMIT + holding * BIGGEST

    def teardown(self) -> None:
        for n, box in enumerate(self.live):
            if n % 2:
                box.discard()
            else:
                while len(box):
                    box.take(3, 10)
                box.written()
        assert (self.budget.total, self.budget.writing) == (0, 0)


TestSharedBudgetMachine = SharedBudgetMachine.TestCase
TestSharedBudgetMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
