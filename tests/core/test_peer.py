"""Unit tests of the protocol core: peers wired together in memory and stepped by hand (no event loop)."""

from __future__ import annotations

import random
from enum import Enum

from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.consistency import Level
from dsm.core.dissemination import DisseminationTimer
from dsm.core.joining import JoinTimer
from dsm.core.member_sync import SyncTimer
from dsm.core.messages import (
    Graft,
    IHave,
    Join,
    Message,
    Ping,
    PingReq,
    Routed,
    Send,
    SyncDigest,
    SyncEntries,
    SyncLeaves,
    Update,
)
from dsm.core.peer import LOSS_RETRY, Peer, PeerSettings
from dsm.core.probing import ProbeTimer
from dsm.core.ring import State
from dsm.core.routing import RouteTimer
from dsm.core.suspicion import SuspicionTimer
from wire import SMALL, Wire, info

ALIVE, SUSPECT, DEAD, LEFT = (int(s) for s in (State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT))


def upd(state: int, node_id: str, incarnation: int, origin: str = "") -> Update:
    i = info(node_id)
    return Update(state, node_id, incarnation, i.addr, i.region, origin)


def states_by_id(p: Peer) -> dict[str, tuple[int, int]]:
    return {
        p.directory.infos[slot].node_id: (state, p.table.incarnations[slot])
        for slot, state in enumerate(p.table.states)
        if state
    }


def test_formed_cluster_builds_bounded_symmetric_links() -> None:
    w = Wire(seed=1)
    peers = w.formed(40)
    w.advance(3000)
    for p in peers:
        o = p.overlay
        assert len(o.near) == SMALL.max_immediate_neighbors
        assert len(o.long_out) == SMALL.max_long_links
        assert len(o.long_in) <= SMALL.max_long_links_in
        assert len(o.refcount) <= SMALL.max_immediate_neighbors + SMALL.max_long_links + SMALL.max_long_links_in
        for slot in o.long_out:
            other = w.peers[p.directory.infos[slot].node_id]
            assert other.directory.slot(p.id) in other.overlay.long_in, (p.id, other.id)
        for slot in o.near:  # near links agree on both ends once tables agree
            other = w.peers[p.directory.infos[slot].node_id]
            assert other.directory.slot(p.id) in other.overlay.near


def test_crashed_member_is_suspected_then_declared_dead_everywhere() -> None:
    w = Wire(seed=2)
    peers = w.formed(12)
    w.advance(2000)
    w.down.add("n5")
    low = SMALL.suspicion_mult * SMALL.probe_interval_ms  # log10(12) ~ 1
    w.advance(low * SMALL.suspicion_max_mult + 20 * SMALL.probe_interval_ms)
    for p in peers:
        if p.id != "n5":
            assert p.member_state("n5") == State.DEAD, p.id
            assert p.member_state("n4") == State.ALIVE
    assert sum(p.stats.deaths_declared for p in peers) >= 1
    assert all("n5" not in p.link_ids() for p in peers if p.id != "n5")


def test_suspicion_about_itself_is_refuted_with_a_higher_incarnation() -> None:
    w = Wire(seed=3)
    peers = w.formed(6)
    x = w.peers["n1"]
    w.apply("n1", x.handle(w.now, Ping(1, "n2", "n1", (upd(SUSPECT, "n1", 0, "n2"),))))
    assert x.incarnation == 1 and x.stats.refutations == 1
    assert x.local_health == 1  # Lifeguard: having to refute counts against our own health
    w.advance(10 * SMALL.probe_interval_ms)
    for p in peers:
        assert states_by_id(p)["n1"] == (ALIVE, 1), p.id


def test_alive_at_its_own_incarnation_with_another_address_is_refuted() -> None:
    # A node restarted at a new address takes the incarnation after the one it saved; refutations of its
    # previous life were not saved, so the cluster may hold that very incarnation with the old address.
    w = Wire(seed=3)
    w.formed(6)
    x = w.peers["n1"]
    old_address = upd(ALIVE, "n1", 0, "n2")._replace(addr="10.9.9.9:7400")
    w.apply("n1", x.handle(w.now, Ping(1, "n2", "n1", (old_address,))))
    assert x.incarnation == 1  # refuted: its own address goes out at a higher incarnation
    same = upd(ALIVE, "n1", 1, "n2")
    w.apply("n1", x.handle(w.now, Ping(2, "n2", "n1", (same,))))
    assert x.incarnation == 1  # the truth about itself is not refuted


