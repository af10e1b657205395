"""The coordinator of consistency levels (`dsm.core.coordinator`), driven by hand on a real `Peer`'s view: what
counts towards a level, hedging, deadlines, the refusal before the join, the merge of a read and its repairs.
No event loop: the tests feed it the time and the answers, as the runtime and the simulator do."""

from __future__ import annotations

import random

from dsm.core.consistency import Level
from dsm.core.coordinator import Coordinator, LevelDone
from dsm.core.encoding import decode_versions, encode_versions
from dsm.core.messages import DataItem, ReadReply, ReadRequest, Replicate, Replicated, Send, Store
from dsm.core.node_core import NodeCore
from dsm.core.peer import Peer, PeerSettings
from dsm.core.ring import Directory, MemberInfo
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write

TIMEOUT = 1000


def coordinator(members: int = 3, joined: bool = True) -> Coordinator:
    infos = [MemberInfo(f"n{i}", f"mem://n{i}", "r") for i in range(members)]
    peer = Peer(infos[0], PeerSettings(), random.Random(1), 0, directory=Directory())
    if joined:
        peer.install([(info, 0) for info in infos])
    return NodeCore(peer, Resolution.SIBLINGS, iter(range(1, 10_000)).__next__, 0).coordinator


def versions_of(node: str, timestamp: int, value: bytes) -> VersionSet:
    return write(VersionSet(), Dot(timestamp, node), VersionVector(), value, Resolution.SIBLINGS, 16)


ITEM = DataItem(7, "k", encode_versions(versions_of("n0", 5, b"v")))


def sends(effects: list[object]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def done(effects: list[object]) -> list[LevelDone]:
    return [e for e in effects if isinstance(e, LevelDone)]


def test_a_quorum_write_counts_only_members_that_stored_it() -> None:
    c = coordinator()
    rid, effects = c.write(0, Level.QUORUM, [ITEM], TIMEOUT)
    (first,) = sends(effects)  # 2 of 3 needed, this node's own commit counted: one member asked
    assert isinstance(first.message, Replicate) and first.message.seq == rid and first.message.items == (ITEM,)
    member = first.node_id
    assert c.handle(1, member, Replicated(rid, member, False)) == []  # refused (skew, corrupt row): no count
    other = "n2" if member == "n1" else "n1"
    assert c.handle(2, other, Replicated(rid, member, True)) == []  # claims another sender: no count
    assert c.handle(3, member, Replicated(rid + 1, member, True)) == []  # another request's id: no count
    (ok,) = done(c.handle(4, member, Replicated(rid, member, True)))
    assert ok.ok and ok.request == rid and ok.tally.received == 2
    assert c.pending == 0 and c.handle(5, member, Replicated(rid, member, True)) == []  # late: ignored


def test_the_rest_are_asked_after_the_hedge_delay_and_the_deadline_fails_the_request() -> None:
    c = coordinator(members=5)
    rid, effects = c.write(0, Level.ALL, [ITEM], TIMEOUT)
    first = {s.node_id for s in sends(effects)}
    assert first == {"n1", "n2", "n3", "n4"}  # `all` needs everyone: no second wave
    rid, effects = c.write(0, Level.QUORUM, [ITEM], TIMEOUT)
    first = {s.node_id for s in sends(effects)}
    assert len(first) == 2  # 3 of 5 needed
    hedge = c.next_deadline()
    assert hedge is not None and hedge < TIMEOUT
    rest = {s.node_id for s in sends(c.tick(hedge))}
    assert rest == {"n1", "n2", "n3", "n4"} - first
    failed = [d for d in done(c.tick(TIMEOUT)) if d.request == rid]
    assert len(failed) == 1 and not failed[0].ok and failed[0].reason == "timeout"
    assert failed[0].tally.received == 1 and failed[0].tally.required == 3


def test_a_node_that_has_not_joined_refuses_at_once() -> None:
    c = coordinator(joined=False)
    _, effects = c.write(0, Level.QUORUM, [ITEM], TIMEOUT)
    (refused,) = done(effects)
    assert not refused.ok and refused.reason == "not_joined" and not sends(effects) and c.pending == 0


def test_a_read_merges_the_answers_and_repairs_the_stale_members() -> None:
    c = coordinator()
    mine = versions_of("n0", 5, b"mine")
    rid, effects = c.read(0, Level.ALL, "k", mine, TIMEOUT)
    assert {s.node_id for s in sends(effects)} == {"n1", "n2"}
    assert all(isinstance(s.message, ReadRequest) and s.message.keys == ("k",) for s in sends(effects))
    theirs = versions_of("n1", 6, b"theirs")
    assert c.handle(1, "n1", ReadReply(rid, "n1", (("k", encode_versions(theirs)),), True)) == []
    effects = c.handle(2, "n2", ReadReply(rid, "n2", (("k", encode_versions(mine)),), True))
    (finished,) = done(effects)
    merged = mine.merge(theirs, Resolution.SIBLINGS)
    assert finished.ok and finished.versions == merged and len(merged.versions) == 2  # concurrent: siblings
    repairs = {s.node_id: s.message for s in sends(effects)}
    assert set(repairs) == {"n1", "n2"}  # both held only one of the siblings
    assert all(isinstance(m, Replicate) and m.seq == 0 for m in repairs.values())  # no answer wanted
    (here,) = [e for e in effects if isinstance(e, Store)]
    assert here.path == "repair" and decode_versions(here.items[0].versions) == merged  # this node too
    assert c.stats.read_repairs == 3


def test_an_unreadable_or_failed_answer_does_not_count() -> None:
    c = coordinator()
    rid, _ = c.read(0, Level.ALL, "k", VersionSet(), TIMEOUT)
    assert c.handle(1, "n1", ReadReply(rid, "n1", (("k", b"\xffgarbage"),), True)) == []
    assert c.stats.bad_replies == 1
    assert c.handle(2, "n2", ReadReply(rid, "n2", (), False)) == []  # its store failed
    assert c.pending == 1


def test_abandon_ends_every_request_in_flight() -> None:
    c = coordinator()
    first, _ = c.write(0, Level.QUORUM, [ITEM], TIMEOUT)
    second, _ = c.read(0, Level.QUORUM, "k", VersionSet(), TIMEOUT)
    ended = c.abandon()
    assert {d.request for d in ended} == {first, second} and all(not d.ok and d.reason == "closed" for d in ended)
    assert c.pending == 0 and c.next_deadline() is None
