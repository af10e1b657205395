"""Unit tests of write dissemination in the pure core: broadcast tree, grafts, gossip rounds, adaptive period.

Peers are wired in memory (`wire.Wire`) and stepped by hand; each mechanism is driven by handing a peer
exactly the message it reacts to and checking the effects it answers with.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from dsm.core.consistency import Level
from dsm.core.dissemination import MAX_IDS, update_id
from dsm.core.messages import (
    DataItem,
    DirectPush,
    GossipDigest,
    GossipItems,
    GossipReply,
    Graft,
    IHave,
    Prune,
    Push,
    Replicate,
    Send,
    Store,
)
from dsm.core.node_core import NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.versions import Resolution
from wire import SMALL, Wire

#: Announcements held for 100 ms (`announce_delay_ms`; the default, 0, sends them at once).
HELD = dataclasses.replace(SMALL, announce_delay_ms=100)


def item(key: str, ts: int = 1, node: str = "n0") -> DataItem:
    return DataItem(update_id(key, ts, node), key, f"{key}@{ts}".encode())


def sends(effects: list, kind: type) -> list[Send]:
    return [e for e in effects if isinstance(e, Send) and type(e.message) is kind]


def slot(p: Peer, node_id: str) -> int:
    s = p.directory.slot(node_id)
    assert s is not None
    return s


def announced(p: Peer, w: Wire, effects: list) -> list[Send]:
    """The announcements `effects` sent, and those `p` held for `announce_delay_ms` and sends then."""
    return sends(effects, IHave) + sends(p.tick(w.now + HELD.announce_delay_ms), IHave)


def pushed_by_one(settings: PeerSettings) -> tuple[Wire, Peer, str, set[str]]:
    """A formed 12-node cluster whose n0 has pruned every link but one (the pusher); with n0, the pusher and
    n0's lazy links."""
    w = Wire(seed=3, settings=settings)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    pusher, others = a.link_ids()[0], a.link_ids()[1:]
    for other in others:
        a.handle(w.now, Prune(other))
    return w, a, pusher, {a.directory.infos[s].node_id for s in a.data.lazy}


def linked_pair(w: Wire) -> tuple[Peer, Peer]:
    """Two peers of a formed cluster that are linked to each other."""
    a = w.peers["n0"]
    other = a.link_ids()[0]
    return a, w.peers[other]


def test_update_id_names_the_write() -> None:
    assert update_id("k", 5, "a") == update_id("k", 5, "a")
    ids = {update_id("k", 5, "a"), update_id("k", 6, "a"), update_id("k", 5, "b"), update_id("k2", 5, "a")}
    assert len(ids) == 4
    assert all(0 <= i < 2**64 for i in ids)


def test_new_push_is_stored_and_forwarded_on_eager_links_only() -> None:
    w = Wire(seed=1)
    w.formed(12)
    w.advance(3000)
    a, b = linked_pair(w)
    it = item("k")
    effects = a.handle(w.now, Push(b.id, 2, (it,)))
    stored = [e for e in effects if isinstance(e, Store)]
    assert stored == [Store((it,), b.id, "push", 3)]
    pushed = {e.node_id for e in sends(effects, Push)}
    eager_ids = {a.directory.infos[s].node_id for s in a.data.eager}
    assert pushed == eager_ids - {b.id} and pushed
    assert all(e.message.hops == 3 for e in sends(effects, Push))
    told = sends(effects, IHave)
    # The same write again is a duplicate: nothing stored or forwarded, the link is pruned.
    again = a.handle(w.now, Push(b.id, 1, (it,)))
    assert not [e for e in again if isinstance(e, Store)]
    assert [e.node_id for e in sends(again, Prune)] == [b.id]
    assert slot(a, b.id) in a.data.lazy and slot(a, b.id) not in a.data.eager
    assert a.data.stats.duplicates == 1
    assert len(told + sends(a.tick(w.now + SMALL.announce_delay_ms), IHave)) <= SMALL.lazy_fanout


def test_prune_makes_the_link_lazy_but_keeps_one_eager_link() -> None:
    w = Wire(seed=2)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    links = a.link_ids()
    for other in links[:-1]:
        a.handle(w.now, Prune(other))
    assert {a.directory.infos[s].node_id for s in a.data.eager} == {links[-1]}
    # Pruning the last eager link grafts a lazy one instead: a node never cuts itself off the tree.
    effects = a.handle(w.now, Prune(links[-1]))
    assert len(a.data.eager) == 1
    grafted = sends(effects, Graft)
    assert len(grafted) == 1 and grafted[0].message.ids == ()


