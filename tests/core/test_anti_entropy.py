"""Anti-entropy's schedule and steps (`dsm.core.anti_entropy`) inside a node's core (`dsm.core.node_core`), on
real `Peer`s: when a node reconciles and with whom, whom it answers, and two cores wired together by hand
(h11's ConnectionPair style) bringing two in-memory replicas to their merge. No event loop, no store."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

from dsm.core.anti_entropy import BUSY_RECHECK_MS, CATCH_UP_POLL_MS, AntiEntropy, ReconcileStep, run_step
from dsm.core.dissemination import DataItem, WriteRate, update_id
from dsm.core.encoding import decode_versions, digest, encode_versions
from dsm.core.hlc import pack
from dsm.core.messages import DataItems, DirectPush, Ping, Reconcile, Update
from dsm.core.node_core import NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.reconcile import SortedReplica, opening
from dsm.core.replica import MergeOp, Replica, ReplicaSettings
from dsm.core.ring import Directory, MemberInfo, State
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write

INTERVAL = PeerSettings().anti_entropy_interval_ms
MAX_BYTES = PeerSettings().anti_entropy_max_bytes
INFOS = [MemberInfo(f"n{i}", f"mem://n{i}", "r") for i in range(3)]
WALL = 1_700_000_000_000


def node(
    me: int = 0,
    members: list[int] | None = None,
    seed: int = 1,
    anti_entropy: bool = True,
    settings: PeerSettings | None = None,
) -> NodeCore:
    """A node's core; `members`: the cluster it starts in (`Peer.install`: known, alive, linked), None: not
    joined."""
    peer = Peer(INFOS[me], settings or PeerSettings(), random.Random(seed), 0, directory=Directory())
    if members is not None:
        peer.install([(INFOS[i], 0) for i in members])
    return NodeCore(peer, Resolution.SIBLINGS, iter(range(1, 1_000_000)).__next__, 0, anti_entropy)


def schedule(core: NodeCore) -> AntiEntropy:
    assert core.anti_entropy is not None
    return core.anti_entropy


def steps(effects: list[object]) -> list[ReconcileStep]:
    return [e for e in effects if isinstance(e, ReconcileStep)]


def suspect(core: NodeCore, node_id: str, now: int) -> None:
    """Another member reports `node_id` suspect (piggybacked on a probe): still linked, not alive."""
    reporter = next(i.node_id for i in INFOS if i.node_id not in (core.peer.id, node_id))
    update = Update(int(State.SUSPECT), node_id, 0, f"mem://{node_id}", "r", reporter)
    core.handle(now, reporter, Ping(1, reporter, core.peer.id, (update,)))
    assert core.peer.member_state(node_id) == State.SUSPECT and node_id in core.peer.link_ids()


# --- when, and with whom


def test_a_starting_node_polls_until_joined_with_a_live_link_then_reconciles_at_once() -> None:
    core = node(members=None)
    ae = schedule(core)
    for now in (0, 50, 100):  # not joined
        assert steps(core.tick(now)) == [] and ae.next_deadline() == now + CATCH_UP_POLL_MS
    core.peer.install([(INFOS[0], 0)])  # joined, alone: no live link
    assert core.peer.joined and core.peer.link_ids() == []
    assert steps(core.tick(150)) == [] and ae.next_deadline() == 150 + CATCH_UP_POLL_MS
    core.peer.install([(info, 0) for info in INFOS])
    assert steps(core.tick(199)) == []  # not due yet
    (first,) = steps(core.tick(200))
    assert first.message is None and first.node_id in ("n1", "n2") and ae.sessions == 1
    due = ae.next_deadline()
    assert 200 <= due < 200 + INTERVAL  # then from a random phase
    assert steps(core.tick(due - 1)) == []
    (second,) = ae.tick(due)
    assert second.message is None and second.session != first.session and ae.next_deadline() == due + INTERVAL


def test_the_regular_rounds_start_from_a_random_phase() -> None:
    phases = set()
    for seed in range(8):
        ae = schedule(node(members=[0, 1, 2], seed=seed))
        assert len(ae.tick(0)) == 1  # linked from the start: reconciles at once
        phases.add(ae.next_deadline())
    assert all(0 <= phase < INTERVAL for phase in phases) and len(phases) > 1


def test_catching_up_gives_up_after_one_interval_without_a_live_link() -> None:
    core = node(members=[0])  # joined alone
    ae = schedule(core)
    polls = 0
    while ae.next_deadline() < INTERVAL:
        assert ae.tick(ae.next_deadline()) == []
        polls += 1
    assert polls == INTERVAL // CATCH_UP_POLL_MS
    assert ae.tick(INTERVAL) == []  # gave up
    due = ae.next_deadline()
    assert INTERVAL + CATCH_UP_POLL_MS < due < 2 * INTERVAL  # this seed's phase
    core.peer.install([(info, 0) for info in INFOS])  # a live link now, but no more polling
    assert ae.tick(INTERVAL + CATCH_UP_POLL_MS) == []
    assert ae.next_deadline() == due
    (step,) = ae.tick(due)  # the regular round
    assert step.message is None and step.node_id in ("n1", "n2")


def test_only_live_linked_members_are_chosen_and_without_one_a_round_sends_nothing() -> None:
    core = node(members=[0, 1, 2])
    ae = schedule(core)
    assert len(ae.tick(0)) == 1
    suspect(core, "n1", 1)
    for _ in range(10):
        (step,) = ae.tick(ae.next_deadline())
        assert step.node_id == "n2"
    suspect(core, "n2", ae.next_deadline())
    sessions, due = ae.sessions, ae.next_deadline()
    assert ae.tick(due) == [] and ae.sessions == sessions
    assert ae.next_deadline() == due + INTERVAL  # no catching up again: the next regular round


#: No probes (the members these tests' nodes link to never answer one): they stay alive for minutes.
UNPROBED = PeerSettings(probe_interval_ms=1 << 40)


def writes_from(core: NodeCore, source: str, start: int, until: int, per_ms: int = 2) -> None:
    """`source` pushes `per_ms` writes a millisecond to `core` from `start` up to `until` (direct pushes,
    one message per millisecond), through the core's own dispatcher."""
    for now in range(start, until):
        items = tuple(DataItem(update_id(f"k{now}-{i}", now, source), f"k{now}-{i}", b"v") for i in range(per_ms))
        core.handle(now, source, DirectPush(source, items))