def test_join_through_bootstrap_learns_table_and_tells_neighbors() -> None:
    w = Wire(seed=4)
    peers = w.formed(20)
    w.advance(2000)
    joiner = w.peer("j")
    w.call("j", "join", [("", "mem://n3")])
    assert joiner.joined
    assert joiner.live_count() == 21
    for slot in joiner.overlay.near:  # its neighbors heard from it directly
        neighbor = w.peers[joiner.directory.infos[slot].node_id]
        assert neighbor.member_state("j") == State.ALIVE
        assert neighbor.directory.slot("j") in neighbor.overlay.near
    assert w.sent["Join"] == 1 and w.sent["JoinReply"] == 1
    w.advance(15 * SMALL.probe_interval_ms)
    assert all(p.member_state("j") == State.ALIVE for p in peers)


def test_join_tries_the_next_bootstrap_when_one_is_down() -> None:
    # A join attempt writes to JOIN_FANOUT targets at once; the next attempt to the next ones in turn.
    w = Wire(seed=5)
    w.formed(8)
    for down in ("n0", "n1", "n2"):
        w.down.add(down)
    joiner = w.peer("j")
    w.call("j", "join", [(f"n{i}", f"mem://n{i}") for i in range(4)])
    assert not joiner.joined
    w.advance(SMALL.join_timeout_ms + 10)
    assert joiner.joined and joiner.live_count() == 9