def two_region_node(w: Wire) -> tuple[Peer, list[str], list[str]]:
    """A node of region a of a formed two-region cluster with links into both regions: it, and its linked
    members of its own region and of the other."""
    w.formed(16, regions=("a", "b"))
    w.advance(3000)
    for a in w.peers.values():
        region = a.info.region
        same = [i for i in a.link_ids() if w.peers[i].info.region == region]
        other = [i for i in a.link_ids() if w.peers[i].info.region != region]
        if len(same) >= 2 and len(other) >= 2:
            return a, same, other
    raise AssertionError("no node links into both regions")


def test_a_node_keeps_one_eager_link_into_each_other_region() -> None:
    w = Wire(seed=3)
    a, same, other = two_region_node(w)
    for node_id in other:  # every link into the other region says Prune
        a.handle(w.now, Prune(node_id))
    eager = {a.directory.infos[s].node_id for s in a.data.eager}
    assert len(eager & set(other)) == 1  # the bridge stays eager
    # A duplicate on the bridge leaves it eager too; within the region the plain rule prunes at Prune.
    bridge = next(iter(eager & set(other)))
    it = item("k", node=a.id)
    a.handle(w.now, Push(bridge, 1, (it,)))
    effects = a.handle(w.now, Push(bridge, 1, (it,)))
    assert not sends(effects, Prune) and slot(a, bridge) in a.data.eager
    a.handle(w.now, Prune(same[0]))
    assert slot(a, same[0]) in a.data.lazy


def test_a_link_within_the_region_is_pruned_at_its_third_duplicate_in_a_row() -> None:
    w = Wire(seed=4)
    a, same, _ = two_region_node(w)
    peer = same[0]
    assert slot(a, peer) in a.data.eager
    first, second = item("k1", node=peer), item("k2", node=peer)
    a.handle(w.now, Push(peer, 1, (first,)))
    for _ in range(2):  # two duplicates: still eager
        assert not sends(a.handle(w.now, Push(peer, 1, (first,))), Prune)
    a.handle(w.now, Push(peer, 1, (second,)))  # a write it delivers first starts the count again
    for _ in range(2):
        assert not sends(a.handle(w.now, Push(peer, 1, (second,))), Prune)
    assert slot(a, peer) in a.data.eager
    pruned = sends(a.handle(w.now, Push(peer, 1, (second,))), Prune)
    assert [e.node_id for e in pruned] == [peer] and slot(a, peer) in a.data.lazy


def test_announced_write_is_grafted_after_the_timeout_from_the_next_announcer_if_needed() -> None:
    w = Wire(seed=3)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    first, second = a.link_ids()[:2]
    it = item("k")
    a.handle(w.now, IHave(first, 1, (it.id,)))
    a.handle(w.now, IHave(second, 1, (it.id,)))
    assert not sends(a.tick(w.now + SMALL.graft_timeout_ms - 1), Graft)
    effects = a.tick(w.now + SMALL.graft_timeout_ms)
    assert [(e.node_id, e.message.ids) for e in sends(effects, Graft)] == [(first, (it.id,))]
    assert slot(a, first) in a.data.eager
    # The first announcer does not answer: the next one is asked one timeout later.
    effects = a.tick(w.now + 2 * SMALL.graft_timeout_ms)
    assert [e.node_id for e in sends(effects, Graft)] == [second]
    # Once the write arrives, later timeouts ask nobody.
    a.handle(w.now + 2 * SMALL.graft_timeout_ms, Push(second, 1, (it,)))
    assert not sends(a.tick(w.now + 4 * SMALL.graft_timeout_ms), Graft)


