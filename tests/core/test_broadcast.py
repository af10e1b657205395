"""Tests for the broadcast queue (`dsm.core.broadcast.BroadcastQueue`).

Checked against the module docstring:
- each update is taken at most `limit` times, then leaves the queue;
- updates sent fewer times come out first, and among never-sent updates the newest first;
- a newer update about a member replaces the queued one and starts again from zero sendings;
- one `take` returns at most `max_count` updates (max_count >= 1), never two about the same member;
- `len` is the number of members with a queued update, never more than `max_len`: past that, an update
  among those sent the most times is dropped.
A state machine runs random puts and takes against a plain dictionary model.
"""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dsm.core.broadcast import BroadcastQueue
from dsm.core.messages import Update
from dsm.core.ring import State

SETTINGS = settings(max_examples=150, deadline=None)


def update(slot: int, incarnation: int = 0, state: int = State.ALIVE) -> Update:
    """An update about the member in `slot` (its node id names the slot)."""
    return Update(state, f"n{slot}", incarnation, f"10.0.0.{slot}:7000", "eu", "")


def slot_of(u: Update) -> int:
    return int(u.node_id[1:])


def contents(queue: BroadcastQueue) -> dict[int, Update]:
    """What the queue holds, by slot, read by draining a copy (the queue itself is left untouched)."""
    drained = copy.deepcopy(queue)
    if not len(drained):
        return {}
    taken = drained.take(len(drained), 1)
    assert len(drained) == 0
    return {slot_of(u): u for u in taken}


def test_take_on_empty_queue() -> None:
    queue = BroadcastQueue()
    assert queue.take(5, 3) == ()
    assert len(queue) == 0


@SETTINGS
@given(n=st.integers(1, 12), limit=st.integers(1, 6), max_count=st.integers(1, 5))
def test_each_update_is_taken_exactly_limit_times_then_never(n: int, limit: int, max_count: int) -> None:
    queue = BroadcastQueue()
    for slot in range(n):
        queue.put(slot, update(slot))
    sent = dict.fromkeys(range(n), 0)
    rounds = 0
    while len(queue):
        batch = queue.take(max_count, limit)
        assert 1 <= len(batch) <= max_count
        slots = [slot_of(u) for u in batch]
        assert len(set(slots)) == len(slots)
        # The least-sent go first: everything taken was sent no more often than anything left behind.
        left_behind = [sent[s] for s in range(n) if s not in slots and sent[s] < limit]
        if left_behind:
            assert max(sent[s] for s in slots) <= min(left_behind)
        assert [sent[s] for s in slots] == sorted(sent[s] for s in slots)
        for s in slots:
            sent[s] += 1
        assert len(queue) == sum(1 for c in sent.values() if c < limit)
        rounds += 1
        assert rounds <= n * limit
    assert sent == dict.fromkeys(range(n), limit)
    assert queue.take(max_count, limit) == ()


def test_never_sent_updates_go_first_newest_first() -> None:
    queue = BroadcastQueue()
    for slot in range(3):
        queue.put(slot, update(slot))
    assert [slot_of(u) for u in queue.take(1, 5)] == [2]
    queue.put(7, update(7))
    queue.put(8, update(8))
    # 8 and 7 were never sent (newest first), then 1 and 0, then 2 (sent once).
    assert [slot_of(u) for u in queue.take(10, 5)] == [8, 7, 1, 0, 2]


def test_put_newer_update_replaces_and_resets_count() -> None:
    queue = BroadcastQueue()
    queue.put(1, update(1, incarnation=1))
    queue.put(2, update(2))
    assert len(queue.take(2, 3)) == 2
    assert len(queue.take(2, 3)) == 2  # both sent twice now
    newer = update(1, incarnation=2, state=State.SUSPECT)
    queue.put(1, newer)
    assert len(queue) == 2
    # The newer update has been sent 0 times, so it leads, and it gets its full 3 sendings.
    assert queue.take(1, 3) == (newer,)
    assert queue.take(2, 3) == (newer, update(2))  # 2 leaves the queue after its third sending
    assert queue.take(2, 3) == (newer,)
    assert queue.take(2, 3) == ()
    assert len(queue) == 0


def test_put_same_update_again_also_resets_count() -> None:
    queue = BroadcastQueue()
    queue.put(4, update(4))
    queue.take(1, 2)
    queue.put(4, update(4))
    assert queue.take(1, 2) == (update(4),)
    assert queue.take(1, 2) == (update(4),)
    assert queue.take(1, 2) == ()


