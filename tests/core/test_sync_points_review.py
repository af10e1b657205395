"""Review of sync points (`dsm.core.anti_entropy.Exchanges`): cases the lemma in `dsm.core.reconcile` ("Sync
points") did not survive while session numbers were counted from 1 by every core (a restarted node, or the
peer, reused the number of an exchange the other side still held a record of); they are random now. Two
cores wired by hand, as in `test_sync_points.py` (whose helpers this reuses)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from dsm.core.anti_entropy import ReconcileStep, SyncPorts, run_step
from dsm.core.encoding import encode_versions
from dsm.core.messages import DataItem, Send, SyncPoint
from dsm.core.node_core import NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.replica import MergeOp
from dsm.core.versions import Resolution
from dsm.core.watch_cursor import Cursor, HeldSyncPoint, Plan, choose
from test_sync_points import GRACE_MS, INFOS, WALL, Side, contents, holds, pair, versions_of


def run(
    sides: dict[str, Side],
    queue: deque[tuple[str, Any]],
    held: list[tuple[str, Send]],
    crash: Callable[[], None] | None = None,
) -> None:
    """Runs an exchange's effects (as `test_sync_points.exchange`), holding back every `SyncPoint` sent: the
    transport queues them while their receiver is down. `crash`: n0 stops after it sent the reply of its
    first step that brought entries, before merging them (the runtime merges after sending), and restarts."""
    while queue:
        at, effect = queue.popleft()
        side = sides[at]
        ae = side.core.anti_entropy
        assert ae is not None
        if isinstance(effect, ReconcileStep):
            result = run_step(effect, at, side.view, side.max_bytes)
            out: list[Any] = list(ae.stepped(effect, result))
            if result.reply is not None:
                out.insert(0, Send(effect.node_id, "", result.reply))
            if result.items and crash is not None and at == "n0":
                crash()
                crash = None
            elif result.items:
                merge = side.commit([MergeOp(result.items)])
                assert merge is not None
                out.extend(ae.merged(effect, merge.refused == 0))
            queue.extend((at, e) for e in out)
        elif isinstance(effect, Send):
            if isinstance(effect.message, SyncPoint):
                held.append((at, effect))
                continue
            queue.extend((effect.node_id, e) for e in sides[effect.node_id].core.handle(1, at, effect.message))
        elif isinstance(effect, HeldSyncPoint):
            side.kept.append(effect)


def restart(side: Side, index: int) -> None:
    """The node restarts over the same store (same epoch, rows, stamps): a new core (whose session numbers,
    when they were counted, started again from 1: `NodeCore._next_session`)."""
    peer = Peer(INFOS[index], PeerSettings(anti_entropy_max_bytes=side.max_bytes), random.Random(index + 50), 0)
    peer.install([(info, 0) for info in INFOS])
    ports = SyncPorts(100 + index, lambda: side.last_stamp)
    side.core = NodeCore(peer, Resolution.SIBLINGS, iter(range(1, 1_000_000)).__next__, 0, sync_points=ports)


def test_a_sync_point_delivered_after_the_receiver_restarted_is_not_kept_for_a_newer_exchange() -> None:
    sides = pair(*contents())
    a, b = sides["n0"], sides["n1"]
    # B's first exchange (session 1) with A; A's SyncPoint to B waits in A's transport queue (B went down).
    ae = b.core.anti_entropy
    assert ae is not None
    (first,) = ae.tick(ae.due)
    held: list[tuple[str, Send]] = []
    run(sides, deque([("n1", first)]), held)
    ((sender, queued),) = [(s, e) for s, e in held if e.node_id == "n1"]
    assert sender == "n0"
    a_rows = a.rows()  # A does not change from here on: its state at the stamp it sent
    # B restarts over its store; before its first exchange it commits a write A never saw (gossip lost, or
    # B's own write before the crash that did not leave it).
    restart(b, 1)
    b.commit([MergeOp((DataItem(0, "late", encode_versions(versions_of("n2", WALL + 5, b"late"))),))])
    # Its first exchange after the restart is with A (its only peer): the opening is sent. (With sessions
    # counted from 1 it was session 1 again, the number of the exchange A's SyncPoint belongs to.)
    ae = b.core.anti_entropy
    assert ae is not None
    (opening_step,) = ae.tick(ae.due)
    assert opening_step.node_id == "n0" and opening_step.session != first.session
    ae.stepped(opening_step, run_step(opening_step, "n1", b.view, b.max_bytes))
    # Now A's transport reconnects and delivers the SyncPoint of the exchange before the restart.
    kept = [e for e in b.core.handle(2, "n0", queued.message) if isinstance(e, HeldSyncPoint)]
    assert kept == [], "a sync point of an exchange from before the restart was kept for the new one"
    for point in kept:  # what it would have claimed (the failure this test was written for)
        # What B now claims: every row it held at own_stamp, A held or dominated at peer_stamp.
        assert point.peer_stamp <= a.last_stamp
        covered = {k: v for k, v in b.rows().items() if b.seq[k] <= point.own_stamp}
        cursor = Cursor("n0", point.peer_epoch, point.peer_stamp)
        resume = choose(cursor, "n1", 101, WALL, GRACE_MS, [point])
        assert resume == (Plan.SYNC_POINT, point.own_stamp)
        # "late" is in neither A's state at the cursor nor B's replay (seq > own_stamp): the reader misses it.
        assert "late" not in a_rows
        assert b.seq["late"] > resume.after, "the resumed watch would never deliver 'late'"
        assert holds(a_rows, covered)


def test_an_exchange_from_before_the_senders_restart_does_not_end_its_new_exchange() -> None:
    sides = pair(*contents())
    a, b = sides["n0"], sides["n1"]
    b_before = b.rows()
    ae = b.core.anti_entropy
    assert ae is not None
    (first,) = ae.tick(ae.due)  # B's first exchange, session 1
    held: list[tuple[str, Send]] = []
    queue: deque[tuple[str, Any]] = deque([("n1", first)])
    crashed: list[bool] = []

    def crash() -> None:
        crashed.append(True)
        # A restarts over its store (the entries it had not merged are gone) and, catching up, opens its first
        # exchange: session 1, with B (its only peer); that opening is still on its way.
        restart(a, 0)
        ae_a = a.core.anti_entropy
        assert ae_a is not None
        (opening_step,) = ae_a.tick(ae_a.due)
        assert opening_step.node_id == "n1" and opening_step.session != first.session
        ae_a.stepped(opening_step, run_step(opening_step, "n0", a.view, a.max_bytes))

    # The old exchange goes on: B answers A's last reply, which reaches A after its restart.
    run(sides, queue, held, crash)
    assert crashed
    for sender, send in held:
        if sender != "n0":
            continue
        for point in [e for e in b.core.handle(2, "n0", send.message) if isinstance(e, HeldSyncPoint)]:
            covered = {k: v for k, v in b_before.items() if b.seq[k] <= point.own_stamp}
            assert holds(a.rows(), covered), "B keeps a sync point of A although A lacks what B held at b"


def test_an_exchange_opened_by_each_side_leaves_a_sync_point_each_way() -> None:
    sides = pair(*contents())
    a, b = sides["n0"], sides["n1"]
    held: list[tuple[str, Send]] = []
    for opener, count in (("n0", 1), ("n1", 2)):
        ae = sides[opener].core.anti_entropy
        assert ae is not None
        (first,) = ae.tick(ae.due)
        held.clear()
        run(sides, deque([(opener, first)]), held)
        for sender, send in held:  # delivered at once this time
            receiver = sides[send.node_id]
            receiver.kept.extend(
                e for e in receiver.core.handle(2, sender, send.message) if isinstance(e, HeldSyncPoint)
            )
        assert (len(a.kept), len(b.kept)) == (count, count), f"after the exchange opened by {opener}"