def test_a_write_is_not_announced_to_the_lazy_links_that_announced_it_here() -> None:
    w = Wire(seed=4, settings=dataclasses.replace(HELD, lazy_fanout=32))  # every other lazy link is told
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    links = a.link_ids()
    pusher, others = links[0], links[1:]
    for other in others[:-1]:
        a.handle(w.now, Prune(other))  # lazy links, one eager left beside the pusher
    lazy = {a.directory.infos[s].node_id for s in a.data.lazy}
    assert len(lazy) >= 2 and slot(a, pusher) in a.data.eager
    # Unannounced, a pushed write is announced to lazy links, after announce_delay_ms (held here).
    effects = a.handle(w.now, Push(pusher, 0, (item("k1"),)))
    assert not sends(effects, IHave)
    assert announced(a, w, effects)
    w.advance(HELD.announce_delay_ms)
    # Announced here by some lazy links first: they hold it, and are not told again; the rest are.
    it = item("k2")
    holders = sorted(lazy)[: len(lazy) // 2 or 1]
    for holder in holders:
        a.handle(w.now, IHave(holder, 1, (it.id,)))
    told = {e.node_id for e in announced(a, w, a.handle(w.now, Push(pusher, 0, (it,))))}
    assert told == lazy - set(holders)
    w.advance(HELD.announce_delay_ms)
    # Announced by every lazy link: no announcement at all.
    last = item("k3")
    for holder in lazy:
        a.handle(w.now, IHave(holder, 1, (last.id,)))
    assert not announced(a, w, a.handle(w.now, Push(pusher, 0, (last,))))
    w.advance(HELD.announce_delay_ms)
    # Announced by a lazy link, or pushed by it, while this node held its own announcement to it: that one is
    # not sent; the others still are.
    late = item("k4")
    effects = a.handle(w.now, Push(pusher, 0, (late,)))
    announcer, duplicate, *rest = sorted(lazy)
    a.handle(w.now + 1, IHave(announcer, 1, (late.id,)))
    a.handle(w.now + 1, Push(duplicate, 1, (late,)))
    told = {e.node_id for e in announced(a, w, effects)}
    assert told == set(rest)


def test_announcements_within_the_delay_go_to_a_link_in_one_message() -> None:
    w, a, pusher, lazy = pushed_by_one(dataclasses.replace(HELD, lazy_fanout=32))
    assert len(lazy) > SMALL.lazy_fanout  # (with a fanout of 32, every lazy link is told of every write)
    writes = [item(f"b{i}") for i in range(5)]
    for i, write in enumerate(writes):
        assert not sends(a.handle(w.now + i, Push(pusher, 0, (write,))), IHave)
    before = sends(a.tick(w.now + HELD.announce_delay_ms - 1), IHave)
    assert not before  # held for the delay since the first
    out = sends(a.tick(w.now + HELD.announce_delay_ms), IHave)
    assert sorted(e.node_id for e in out) == sorted(lazy)
    assert all(e.message.ids == tuple(x.id for x in writes) for e in out)
    # A link that went away meanwhile is not told.
    gone = sorted(lazy)[0]
    effects = a.handle(w.now + 200, Push(pusher, 0, (item("c"),)))
    a.data.link_changed(slot(a, gone), -1)
    out = sends(effects, IHave) + sends(a.tick(w.now + 200 + HELD.announce_delay_ms), IHave)
    assert {e.node_id for e in out} == lazy - {gone}  # a second window goes out like the first


def test_a_link_owed_max_ids_announcements_is_told_at_once() -> None:
    w, a, pusher, _ = pushed_by_one(HELD)
    many = tuple(item(f"m{i}") for i in range(MAX_IDS))
    told = sends(a.handle(w.now, Push(pusher, 0, many)), IHave)
    assert len(told) == SMALL.lazy_fanout  # what is held stays bounded: not kept for the window
    assert all(e.message.ids == tuple(x.id for x in many) for e in told)
    assert not sends(a.tick(w.now + HELD.announce_delay_ms), IHave)


def test_announcements_go_at_once_without_a_delay() -> None:
    w, a, pusher, lazy = pushed_by_one(dataclasses.replace(SMALL, announce_delay_ms=0))
    told = sends(a.handle(w.now, Push(pusher, 0, (item("now"),))), IHave)
    assert len(told) == SMALL.lazy_fanout < len(lazy) and {e.node_id for e in told} <= lazy


def test_write_received_before_the_timeout_is_not_grafted() -> None:
    w = Wire(seed=4)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    announcer, pusher = a.link_ids()[:2]
    it = item("k")
    a.handle(w.now, IHave(announcer, 1, (it.id,)))
    a.handle(w.now + 5, Push(pusher, 0, (it,)))
    assert not sends(a.tick(w.now + 10 * SMALL.graft_timeout_ms), Graft)
    assert a.data.stats.grafts == 0


def test_graft_is_answered_from_recent_writes_and_makes_the_link_eager() -> None:
    w = Wire(seed=5)
    w.formed(12)
    w.advance(3000)
    a, b = linked_pair(w)
    it = item("k")
    a.publish(w.now, (it,), urgent=False)
    a.handle(w.now, Prune(b.id))
    assert slot(a, b.id) not in a.data.eager
    effects = a.handle(w.now, Graft(b.id, (it.id, 12345)))
    pushes = sends(effects, Push)
    assert [(e.node_id, e.message.items) for e in pushes] == [(b.id, (it,))]
    assert slot(a, b.id) in a.data.eager


def test_non_urgent_write_is_not_pushed_but_gossiped() -> None:
    w = Wire(seed=6)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    effects = a.publish(w.now, (item("bulk"),), urgent=False)
    assert not sends(effects, Push) and not sends(effects, IHave)
    urgent = a.publish(w.now, (item("now"),))
    assert len(sends(urgent, Push)) == len(a.data.eager)


def test_gossip_exchange_moves_missing_writes_both_ways() -> None:
    w = Wire(seed=7)
    w.formed(12)
    w.advance(3000)
    a, b = linked_pair(w)
    mine, theirs, shared = item("a"), item("b"), item("s")
    a.publish(w.now, (mine, shared), urgent=False)
    b.publish(w.now, (theirs, shared), urgent=False)
    t = w.now + 1000  # past the hold that leaves fresh writes to the broadcast tree
    digest = GossipDigest(77, a.id, (mine.id, shared.id), ())
    reply = sends(b.handle(t, digest), GossipReply)[0].message
    assert reply.want == (mine.id,) and reply.items == (theirs,)
    a.data._exchanges[77] = (slot(a, b.id), t)
    effects = a.handle(t + 4, reply)
    assert [e for e in effects if isinstance(e, Store)] == [Store((theirs,), b.id, "gossip", 0)]
    assert a.data.srtt == 4
    items = sends(effects, GossipItems)[0].message
    assert items.items == (mine,)
    stored = [e for e in b.handle(t + 5, items) if isinstance(e, Store)]
    assert stored == [Store((mine,), a.id, "gossip", 0)]
    # Nothing is missing on either side: the next exchange moves no payload.
    digest = GossipDigest(78, a.id, (mine.id, shared.id, theirs.id), ())
    reply = sends(b.handle(t + 6, digest), GossipReply)[0].message
    assert reply.want == () and reply.items == ()


def test_a_reply_from_another_member_does_not_close_the_exchange() -> None:
    w = Wire(seed=7)
    w.formed(12)
    w.advance(3000)
    a, b = linked_pair(w)
    other = next(pid for pid in w.peers if pid not in (a.id, b.id))
    t = w.now
    a.data._exchanges[90] = (slot(a, b.id), t)
    # Someone else answers with the same seq (stale, or forged): no round trip is measured from it.
    a.handle(t + 2, GossipReply(90, other, (), ()))
    assert a.data.srtt == 0.0 and 90 in a.data._exchanges
    a.handle(t + 6, GossipReply(90, b.id, (), ()))
    assert a.data.srtt == 6 and 90 not in a.data._exchanges


def test_fresh_writes_are_left_to_the_broadcast_tree() -> None:
    w = Wire(seed=14)
    w.formed(12)
    w.advance(3000)
    a, b = linked_pair(w)
    new = item("new")
    b.publish(w.now, (new,))  # urgent: the tree carries it
    # Just written: not sent back in a reply, and a digest lists it as fresh.
    reply = sends(b.handle(w.now, GossipDigest(1, a.id, (), ())), GossipReply)[0].message
    assert reply.items == ()
    b.context.advance(w.now + 1)
    b.data._gossip_round()  # a round right away, within the hold
    digests = sends(b.context.flush(), GossipDigest)
    assert digests and all(d.message.fresh == (new.id,) and d.message.ids == () for d in digests)
    # A fresh id in someone's digest is neither wanted nor pushed back.
    reply = sends(a.handle(w.now + 1, GossipDigest(2, b.id, (), (new.id,))), GossipReply)[0].message
    assert reply.want == () and reply.items == ()
    # A non-urgent write has no tree to wait for: gossip takes it at once.
    bulk = item("bulk")
    b.publish(w.now + 2, (bulk,), urgent=False)
    reply = sends(b.handle(w.now + 2, GossipDigest(3, a.id, (), ())), GossipReply)[0].message
    assert reply.items == (bulk,)


def test_gossip_alone_reaches_every_member() -> None:
    settings = dataclasses.replace(SMALL, direct_updates=False, gossip_adaptive=False, gossip_interval_ms=500)
    w = Wire(seed=8, settings=settings)
    peers = w.formed(30)
    w.advance(2000)
    it = item("k")
    w.apply("n3", peers[3].publish(w.now, (it,)))
    w.flush()
    w.advance(20 * settings.gossip_interval_ms)
    holders = {node for node, stores in w.stored.items() if any(it in s.items for s in stores)}
    assert holders | {"n3"} == {p.id for p in peers}
    assert w.sent["Push"] == 0


def test_direct_updates_form_a_tree_that_delivers_each_payload_about_once() -> None:
    w = Wire(seed=9)
    peers = w.formed(40)
    w.advance(3000)
    counts = []
    for i in range(8):
        before = w.sent["Push"]
        it = item(f"k{i}", ts=i + 1)
        w.apply("n1", peers[1].publish(w.now, (it,)))
        w.flush()
        holders = {node for node, stores in w.stored.items() if any(it in s.items for s in stores)}
        assert holders == {p.id for p in peers} - {"n1"}, i
        counts.append(w.sent["Push"] - before)
    assert counts[0] > 2 * 39  # the first write floods every link
    assert counts[-1] == 39  # the tree carries later writes once per node


#: Gossip periods for the adaptive-period tests: base 1 s, between 100 ms and 8 s.
ADAPTIVE = dataclasses.replace(SMALL, gossip_interval_ms=1000, gossip_interval_min_ms=100, gossip_interval_max_ms=8000)


def idle_cluster(seed: int) -> tuple[Wire, list[Peer]]:
    """10 peers with the ADAPTIVE periods, idle long enough for every period to reach its maximum."""
    w = Wire(seed=seed, settings=ADAPTIVE)
    peers = w.formed(10)
    w.advance(60_000, step=50)
    return w, peers


def test_idle_rounds_stretch_the_period_and_a_write_brings_it_back() -> None:
    settings = ADAPTIVE
    w, peers = idle_cluster(10)
    assert all(p.data.period == settings.gossip_interval_max_ms for p in peers)
    p = peers[0]
    p.publish(w.now, (item("k"),), urgent=False)
    assert p.data.period == settings.gossip_interval_min_ms
    assert p.data._next_round <= w.now + settings.gossip_interval_min_ms * 5 // 4  # jittered by up to a quarter
    # A write the broadcast tree carries only brings an idle node back to the base period: gossip has
    # only to repair what the tree missed.
    q = peers[1]
    assert q.data.period == settings.gossip_interval_max_ms
    q.handle(w.now, Push(q.link_ids()[0], 0, (item("pushed"),)))
    assert q.data.period == settings.gossip_interval_ms
    assert q.data._next_round <= w.now + settings.gossip_interval_ms * 5 // 4


def test_period_never_drops_below_four_round_trips() -> None:
    settings = dataclasses.replace(SMALL, gossip_interval_min_ms=10)
    w = Wire(seed=11, settings=settings)
    peers = w.formed(6)
    w.advance(1000)
    p = peers[0]
    p.data.srtt = 200.0
    p.publish(w.now, (item("k"),), urgent=False)
    assert p.data.period == 800


def test_lossy_exchanges_raise_the_fanout() -> None:
    settings = dataclasses.replace(SMALL, gossip_interval_ms=1000, gossip_fanout=2)
    w = Wire(seed=12, settings=settings)
    peers = w.formed(12)
    w.advance(1000)
    p = peers[0]
    for other in peers[1:]:
        w.down.add(other.id)
    w.advance(20_000)
    assert p.data.loss > 0.5
    assert p.data.stats.lost_exchanges > 0
    before = w.sent["GossipDigest"]
    w.apply(p.id, p.tick(p.data._next_round))
    assert w.sent["GossipDigest"] - before == 4  # twice the fanout at most


def test_recent_writes_leave_the_digest_after_the_retain_rounds() -> None:
    settings = dataclasses.replace(SMALL, gossip_adaptive=False, gossip_interval_ms=100)
    w = Wire(seed=13, settings=settings)
    peers = w.formed(8)
    p = peers[0]
    p.publish(w.now, (item("k"),), urgent=False)
    retain = settings.gossip_retain_mult  # ceil(log10(9)) = 1
    w.advance(settings.gossip_interval_ms * (retain + 2) + 2 * settings.graft_timeout_ms)  # fresh ones wait
    assert not p.data.recent
    assert item("k").id in p.data.seen


def test_settings_come_from_the_config() -> None:
    from dsm.config import StorageConfig
    from dsm.core.peer import PeerSettings

    config = StorageConfig(
        node_id="n1",
        gossip_interval_ms=2000,
        gossip_interval_min_ms=100,
        gossip_interval_max_ms=9000,
        gossip_fanout=5,
        anti_entropy_interval_ms=30000,
    )
    s = PeerSettings.from_config(config)
    assert (s.gossip_interval_ms, s.gossip_interval_min_ms, s.gossip_interval_max_ms, s.gossip_fanout) == (
        2000,
        100,
        9000,
        5,
    )
    assert s.anti_entropy_interval_ms == 30000


def test_writes_beyond_the_digest_window_are_not_resent_unasked() -> None:
    settings = dataclasses.replace(SMALL, max_digest_ids=4, max_recent=8, direct_updates=False)
    w = Wire(seed=15, settings=settings)
    w.formed(12)
    w.advance(1000)
    a, b = linked_pair(w)
    writes = tuple(item(f"k{i}") for i in range(8))
    a.publish(w.now, writes, urgent=False)
    b.publish(w.now, writes, urgent=False)
    newest = tuple(i.id for i in reversed(writes))[:4]
    reply = sends(b.handle(w.now, GossipDigest(1, a.id, newest, ())), GossipReply)[0].message
    assert reply.items == () and reply.want == ()


def test_period_stays_within_its_bounds_on_a_slow_network() -> None:
    settings = dataclasses.replace(SMALL, gossip_interval_min_ms=100, gossip_interval_max_ms=2000)
    w = Wire(seed=16, settings=settings)
    peers = w.formed(6)
    p = peers[0]
    p.data.srtt = 5000.0  # 4 round trips would be 20 s
    p.publish(w.now, (item("k"),), urgent=False)
    assert p.data.period == settings.gossip_interval_max_ms
    p.tick(p.data._next_round)
    assert p.data.period == settings.gossip_interval_max_ms


def test_the_trees_copy_of_a_write_gossip_brought_first_is_passed_on_not_pruned() -> None:
    w = Wire(seed=15)
    w.formed(12)
    w.advance(3000)
    a, b = linked_pair(w)
    partner = next(i for i in a.link_ids() if i != b.id)
    it = item("k", node=partner)
    # Gossip brings the write first (a reply to this node's digest): it is stored, not pushed on.
    pulled = a.handle(w.now, GossipReply(5, partner, (), (it,)))
    assert [e for e in pulled if isinstance(e, Store)] and not sends(pulled, Push)
    hold = a.data._hold()
    # Then the tree's copy: the link stays eager and the write goes on down the tree from here.
    assert slot(a, b.id) in a.data.eager
    effects = a.handle(w.now + 1, Push(b.id, 1, (it,)))
    assert not sends(effects, Prune) and slot(a, b.id) in a.data.eager
    onward = {e.node_id for e in sends(effects, Push)}
    assert onward == {a.directory.infos[s].node_id for s in a.data.eager} - {b.id} and onward
    assert all(e.message.hops == 2 for e in sends(effects, Push))
    assert a.data.stats.raced == 1 and a.data._hold() > hold  # gossip runs ahead of the tree: hold longer
    # A second pushed copy is a plain duplicate again: that link is pruned.
    other = next(a.directory.infos[s].node_id for s in a.data.eager if a.directory.infos[s].node_id != b.id)
    again = a.handle(w.now + 2, Push(other, 1, (it,)))
    assert [e.node_id for e in sends(again, Prune)] == [other]


def test_writes_sent_unasked_or_grafted_do_not_bring_gossip_to_its_minimum_period() -> None:
    settings = ADAPTIVE
    w, peers = idle_cluster(16)
    a, b = linked_pair(w)
    # b holds a write a does not list (a had it and let it out of its list, say): b sends it unasked, which
    # does not make b's round useful: only a, if the write is new there, counts it.
    old = item("old", node=b.id)
    b.publish(w.now, (old,), urgent=False)
    b.data._useful = False
    reply = sends(b.handle(w.now + 1000, GossipDigest(9, a.id, (), ())), GossipReply)[0].message
    assert reply.items == (old,) and not b.data._useful
    # A write announced, missing and then grafted came by the tree's repair: the base period, not the minimum.
    c = peers[-1]
    assert c.data.period == settings.gossip_interval_max_ms
    announcer = c.link_ids()[0]
    late = item("late", node=announcer)
    c.handle(w.now, IHave(announcer, 1, (late.id,)))
    c.tick(w.now + settings.graft_timeout_ms)
    c.handle(w.now + settings.graft_timeout_ms + 1, Push(announcer, 1, (late,)))
    assert c.data.period == settings.gossip_interval_ms


def test_a_level_write_sends_its_payload_once_to_each_member_its_replicate_reaches() -> None:
    w = Wire(seed=17)
    w.formed(12)
    w.advance(3000)
    ids = iter(range(1, 1000))
    cores = {pid: NodeCore(p, Resolution.LWW, ids.__next__, w.now) for pid, p in w.peers.items()}
    a = w.peers["n0"]
    it = item("k", node=a.id)
    _, started, targets = cores[a.id].write_at(w.now, Level.ALL, (it,), 1000)
    effects = started + cores[a.id].publish_levelled(w.now, [(it, targets)])
    replicated = {e.node_id for e in sends(effects, Replicate)}
    assert set(targets) == replicated
    pushed = {e.node_id for e in sends(effects, Push)}
    eager = {a.directory.infos[s].node_id for s in a.data.eager}
    assert replicated and eager & replicated
    assert not pushed & replicated and pushed == eager - replicated
    # A member whose eager link the coordinator is passes the write on down the tree, as if pushed (the
    # driver stores it: no Store effect from the core), and holds it out of gossip.
    b = next(w.peers[i] for i in sorted(eager & replicated) if slot(w.peers[i], a.id) in w.peers[i].data.eager)
    message = next(e.message for e in sends(effects, Replicate) if e.node_id == b.id)
    onward = cores[b.id].replicated(w.now, a.id, message)
    assert not [e for e in onward if isinstance(e, Store)] and not sends(onward, Push)
    # ... at the timer due at once (with every write level requests brought in the same moment).
    assert cores[b.id].next_deadline() == w.now
    onward = cores[b.id].tick(w.now)
    assert {e.node_id for e in sends(onward, Push)} == {b.directory.infos[s].node_id for s in b.data.eager} - {a.id}
    # A read repair's Replicate (seq 0), or one whose claimed source is not the sender, is not spread.
    assert cores[b.id].replicated(w.now, a.id, Replicate(0, a.id, (item("r", node=a.id),))) == []
    assert cores[b.id].replicated(w.now, b.id, Replicate(5, a.id, (item("s", node=a.id),))) == []


def test_a_replicated_write_from_a_lazy_link_is_not_forwarded_and_its_tree_copy_is_not_pruned() -> None:
    w = Wire(seed=18)
    w.formed(12)
    w.advance(3000)
    b, a = linked_pair(w)
    b.handle(w.now, Prune(a.id))  # a is a lazy link of b: a's tree push would not have reached b
    assert slot(b, a.id) in b.data.lazy
    it = item("k", node=a.id)
    core = NodeCore(b, Resolution.LWW, iter(range(1, 9)).__next__, w.now)
    assert not sends(core.replicated(w.now, a.id, Replicate(7, a.id, (it,))) + core.tick(w.now), Push)
    parent = next(b.directory.infos[s].node_id for s in b.data.eager)
    effects = b.handle(w.now + 1, Push(parent, 1, (it,)))
    assert not sends(effects, Prune) and slot(b, parent) in b.data.eager
    assert {e.node_id for e in sends(effects, Push)} == {b.directory.infos[s].node_id for s in b.data.eager} - {parent}


def test_writes_published_together_go_in_one_push_per_link_each_without_its_replicate_targets() -> None:
    w = Wire(seed=19)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    core = NodeCore(a, Resolution.LWW, iter(range(1, 9)).__next__, w.now)
    eager = sorted(a.directory.infos[s].node_id for s in a.data.eager)
    assert len(eager) >= 2
    first, second, third = item("x", node=a.id), item("y", node=a.id), item("z", node=a.id)
    # x went to eager[0] in its Replicate, y to eager[1], z was written at `local` (nobody to spare).
    effects = core.publish_levelled(w.now, [(first, (eager[0],)), (second, (eager[1],)), (third, ())])
    by_link: dict[str, list[DataItem]] = {}
    for sent in sends(effects, Push):
        by_link.setdefault(sent.node_id, []).extend(sent.message.items)
    assert len(sends(effects, Push)) == len(by_link) == len(eager)  # one message per eager link
    assert by_link[eager[0]] == [second, third]
    assert by_link[eager[1]] == [first, third]
    assert all(items == [first, second, third] for node, items in by_link.items() if node not in eager[:2])


# ------------------------------------------------------------------ direct pushes (`direct_push_max`)


def fully_linked(count: int, settings: PeerSettings = SMALL, seed: int = 21) -> Wire:
    """A formed cluster of `count` peers (SMALL: 7 links each, so up to 8 are all linked to each other)."""
    w = Wire(seed=seed, settings=settings)
    w.formed(count)
    w.advance(3000)
    for p in w.peers.values():
        assert set(p.link_ids()) == set(w.peers) - {p.id}
    return w


def test_in_a_small_fully_linked_cluster_every_writer_pushes_directly_to_every_member_who_pass_nothing_on() -> None:
    w = fully_linked(5)
    w.log = []
    for writer in w.peers.values():
        it = item(f"k-{writer.id}", node=writer.id)
        effects = writer.publish(w.now, (it,))
        assert {e.node_id for e in sends(effects, DirectPush)} == set(w.peers) - {writer.id}
        assert not sends(effects, Push) and not sends(effects, IHave)
        w.apply(writer.id, effects)
        w.flush()
        for other in set(w.peers) - {writer.id}:
            assert [(s.items, s.source, s.path, s.hops) for s in w.stored[other] if it in s.items] == [
                ((it,), writer.id, "push", 1)
            ]
    # Each write crossed each link once, from its writer: no forwarded copy, graft or prune. Each receiver
    # announced it to lazy_fanout of the 3 other receivers (all of them), so a lost copy would be grafted.
    kinds = Counter(type(message).__name__ for _, _, message in w.log)
    assert kinds == {"DirectPush": 5 * 4, "IHave": 5 * 4 * 3}
    w.advance(5000)  # gossip rounds later: nobody lacked anything, so nothing was pulled or repaired
    assert all(p.data.stats.grafts == p.data.stats.prunes == p.data.stats.gossip_pulled == 0 for p in w.peers.values())


def test_a_direct_push_that_arrives_twice_is_a_duplicate_that_prunes_nothing() -> None:
    w = fully_linked(3)
    a, b = w.peers["n0"], w.peers["n1"]
    it = item("k", node=b.id)
    first = a.handle(w.now, DirectPush(b.id, (it,)))
    assert [e for e in first if isinstance(e, Store)] == [Store((it,), b.id, "push", 1)]
    assert [e.node_id for e in sends(first, IHave)] == ["n2"] and len(first) == 2  # announced, not pushed on
    assert a.handle(w.now, DirectPush(b.id, (it,))) == []
    assert a.data.stats.duplicates == 1 and slot(a, b.id) in a.data.eager


def test_above_direct_push_max_or_not_linked_to_every_member_a_node_uses_the_tree() -> None:
    w = fully_linked(4, dataclasses.replace(SMALL, direct_push_max=3))
    a = w.peers["n0"]
    effects = a.publish(w.now, (item("k", node=a.id),))
    assert sends(effects, Push) and not sends(effects, DirectPush)
    # 12 members on 7 links each: nobody links to all of them.
    w = Wire(seed=4)
    w.formed(12)
    w.advance(3000)
    a = w.peers["n0"]
    assert len(a.link_ids()) < 11
    effects = a.publish(w.now, (item("k", node=a.id),))
    assert sends(effects, Push) and not sends(effects, DirectPush)
    # 0 turns direct pushes off.
    w = fully_linked(3, dataclasses.replace(SMALL, direct_push_max=0))
    a = w.peers["n0"]
    assert not sends(a.publish(w.now, (item("k", node=a.id),)), DirectPush)


def test_a_level_write_of_a_direct_pusher_sends_its_payload_once_and_its_replicate_targets_pass_nothing_on() -> None:
    w = fully_linked(4)
    cores = {pid: NodeCore(p, Resolution.LWW, iter(range(1, 99)).__next__, w.now) for pid, p in w.peers.items()}
    a = w.peers["n0"]
    # An earlier write of a's, pushed directly: its members know a pushes directly.
    w.apply(a.id, a.publish(w.now, (item("before", node=a.id),)))
    w.flush()
    it = item("k", node=a.id)
    _, started, targets = cores[a.id].write_at(w.now, Level.ALL, (it,), 1000)
    effects = started + cores[a.id].publish_levelled(w.now, [(it, targets)])
    replicated = {e.node_id for e in sends(effects, Replicate)}
    assert replicated == set(targets) and replicated
    pushed = {e.node_id for e in sends(effects, DirectPush)}
    assert not pushed & replicated and pushed | replicated == set(w.peers) - {a.id}
    for target in replicated:
        message = next(e.message for e in sends(effects, Replicate) if e.node_id == target)
        onward = cores[target].replicated(w.now, a.id, message) + cores[target].tick(w.now)
        assert not sends(onward, Push) and not sends(onward, DirectPush)


def test_a_direct_push_that_is_lost_is_grafted_from_a_member_that_announced_it() -> None:
    w = fully_linked(4)
    writer, lost = w.peers["n0"], w.peers["n3"]
    w.cut.add(frozenset((writer.id, lost.id)))  # the copy to n3 is lost (a connection that broke)
    it = item("k", node=writer.id)
    w.apply(writer.id, writer.publish(w.now, (it,)))
    w.flush()
    assert it.id in lost.data.missing and not w.stored.get(lost.id)
    w.advance(SMALL.graft_timeout_ms + 50)
    assert [(s.items, s.path) for s in w.stored[lost.id]] == [((it,), "push")]
    assert lost.data.stats.grafts == 1