def test_limit_one_sends_once() -> None:
    queue = BroadcastQueue()
    queue.put(3, update(3))
    assert queue.take(4, 1) == (update(3),)
    assert len(queue) == 0
    assert queue.take(4, 1) == ()


def test_max_len_drops_the_most_sent() -> None:
    queue = BroadcastQueue(max_len=3)
    for slot in range(3):
        queue.put(slot, update(slot))
    sent = dict.fromkeys(range(3), 0)
    for _ in range(4):  # each sent once, then one of them a second time
        for u in queue.take(1, 10):
            sent[slot_of(u)] += 1
    (twice,) = (slot for slot, count in sent.items() if count == 2)
    queue.put(5, update(5))
    assert len(queue) == 3
    assert set(contents(queue)) == {0, 1, 2, 5} - {twice}
    # Replacing a queued update at full length drops nothing.
    newer = update(5, incarnation=1)
    queue.put(5, newer)
    assert len(queue) == 3
    assert contents(queue) == {slot: update(slot) for slot in {0, 1, 2} - {twice}} | {5: newer}


def test_max_len_never_exceeded_under_many_puts() -> None:
    queue = BroadcastQueue(max_len=8)
    for slot in range(100):
        queue.put(slot, update(slot))
        assert len(queue) == min(slot + 1, 8)
        if slot % 3 == 0:
            queue.take(2, 50)
    assert len(contents(queue)) == 8


class BroadcastQueueMachine(RuleBasedStateMachine):
    """Random puts and takes against a model: slot -> (update, times sent, put sequence number)."""

    @initialize(max_len=st.integers(1, 6), limit=st.integers(1, 4))
    def setup(self, max_len: int, limit: int) -> None:
        self.queue = BroadcastQueue(max_len=max_len)
        self.max_len = max_len
        self.limit = limit
        self.model: dict[int, tuple[Update, int, int]] = {}
        self.sendings: dict[Update, int] = {}
        self.version = 0
        self.seq = 0

    @rule(slot=st.integers(0, 9), state=st.sampled_from([State.ALIVE, State.SUSPECT, State.DEAD]))
    def put(self, slot: int, state: State) -> None:
        self.version += 1
        self.seq += 1
        u = update(slot, self.version, state)
        before = dict(self.model)
        self.queue.put(slot, u)
        self.model[slot] = (u, 0, self.seq)
        if len(self.model) > self.max_len:
            after = contents(self.queue)
            dropped = set(self.model) - set(after)
            assert len(dropped) == 1, dropped
            (gone,) = dropped
            most = max(count for _, count, _ in self.model.values())
            assert self.model[gone][1] == most
            del self.model[gone]
        else:
            assert len(self.queue) == len(before) + (slot not in before)

    @rule(max_count=st.integers(1, 5))
    def take(self, max_count: int) -> None:
        batch = self.queue.take(max_count, self.limit)
        assert len(batch) == min(max_count, len(self.model))
        slots = [slot_of(u) for u in batch]
        assert len(set(slots)) == len(slots)
        for u, slot in zip(batch, slots, strict=True):
            assert self.model[slot][0] == u
        counts = [self.model[s][1] for s in slots]
        assert counts == sorted(counts)
        rest = [count for s, (_, count, _) in self.model.items() if s not in slots]
        if counts and rest:
            assert max(counts) <= min(rest)
        # Among never-sent updates, the most recently put come first.
        fresh = sorted((seq for _, count, seq in self.model.values() if count == 0), reverse=True)
        taken_fresh = [self.model[s][2] for s in slots if self.model[s][1] == 0]
        assert taken_fresh == fresh[: len(taken_fresh)]
        for u, slot in zip(batch, slots, strict=True):
            self.sendings[u] = self.sendings.get(u, 0) + 1
            assert self.sendings[u] <= self.limit
            _, count, seq = self.model[slot]
            if count + 1 >= self.limit:
                del self.model[slot]
            else:
                self.model[slot] = (u, count + 1, seq)

    @invariant()
    def matches_model(self) -> None:
        assert len(self.queue) == len(self.model) <= self.max_len
        assert contents(self.queue) == {slot: u for slot, (u, _, _) in self.model.items()}


BroadcastQueueMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_broadcast_queue_against_model = BroadcastQueueMachine.TestCase
