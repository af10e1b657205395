"""Ballots of the per-key Paxos rounds that conditional writes run (issue 19; see docs/consistency.md).

A ballot is (timestamp, node id, run), compared as a tuple:
- `timestamp` is a reading of the node's hybrid logical clock (the same clock that stamps its versions), so a
  node's ballots only ever increase while it runs, and a proposer refused at ballot b fast-forwards its clock
  past b (`HybridLogicalClock.observe`) so its next ballot is higher;
- `node` makes ballots of different nodes distinct;
- `run` is a counter the node stores and raises at every start: the clock's stored floor moves only with
  commits, so after a `kill -9` a node that proposed without committing could read its clock below a ballot
  it already used; the run keeps the ballot unique anyway.
Paxos needs ballots to be unique and totally ordered, not clocks to agree: clock skew changes who wins a
race, never what is chosen.
"""

from __future__ import annotations

from typing import NamedTuple

from dsm.core.hlc import HybridLogicalClock


class Ballot(NamedTuple):
    """A Paxos ballot: (HLC timestamp, node id, run), ordered as a tuple."""

    timestamp: int
    node: str
    run: int


#: Below every ballot a proposer issues (an acceptor's state before its first promise).
ZERO = Ballot(0, "", 0)


def next_ballot(clock: HybridLogicalClock, wall_ms: int, node: str, run: int) -> Ballot:
    """A new ballot of `node`, above every ballot and timestamp its clock issued or observed."""
    return Ballot(clock.now(wall_ms), node, run)