def test_the_write_rate_counts_each_new_write_once_over_the_last_whole_second() -> None:
    rate = WriteRate(0)
    rate.note(0, 500)
    assert rate.per_second(999) == 0  # no window has ended yet
    rate.note(999, 1500)
    assert rate.per_second(1000) == 2000
    assert rate.per_second(1500) == 2000  # the last whole window, until the next one ends
    assert rate.per_second(3000) == 0  # quiet since
    core = node(members=[0, 1, 2])
    writes_from(core, "n1", 0, 1000)
    assert core.peer.data.rate.per_second(1000) == 2000
    duplicate = DataItem(update_id("k1-0", 1, "n1"), "k1-0", b"v")
    core.handle(1000, "n1", DirectPush("n1", (duplicate,)))  # a duplicate counts nothing
    assert core.peer.data.rate.per_second(2000) == 0


def test_a_round_due_under_heavy_writes_waits_until_they_ease() -> None:
    core = node(members=[0, 1, 2], settings=UNPROBED)
    ae = schedule(core)
    assert len(ae.tick(0)) == 1  # catching up: at once
    due = ae.next_deadline()
    writes_from(core, "n2", due - 1500, due)  # 2,000 writes a second when the round is due
    assert steps(core.tick(due)) == [] and ae.held == 1
    assert ae.next_deadline() == due + BUSY_RECHECK_MS
    writes_from(core, "n2", due, due + BUSY_RECHECK_MS)
    assert steps(core.tick(due + BUSY_RECHECK_MS)) == [] and ae.held == 1  # the same round, still waiting
    writes_from(core, "n2", due + BUSY_RECHECK_MS, due + 2500)
    quiet = due + 4 * BUSY_RECHECK_MS  # a whole quiet second after the writes stopped
    (step,) = steps(core.tick(quiet))
    assert step.message is None and ae.sessions == 2 and ae.held == 1
    assert ae.next_deadline() == quiet + INTERVAL


def test_under_steady_heavy_writes_a_round_waits_at_most_one_interval() -> None:
    core = node(members=[0, 1, 2], settings=UNPROBED)
    ae = schedule(core)
    assert len(ae.tick(0)) == 1
    due = ae.next_deadline()
    now = due - 1000
    ran_at = None
    while ran_at is None and now < due + 3 * INTERVAL:
        writes_from(core, "n1", now, now + BUSY_RECHECK_MS)
        now += BUSY_RECHECK_MS
        if now >= ae.next_deadline() and steps(core.tick(now)):
            ran_at = now
    assert ran_at is not None and due + INTERVAL - BUSY_RECHECK_MS <= ran_at <= due + INTERVAL + BUSY_RECHECK_MS
    assert ae.held == 1 and ae.sessions == 2