def test_a_node_with_bootstrap_addresses_that_answer_nothing_is_not_joined_and_retries_with_backoff() -> None:
    w = Wire(seed=5)
    w.formed(3)
    for down in ("n0", "n1", "n2"):
        w.down.add(down)
    joiner = w.peer("j")
    w.call("j", "join", [("", "mem://n0")])
    sent = []
    for _ in range(8):
        before = w.sent["Join"]
        w.advance(SMALL.join_retry_max_ms // 4)
        sent.append(w.sent["Join"] - before)
    assert not joiner.joined and joiner.join_targets() == [("", "mem://n0")]
    # 2 s, then 4, 8, 16 and 30 s (with jitter) between attempts: fewer attempts per period as it goes on.
    assert sent[0] >= 2 and sum(sent[4:]) <= 3, sent
    w.down.discard("n0")
    w.advance(SMALL.join_retry_max_ms + 10)
    assert joiner.joined and joiner.live_count() == 2  # n1 and n2 were declared dead meanwhile


def test_a_restarted_member_rejoins_through_the_members_it_saved_without_bootstrap() -> None:
    w = Wire(seed=9)
    w.formed(6)
    w.advance(3000)
    record = w.peers["n3"].member_record()
    w.down.add("n3")
    w.advance(40 * SMALL.probe_interval_ms)  # the others declare it dead
    assert w.peers["n1"].member_state("n3") == State.DEAD
    w.down.discard("n3")
    again = w.peer("n3", incarnation=w.peers["n3"].incarnation + 1)
    assert again.restore(record) == 5
    others = [name for name in w.peers if name != "n3"]
    w.down.update(others)
    w.call("n3", "join", [])
    assert not again.joined  # saved members, no bootstrap, nobody answering: not joined, not alone
    assert {node_id for node_id, _ in again.join_targets()} == set(others)
    w.advance(3 * SMALL.join_timeout_ms)
    assert not again.joined and again.level_groups(Level.QUORUM)[0].needed == 4  # 6 members still count
    w.down.difference_update(others)
    replies = w.sent["JoinReply"]
    w.advance(SMALL.join_retry_max_ms + 10)
    assert again.joined and w.sent["JoinReply"] > replies  # a member answered
    w.advance(10 * SMALL.probe_interval_ms)
    assert all(p.member_state("n3") == State.ALIVE for name, p in w.peers.items() if name != "n3")


def test_a_node_with_no_saved_members_and_no_bootstrap_starts_a_new_cluster() -> None:
    w = Wire(seed=10)
    alone = w.peer("solo")
    assert alone.restore(alone.member_record()) == 0  # a record of itself only
    w.call("solo", "join", [])
    assert alone.joined and alone.join_targets() == []


def test_leave_is_final_for_its_incarnation_and_a_rejoin_needs_a_higher_one() -> None:
    w = Wire(seed=6)
    peers = w.formed(10)
    w.advance(2000)
    w.call("n7", "leave")
    w.down.add("n7")
    w.advance(20 * SMALL.probe_interval_ms)
    others = [p for p in peers if p.id != "n7"]
    assert all(p.member_state("n7") == State.LEFT for p in others)
    # A stale "alive" at the incarnation it left with does not bring it back...
    p = others[0]
    w.apply(p.id, p.handle(w.now, Ping(9, "n1", p.id, (upd(ALIVE, "n7", 0),))))
    assert p.member_state("n7") == State.LEFT
    # ...a new life does.
    w.apply(p.id, p.handle(w.now, Ping(10, "n1", p.id, (upd(ALIVE, "n7", 1),))))
    assert p.member_state("n7") == State.ALIVE


def test_restarted_member_rejoins_with_same_id_and_higher_incarnation() -> None:
    w = Wire(seed=7)
    peers = w.formed(10)
    w.advance(2000)
    w.down.add("n4")
    w.advance(60 * SMALL.probe_interval_ms)
    assert all(p.member_state("n4") == State.DEAD for p in peers if p.id != "n4")
    old = w.peers["n4"]
    restarted = w.peer("n4", incarnation=old.incarnation + 1)
    w.call("n4", "join", [("n0", "mem://n0")])
    w.advance(20 * SMALL.probe_interval_ms)
    for p in w.peers.values():
        assert p.member_state("n4") == State.ALIVE, p.id
    assert restarted.incarnation >= 1


def test_routing_delivers_and_reports_undeliverable_targets() -> None:
    w = Wire(seed=8, settings=PeerSettings(max_immediate_neighbors=4, max_long_links=4, max_long_links_in=8))
    peers = w.formed(80)
    w.advance(3000)
    rng = random.Random(1)
    ids = []
    for _ in range(100):
        a, b = rng.sample(peers, 2)
        ids.append((w.call(a.id, "route", b.id, "hello"), a.id))
    assert len(w.delivered) == 100 and not w.failures
    assert {(d.route_id, d.source) for d in w.delivered} == set(ids)
    assert all(d.payload == "hello" and 1 <= d.hops <= 20 for d in w.delivered)
    w.advance(10 * SMALL.probe_timeout_ms)
    # Every hop acknowledged its copy, so nothing was sent twice: one Routed message per hop.
    assert w.sent["Routed"] == sum(d.hops for d in w.delivered)
    w.call("n1", "route", "nobody", None)
    assert len(w.failures) == 1 and "down or unknown" in w.failures[0].reason


def test_routing_fails_over_when_a_next_hop_is_down() -> None:
    w = Wire(seed=9, settings=PeerSettings(max_immediate_neighbors=4, max_long_links=4, max_long_links_in=8))
    peers = w.formed(80)
    w.advance(3000)
    rng = random.Random(2)
    victims = {p.id for p in rng.sample(peers, 8)}
    w.down |= victims
    alive = [p for p in peers if p.id not in victims]
    for _ in range(60):
        a, b = rng.sample(alive, 2)
        w.call(a.id, "route", b.id, None)
    w.advance(20 * SMALL.probe_timeout_ms)  # retries wait for the hops' acknowledgements
    assert len(w.delivered) == 60, [f.reason for f in w.failures]


def test_local_health_rises_when_answers_stop_and_falls_when_they_return() -> None:
    w = Wire(seed=10)
    w.formed(8)
    w.advance(3000)
    me = w.peers["n0"]
    assert me.local_health == 0
    for other in list(w.peers):  # n0 hears nothing: every answer to it is lost
        if other != "n0":
            w.cut.add(frozenset(("n0", other)))
    w.advance(6 * SMALL.probe_interval_ms)
    assert me.local_health >= 2
    w.cut.clear()
    w.advance(40 * SMALL.probe_interval_ms)
    assert me.local_health == 0


def test_measured_loss_follows_the_network_and_ignores_crashed_members() -> None:
    w = Wire(seed=21)
    peers = w.formed(12)
    w.down.add("n5")  # a crashed member never answers: its silence must not read as loss
    w.advance(60 * SMALL.probe_interval_ms)
    alive = [p for p in peers if p.id != "n5"]
    assert all(p.loss_estimate < LOSS_RETRY for p in alive), [round(p.loss_estimate, 3) for p in alive]
    assert all(p.probing.helper_count() == SMALL.indirect_probes for p in alive)
    w.loss = 0.2  # a ping and its ack both arrive with probability 0.64
    w.advance(100 * SMALL.probe_interval_ms)
    estimates = sorted(p.loss_estimate for p in alive)
    assert estimates[len(estimates) // 2] > 0.15, estimates
    assert sum(p.probing.helper_count() > SMALL.indirect_probes for p in alive) >= len(alive) // 2
    w.loss = 0.0
    w.advance(150 * SMALL.probe_interval_ms)
    assert all(p.loss_estimate < LOSS_RETRY for p in alive), [round(p.loss_estimate, 3) for p in alive]
    for p in alive:  # nobody alive was declared dead on the way
        assert all(p.member_state(q.id) == State.ALIVE for q in alive), p.id


def test_helper_count_grows_with_measured_loss_up_to_the_maximum() -> None:
    p = Peer(info("x"), SMALL, random.Random(1), 0)
    counts = []
    for loss in (0.0, 0.08, 0.15, 0.2, 0.3, 0.5, 1.0):
        p.loss_estimate = loss
        counts.append(p.probing.helper_count())
    assert counts[0] == counts[1] == SMALL.indirect_probes
    assert counts == sorted(counts)
    assert counts[-1] == counts[-2] == SMALL.indirect_probes_max
    fixed = Peer(info("y"), PeerSettings(indirect_probes=3, indirect_probes_max=3), random.Random(1), 0)
    fixed.loss_estimate = 0.5
    assert fixed.probing.helper_count() == 3


def settled(seed: int, count: int) -> tuple[Wire, Peer, int, str]:
    """A formed, settled cluster; its n0; and a near link of n0 not being probed (slot and id)."""
    w = Wire(seed=seed)
    w.formed(count)
    w.advance(3000)
    me = w.peers["n0"]
    slot = next(q for q in me.overlay.near if not me.probing.probing(q))
    return w, me, slot, me.directory.infos[slot].node_id


def probe_now(w: Wire, me: Peer, slot: int) -> None:
    w.log = []
    me.probing.start_probe(slot)  # probe this member now
    w.apply(me.id, me.tick(w.now))
    w.flush()


def pings(w: Wire, source: str, target: str) -> list[Ping]:
    assert w.log is not None
    return [m for s, t, m in w.log if s == source and t == target and isinstance(m, Ping)]


def test_under_measured_loss_a_missed_probe_is_retried_and_more_helpers_are_asked() -> None:
    w, me, slot, target = settled(22, 16)
    me.loss_estimate = 0.4
    w.down.add(target)
    probe_now(w, me, slot)
    seq = pings(w, "n0", target)[0].seq
    w.advance(SMALL.probe_timeout_ms + 20)
    assert w.log is not None
    direct = [m for m in pings(w, "n0", target) if m.seq == seq]
    asks = [m for s, t, m in w.log if s == "n0" and isinstance(m, PingReq) and m.seq == seq]
    assert len(direct) == 2  # the direct ping and its retry
    helpers = sum(1 for q in me.overlay.links() if q != slot and me.table.raw_state(q) == ALIVE)
    assert len(asks) == min(helpers, me.probing.helper_count()) > SMALL.indirect_probes


def test_a_helper_under_measured_loss_pings_twice_before_giving_up() -> None:
    w = Wire(seed=24)
    w.formed(8)
    w.advance(3000)
    helper = w.peers["n1"]
    helper.loss_estimate = 0.4
    w.down.add("n2")
    w.log = []
    target = info("n2")
    w.apply("n1", helper.handle(w.now, PingReq(77, "n0", "n2", target.addr, ())))
    relay_seq = pings(w, "n1", "n2")[0].seq
    w.advance(SMALL.probe_interval_ms)
    assert [m.seq for m in pings(w, "n1", "n2")] == [relay_seq, relay_seq]
    assert any(s == "n1" and t == "n0" and type(m).__name__ == "Nack" and m.seq == 77 for s, t, m in w.log)
    quiet = w.peers["n3"]  # a helper that measures no loss pings once
    quiet.loss_estimate = 0.0
    w.log = []
    w.apply("n3", quiet.handle(w.now, PingReq(78, "n0", "n2", target.addr, ())))
    w.advance(SMALL.probe_interval_ms)
    relay_seq = pings(w, "n3", "n2")[0].seq
    assert [m.seq for m in pings(w, "n3", "n2")].count(relay_seq) == 1


def test_a_probe_of_a_suspect_tells_it_first_that_it_is_suspected() -> None:
    w, me, slot, target = settled(23, 10)
    for other in w.peers:  # the suspect can hear only from n0
        if other not in ("n0", target):
            w.cut.add(frozenset((other, target)))
    me.handle(w.now, Ping(99, "n9", "n0", (upd(SUSPECT, target, 0, "n9"),)))
    assert me.member_state(target) == State.SUSPECT
    me.broadcasts.take(10**6, 1)  # the suspicion has left the gossip queue (sent its share of times)
    probe_now(w, me, slot)
    first = pings(w, "n0", target)[0].updates[0]
    assert (first.state, first.node_id, first.incarnation) == (SUSPECT, target, 0)
    assert w.peers[target].incarnation == 1  # refuted at once, in its Ack
    assert me.member_state(target) == State.ALIVE


def test_anti_entropy_repairs_an_update_that_gossip_missed() -> None:
    w = Wire(seed=11)
    w.formed(5)
    a, b = w.peers["n0"], w.peers["n1"]
    # n0 alone hears of a new member (and we keep it from gossiping it on: nothing is ticked).
    a.handle(w.now, Ping(1, "n2", "n0", (upd(ALIVE, "x", 3),)))
    assert a.member_state("x") == State.ALIVE and b.member_state("x") == State.UNKNOWN
    assert a.table.digests != b.table.digests
    w.apply("n1", b.handle(w.now, SyncDigest("n0", tuple(a.table.digests))))
    w.flush()
    assert b.member_state("x") == State.ALIVE and states_by_id(b)["x"] == (ALIVE, 3)
    assert a.table.digests == b.table.digests


def test_anti_entropy_sends_only_the_entries_that_differ_both_ways() -> None:
    w = Wire(seed=13)
    w.formed(30)
    a, b = w.peers["n0"], w.peers["n1"]
    # a knows x is dead, b knows y left; each holds the other 28 members identically.
    a.handle(w.now, Ping(1, "n2", "n0", (upd(DEAD, "n5", 0),)))
    b.handle(w.now, Ping(2, "n3", "n1", (upd(LEFT, "n6", 0),)))
    effects = b.handle(w.now, SyncDigest("n0", tuple(a.table.digests)))
    w.now += 1
    sub_digests = next(e.message for e in effects if isinstance(e, Send))
    leaves = next(e.message for e in a.handle(w.now, sub_digests) if isinstance(e, Send))
    assert isinstance(leaves, SyncLeaves)
    # b answers with its two entries that differ (a hash does not tell whose is newer) and asks for a's
    # two by hash; the 26 entries that agree do not travel.
    entries = next(e.message for e in b.handle(w.now, leaves) if isinstance(e, Send))
    assert isinstance(entries, SyncEntries)
    assert sorted((u.node_id, u.state) for u in entries.members) == [("n5", ALIVE), ("n6", LEFT)]
    assert len(entries.want) == 2
    back = next(e.message for e in a.handle(w.now, entries) if isinstance(e, Send))
    assert [(u.node_id, u.state) for u in back.members] == [("n5", DEAD)] and back.want == ()
    b.handle(w.now, back)
    assert states_by_id(a) == states_by_id(b)
    assert a.table.digests == b.table.digests


def test_malformed_anti_entropy_steps_are_counted_and_dropped() -> None:
    w = Wire(seed=14)
    w.formed(5)
    a = w.peers["n0"]
    bad = [
        SyncLeaves("n1", (1 << 20,), ()),  # sub-arc out of range
        SyncLeaves("n1", (0,), tuple(range(100_000))),  # too many hashes
        SyncEntries("n1", (-1,), (), (7,)),
        SyncLeaves("n1", (0,), ([1],)),  # an unhashable "hash"
    ]
    for message in bad:
        assert a.handle(w.now, message) == []
    assert a.stats.bad_messages == len(bad)
    w.advance(3000)  # and it keeps working
    assert a.live_count() == 5


def test_healed_partition_merges_again() -> None:
    w = Wire(seed=12)
    peers = w.formed(12)
    w.advance(2000)
    left = {f"n{i}" for i in range(4)}
    for p in peers:
        for q in peers:
            if (p.id in left) != (q.id in left):
                w.cut.add(frozenset((p.id, q.id)))
    w.advance(80 * SMALL.probe_interval_ms)
    assert w.peers["n0"].member_state("n9") == State.DEAD
    w.cut.clear()
    w.advance(60 * SMALL.probe_interval_ms)
    for p in peers:
        assert p.live_count() == 12, (p.id, states_by_id(p))


updates = st.lists(
    st.builds(
        upd,
        st.sampled_from([ALIVE, SUSPECT, DEAD, LEFT]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 3),
        st.sampled_from(["", "o1", "o2"]),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(updates, st.randoms(use_true_random=False))
def test_membership_merge_converges_in_any_order(history: list[Update], rnd: random.Random) -> None:
    # Two fresh observers apply the same updates in different orders: same table (a join-semilattice).
    shuffled = list(history)
    rnd.shuffle(shuffled)
    tables = []
    for order in (history, shuffled):
        p = Peer(info("observer"), SMALL, random.Random(0), 0)
        for i, u in enumerate(order):
            p.handle(0, Ping(i, "z", "observer", (u,)))
        tables.append(states_by_id(p))
        # And the result is the largest (incarnation, state) seen for each member.
        for node_id in {u.node_id for u in history}:
            best = max((u.incarnation, u.state) for u in history if u.node_id == node_id)
            assert tables[-1][node_id] == (best[1], best[0])
    assert tables[0] == tables[1]


def test_out_of_range_updates_from_a_peer_are_ignored_and_counted() -> None:
    w = Wire(seed=13)
    w.formed(4)
    p = w.peers["n0"]
    before = states_by_id(p)
    bad = (upd(ALIVE, "x", 1 << 32), upd(9, "y", 1), upd(SUSPECT, "n0", -1), upd(DEAD, "n1", 1 << 40))
    w.apply("n0", p.handle(w.now, Ping(1, "n2", "n0", bad)))
    assert states_by_id(p) == before and p.incarnation == 0
    assert p.stats.bad_updates == 4
    assert p.table.digests == p.table.compute_digests()


def test_capped_anti_entropy_answers_keep_the_first_listed_sub_arcs() -> None:
    import numpy as np

    from dsm.core.peer import SYNC_MAX_ENTRIES
    from dsm.core.ring import sub_bucket_of

    w = Wire(seed=15)
    p = w.peer("n0")
    p.install([(info(f"m{i}"), 0) for i in range(3000)])
    slots = p.table.slots_in_sub_arcs(list(range(1024)))
    assert len(slots) > SYNC_MAX_ENTRIES
    last = sub_bucket_of(p.directory.positions[int(slots[-1])])
    subs = [last, *(s for s in range(1024) if s != last)]  # the sub-arc of the highest slot listed first
    kept = p.member_sync.first_entries(slots, subs)
    assert len(kept) == SYNC_MAX_ENTRIES
    first = [int(s) for s in slots if sub_bucket_of(p.directory.positions[int(s)]) == last]
    assert set(first) <= set(kept)
    assert p.member_sync.first_entries(np.array(first), subs) == first


def test_each_timer_is_handed_to_the_part_that_owns_its_kind() -> None:
    # Every part arms timers of its own enum; `tick` hands a due timer to the owner of the kind's type.
    w = Wire(seed=30)
    w.formed(8)
    w.advance(3000)  # every timer due until now has run: only the ones armed below are due
    p = w.peers["n0"]
    link = p.link_ids()[0]
    link_slot = p.directory.slot(link)
    assert link_slot is not None

    def fire(peer: Peer, kind: Enum, arg: int) -> list[Message]:
        peer.context.arm(w.now, kind, arg)
        return [e.message for e in peer.tick(w.now) if isinstance(e, Send)]

    assert any(isinstance(m, Ping) for m in fire(p, ProbeTimer.PERIOD, 0))  # probing: a probe
    assert [type(m) for m in fire(p, SyncTimer.ROUND, 0)] == [SyncDigest]  # member sync: a digest
    p.handle(w.now, IHave(link, 1, (7,)))
    assert [type(m) for m in fire(p, DisseminationTimer.GRAFT, 7)] == [Graft]  # dissemination: a graft
    joiner = w.peer("j")
    joiner.join(w.now, [("", "mem://n1")])  # its first Join is lost
    assert [type(m) for m in fire(joiner, JoinTimer.RETRY, 0)] == [Join]  # joining: the next attempt
    # Routing: the hop's acknowledgement is lost; the retry timer sends the message on again.
    route_id, _ = p.route(w.now, link, "x")
    route_retries = [arg for _, _, kind, arg in p.context.timers if kind is RouteTimer.RETRY]
    assert len(route_retries) == 1
    resent = [m for m in fire(p, RouteTimer.RETRY, route_retries[0]) if isinstance(m, Routed)]
    assert [m.route_id for m in resent] == [route_id]
    # Suspicion: this node's own failed probe of the link, and its deadline.
    p.membership.suspect(link_slot)
    w.now = p.suspicions[link_slot].deadline
    fire(p, SuspicionTimer.TIMEOUT, link_slot)
    assert p.member_state(link) == State.DEAD