def answer_to(step: ReconcileStep, peer: str) -> Reconcile:
    """A message of `peer` in `step`'s exchange that asks for more (a summary of a store of one key)."""
    return opening(step.session, peer, SortedReplica({"x": b"v"}))


def test_an_exchange_opened_in_a_lull_gives_way_when_the_writes_come_back() -> None:
    core = node(members=[0, 1, 2], settings=UNPROBED)
    ae = schedule(core)
    assert len(ae.tick(0)) == 1
    due = ae.next_deadline()
    writes_from(core, "n1", due - 1500, due)
    assert steps(core.tick(due)) == [] and ae.held == 1  # held
    # A quiet second: the round runs, in a lull.
    (step,) = steps(core.tick(due + 2 * BUSY_RECHECK_MS))
    writes_from(core, "n1", due + 2 * BUSY_RECHECK_MS, due + 3 * BUSY_RECHECK_MS + 1)  # and the writes are back
    now = due + 3 * BUSY_RECHECK_MS + 1
    assert core.handle(now, step.node_id, answer_to(step, step.node_id)) == []  # dropped, not answered
    assert ae.held == 2 and ae.next_deadline() == now + BUSY_RECHECK_MS
    # Steps of other exchanges (opened by the peer) are answered as ever.
    assert len(steps(core.handle(now, "n2", opening(99, "n2", SortedReplica({"y": b"v"}))))) == 1
    # The round waits again within its first bound (from `due`): it runs by due + INTERVAL, writes or not.
    t = now
    while not (ran := steps(core.tick(t)) if t >= ae.next_deadline() else []):
        writes_from(core, "n1", t, t + 100)
        t += 100
        assert t <= due + INTERVAL + BUSY_RECHECK_MS
    (forced,) = ran
    assert t >= due + INTERVAL - BUSY_RECHECK_MS
    # A round forced by its bound does not give way: its answers are answered under heavy writes too.
    writes_from(core, "n1", t, t + 500)
    assert len(steps(core.handle(t + 500, forced.node_id, answer_to(forced, forced.node_id)))) == 1
    # Nor does one opened in a lull just before its bound, once the bound has passed.
    due = ae.next_deadline()
    writes_from(core, "n1", t + 500, due)
    assert steps(core.tick(due)) == []  # held
    t = due + INTERVAL - 2 * BUSY_RECHECK_MS
    (late,) = steps(core.tick(t))  # a lull, 2 s before its bound
    writes_from(core, "n1", t, due + INTERVAL + 1)
    assert len(steps(core.handle(due + INTERVAL + 1, late.node_id, answer_to(late, late.node_id)))) == 1


def test_catching_up_never_gives_way_a_regular_round_does_and_nothing_does_with_the_bound_off() -> None:
    core = node(members=[0, 1, 2], settings=UNPROBED)
    ae = schedule(core)
    (catch_up,) = ae.tick(0)
    writes_from(core, "n1", 1, 2000)
    assert len(steps(core.handle(2000, catch_up.node_id, answer_to(catch_up, catch_up.node_id)))) == 1
    due = ae.next_deadline()
    (step,) = steps(core.tick(due))  # quiet when due: runs at once
    writes_from(core, "n1", due, due + 1500)
    now = due + 1500
    # A round that ran at once ran in a lull too (the writes were light): it gives way as well.
    assert core.handle(now, step.node_id, answer_to(step, step.node_id)) == []
    never = node(members=[0, 1, 2], settings=PeerSettings(probe_interval_ms=1 << 40, anti_entropy_busy_writes=0))
    ae = schedule(never)
    assert len(ae.tick(0)) == 1
    due = ae.next_deadline()
    (step,) = steps(never.tick(due))
    writes_from(never, "n1", due, due + 1500)
    assert len(steps(never.handle(due + 1500, step.node_id, answer_to(step, step.node_id)))) == 1


def test_light_writes_and_catching_up_never_wait() -> None:
    core = node(members=[0, 1, 2], settings=UNPROBED)
    ae = schedule(core)
    writes_from(core, "n1", 0, 2000)  # 2,000 writes a second while catching up
    assert len(ae.tick(2000)) == 1 and ae.held == 0
    due = ae.next_deadline()
    writes_from(core, "n1", 2000, due, per_ms=1)  # 1,000 a second: not above the default bound
    assert len(steps(core.tick(due))) == 1 and ae.held == 0
    never = node(members=[0, 1, 2], settings=PeerSettings(probe_interval_ms=1 << 40, anti_entropy_busy_writes=0))
    ae = schedule(never)
    assert len(ae.tick(0)) == 1
    due = ae.next_deadline()
    writes_from(never, "n1", max(1, due - 1500), due)
    assert len(steps(never.tick(due))) == 1 and ae.held == 0


def test_a_node_that_left_runs_no_rounds() -> None:
    core = node(members=[0, 1, 2])
    core.peer.leave(0)
    assert steps(core.tick(0)) == [] and steps(core.tick(INTERVAL)) == []


# --- answering


def test_an_incoming_reconcile_is_answered_to_the_authenticated_source_not_the_claimed_one() -> None:
    core = node(members=[0, 1, 2])
    message = Reconcile(7, "n2", (), (("k", b"v"),))  # claims to come from n2
    assert core.handle(5, "n1", message) == [ReconcileStep("n1", 7, message)]
    assert node(members=[0, 1, 2], anti_entropy=False).handle(5, "n1", message) == []


# --- two cores wired together


def versions_of(node_id: str, ms: int, value: bytes) -> VersionSet:
    return write(VersionSet(), Dot(pack(ms), node_id), VersionVector(), value, Resolution.SIBLINGS, 16)


def contents() -> tuple[dict[str, VersionSet], dict[str, VersionSet]]:
    """Two replicas: 300 keys in common, 25 only on the first, 20 only on the second, 10 with concurrent
    versions on each."""
    common = {f"k{i:04d}": versions_of("n2", WALL - i, b"same") for i in range(300)}
    left, right = dict(common), dict(common)
    left.update({f"a{i:03d}": versions_of("n0", WALL - i, b"left") for i in range(25)})
    right.update({f"b{i:03d}": versions_of("n1", WALL - i, b"right") for i in range(20)})
    for i in range(0, 300, 30):
        left[f"k{i:04d}"] = versions_of("n0", WALL + i, b"left side")
        right[f"k{i:04d}"] = versions_of("n1", WALL + i, b"right side")
    return left, right


Merge = Callable[[SortedReplica, DataItems], None]


def merge_by_versions(view: SortedReplica, items: DataItems) -> None:
    for _, key, versions in items:
        held = view.get(key)
        mine = VersionSet() if held is None else decode_versions(held)
        view[key] = encode_versions(mine.merge(decode_versions(versions), Resolution.SIBLINGS))


def merge_by_replica(replica: Replica) -> Merge:
    def merge(view: SortedReplica, items: DataItems) -> None:
        op = MergeOp(items)
        commit = replica.apply([op], {k: v for k in replica.reads([op]) if (v := view.get(k)) is not None}, WALL)
        assert op.refused == 0
        for row in commit.rows:
            view.put(row.key, row.versions, row.digest)

    return merge


@pytest.mark.parametrize("merger", ["VersionSet.merge", "Replica.apply"])
def test_two_cores_wired_together_bring_their_replicas_to_the_merge(merger: str) -> None:
    left, right = contents()
    cores = {"n0": node(0, [0, 1]), "n1": node(1, [0, 1])}
    views = {
        "n0": SortedReplica({k: encode_versions(v) for k, v in left.items()}),
        "n1": SortedReplica({k: encode_versions(v) for k, v in right.items()}),
    }
    settings = ReplicaSettings(Resolution.SIBLINGS)
    merges: dict[str, Merge] = (
        {"n0": merge_by_versions, "n1": merge_by_versions}
        if merger == "VersionSet.merge"
        else {n: merge_by_replica(Replica(n, settings)) for n in cores}
    )
    (opening,) = steps(cores["n0"].tick(0))
    assert opening.node_id == "n1" and opening.message is None
    queue = deque([("n0", opening)])
    messages = 0
    while queue:
        at, step = queue.popleft()
        reply, items, _ = run_step(step, at, views[at], MAX_BYTES)
        assert reply is None or reply.source == at
        if items:
            merges[at](views[at], items)
        if reply is not None:
            messages += 1
            assert messages < 50, "the exchange does not end"
            queue.extend((step.node_id, s) for s in steps(cores[step.node_id].handle(1, at, reply)))
            assert all(s.session == opening.session for _, s in queue)
    expected = {
        k: left.get(k, VersionSet()).merge(right.get(k, VersionSet()), Resolution.SIBLINGS) for k in left | right
    }
    assert views["n0"] == views["n1"]
    assert {k: decode_versions(views["n0"][k]) for k in views["n0"]} == expected
    assert len(expected["k0000"]) == 2  # the concurrent versions, both kept on both sides
    assert digest("k0000", views["n0"]["k0000"]) == digest("k0000", views["n1"]["k0000"])
