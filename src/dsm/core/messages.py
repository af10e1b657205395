"""Protocol messages of membership, the overlay and routing, and the effects a core returns.

Messages are immutable named tuples: cheap to build (the simulator moves millions of them), shared by
reference between simulated cores, and a plain tuple for the wire codec of the network runtime. Every
message names its `source` by node id. Membership changes ride on probe traffic as `Update`s (piggybacking);
there is no message whose only job is to spread membership.

The `kind` of an update is a `State` value (alive, suspect, dead, left); `origin` is the node that raised
a suspicion (so independent suspicions can be counted as confirmations) or the empty string.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Update(NamedTuple):
    """One membership fact: `node_id` is in `state` at `incarnation` (piggybacked on other messages)."""

    state: int
    node_id: str
    incarnation: int
    addr: str
    region: str
    origin: str


Updates = tuple[Update, ...]


class Ping(NamedTuple):
    """Direct probe. `target` guards against a new process answering for an old id at the same address."""

    seq: int
    source: str
    target: str
    updates: Updates


class PingReq(NamedTuple):
    """Asks a helper to probe `target` on the source's behalf (SWIM indirect probe)."""

    seq: int
    source: str
    target: str
    target_addr: str
    updates: Updates


class Ack(NamedTuple):
    """Answer to a Ping, or forwarded by a helper for a PingReq (then `source` is the probed member)."""

    seq: int
    source: str
    updates: Updates


class Nack(NamedTuple):
    """A helper could not reach the target in time: tells the prober that the helper itself is healthy
    (Lifeguard), so the prober does not blame its own slowness."""

    seq: int
    source: str


class Join(NamedTuple):
    """A node asks a bootstrap member for its member table (the push half is the joiner's own entry)."""

    source: str
    addr: str
    region: str
    incarnation: int


class JoinReply(NamedTuple):
    """The bootstrap member's whole table (pull half of the join's push-pull)."""

    source: str
    members: Updates


class Neighbor(NamedTuple):
    """A joiner announces itself to the members that become its near links, so the ring is consistent at
    once rather than after the join has spread by gossip."""

    source: str
    addr: str
    region: str
    incarnation: int


class Link(NamedTuple):
    """Request for a long link from `source` to the receiver."""

    seq: int
    source: str
    addr: str
    region: str
    incarnation: int


class LinkReply(NamedTuple):
    """Accepts or refuses (the receiver has its maximum of incoming long links) a Link request."""

    seq: int
    source: str
    accepted: bool


class Unlink(NamedTuple):
    """The source dropped its long link to the receiver (the receiver frees an incoming slot)."""

    source: str


class Leave(NamedTuple):
    """The source leaves the cluster for good (at this incarnation); sent to its links, then spread."""

    source: str
    incarnation: int


class SyncDigest(NamedTuple):
    """Membership anti-entropy, first step: the digest of each ring arc of the source's member table."""

    source: str
    digests: tuple[int, ...]


class SyncSubDigests(NamedTuple):
    """Membership anti-entropy, second step: for each arc whose digest differed, the digests of its
    sub-arcs (`digests` holds SUB_ARCS values per arc, in the order of `buckets`)."""

    source: str
    buckets: tuple[int, ...]
    digests: tuple[int, ...]


class SyncLeaves(NamedTuple):
    """Membership anti-entropy, third step: the hash of each of the sender's entries (`ring.entry_hash`)
    in the sub-arcs whose digests differed."""

    source: str
    sub_buckets: tuple[int, ...]
    hashes: tuple[int, ...]


class SyncEntries(NamedTuple):
    """Membership anti-entropy, last steps: entries of those sub-arcs the receiver lacks or holds
    differently, and the hashes (`want`) of the receiver's entries the sender lacks, to be sent back."""

    source: str
    sub_buckets: tuple[int, ...]
    members: Updates
    want: tuple[int, ...]


class Routed(NamedTuple):
    """An application payload travelling greedily over the overlay to `target`; `via` is the hop that
    sent this copy (it waits for a RoutedAck and tries another hop if none comes)."""

    route_id: int
    source: str
    source_addr: str
    target: str
    hops: int
    payload: Any
    via: str


class RoutedAck(NamedTuple):
    """A hop took over the routed message (`source` is the original sender, `acker` the hop)."""

    route_id: int
    source: str
    acker: str


class RouteFailed(NamedTuple):
    """Sent back to a routed message's source by the member where it could go no further."""

    route_id: int
    source: str
    target: str
    hops: int
    reason: str


class DataItem(NamedTuple):
    """One write to replicate: the key's whole version set at the coordinator after the write (replicas
    exchange whole sets, never single versions; see `dsm.core.versions`). `id` names the write
    (`dsm.core.dissemination.update_id`): 8 bytes that digests and announcements carry instead of it."""

    id: int
    key: str
    versions: bytes


DataItems = tuple[DataItem, ...]


class Push(NamedTuple):
    """Direct update (eager push along the broadcast tree); also the answer to a Graft. `hops`: overlay
    hops the items travelled from their coordinator to the sender of this copy."""

    source: str
    hops: int
    items: DataItems


class DirectPush(NamedTuple):
    """Writes pushed by their coordinator to every member it knows, all of them overlay links (a small, fully
    linked cluster: `Dissemination` "Direct pushes"): its receivers keep and announce them, and pass nothing on."""

    source: str
    items: DataItems


class IHave(NamedTuple):
    """Lazy announcement: the source holds these writes (ids only). A receiver that does not get them
    by eager push soon asks for them with a Graft."""

    source: str
    hops: int
    ids: tuple[int, ...]


class Graft(NamedTuple):
    """Asks the receiver to send these writes and to push eagerly to the source from now on (the link
    joins the broadcast tree)."""

    source: str
    ids: tuple[int, ...]


class Prune(NamedTuple):
    """The source received a write twice; the receiver stops pushing eagerly to it (the link leaves the
    broadcast tree and carries announcements only)."""

    source: str


class GossipDigest(NamedTuple):
    """A gossip round: the ids of the writes the source saw recently; `fresh`, those it saw so recently
    that the broadcast tree may still be delivering them (not to be pulled yet, nor sent back)."""

    seq: int
    source: str
    ids: tuple[int, ...]
    fresh: tuple[int, ...]


class GossipReply(NamedTuple):
    """Answer to a digest: `want`, the listed ids the source lacks; `items`, the source's recent writes
    that the digest did not list (the receiver lacks them, or has let them out of its recent list)."""

    seq: int
    source: str
    want: tuple[int, ...]
    items: DataItems


class GossipItems(NamedTuple):
    """Writes the receiver asked for in its `GossipReply`."""

    source: str
    items: DataItems


#: Anti-entropy run of consecutive key ranges (reconcile.encode_run): lower bound, upper bound (None: the
#: end of the key space), mode, the inner bounds prefix-compressed (shared-prefix lengths, suffixes) and
#: the packed 8-byte values (summaries, or digests).
Run = tuple[str, str | None, int, bytes, tuple[str, ...], bytes]


class Reconcile(NamedTuple):
    """One anti-entropy message (reconcile.py): runs of key ranges to compare, and entries (key, encoded
    version set) for the receiver to merge."""

    session: int
    source: str
    runs: tuple[Run, ...]
    entries: tuple[tuple[str, bytes], ...]


class SyncPoint(NamedTuple):
    """Sent at the end of an anti-entropy exchange (`session`) by a side that merged every entry the receiver
    sent in it: "`source`, at `stamp` of its store `epoch`, holds or dominates every version the receiver held
    at its first step of the exchange" (`reconcile.py`, "Sync points"). The receiver checks the claim against
    its own record of the exchange and keeps it for resuming watches (`dsm.core.watch_cursor`)."""

    session: int
    source: str
    epoch: int
    stamp: int


class Replicate(NamedTuple):
    """Store these writes durably (a merge, as for any replicated write) and answer with `Replicated`: a
    write at a consistency level above `local` (consistency.py). `seq` 0: read repair, no answer wanted."""

    seq: int
    source: str
    items: DataItems


class Replicated(NamedTuple):
    """Answer to a `Replicate`: `stored` is True once every item is durable here (False: the merge failed or
    refused an item, for example for clock skew)."""

    seq: int
    source: str
    stored: bool


class ReadRequest(NamedTuple):
    """Asks for the stored version sets of `keys` (a read at a consistency level above `local`)."""

    seq: int
    source: str
    keys: tuple[str, ...]


class ReadReply(NamedTuple):
    """The stored version sets (encoded) of the keys asked for that this node holds; absent keys left out.
    `ok` is False when the store failed (then nothing is listed and the answer does not count)."""

    seq: int
    source: str
    entries: tuple[tuple[str, bytes], ...]
    ok: bool


# Conditional writes (issue 19: CASPaxos per key, see core/cas_acceptor.py and core/cas_proposer.py). Ballots
# are `dsm.core.ballot.Ballot` triples.


class CasPrepare(NamedTuple):
    """Promise `ballot` for `key` and say what you accepted last (and the key's data row). `group`: the digest
    of the acceptor group the proposer uses (`cas_group.group_digest`); an acceptor that sees another group for
    the key refuses."""

    seq: int
    source: str
    key: str
    ballot: tuple[int, str, int]
    group: int


class CasPromise(NamedTuple):
    """Answer to `CasPrepare`: `ok`, the ballot promised (the higher one, when refused), the ballot and state
    (an encoded version set) accepted last, and this node's data row of the key (b"" if absent)."""

    seq: int
    source: str
    ok: bool
    promised: tuple[int, str, int]
    accepted: tuple[int, str, int]
    value: bytes
    row: bytes


class CasAccept(NamedTuple):
    """Accept `value` (an encoded version set) for `key` at `ballot`, and promise `then` (a higher ballot, or
    the zero ballot for none) with it: the proposer's next round on the key may skip its prepare."""

    seq: int
    source: str
    key: str
    ballot: tuple[int, str, int]
    value: bytes
    then: tuple[int, str, int]
    group: int


class CasAccepted(NamedTuple):
    """Answer to `CasAccept`: `ok`, and the ballot promised (the higher one, when refused)."""

    seq: int
    source: str
    ok: bool
    promised: tuple[int, str, int]


class CasCommit(NamedTuple):
    """`value` was chosen for `key` at `ballot`: merge it into the data row (no answer)."""

    source: str
    key: str
    ballot: tuple[int, str, int]
    value: bytes


class CommitEntry(NamedTuple):
    """One chosen state in a `CasCommits`."""

    key: str
    ballot: tuple[int, str, int]
    value: bytes


class CasCommits(NamedTuple):
    """Several `CasCommit`s to one acceptor in one message (a proposer gathers its commits to each member for
    a moment: they are not on any operation's critical path)."""

    source: str
    entries: tuple[CommitEntry, ...]


class CasRequest(NamedTuple):
    """Run a conditional operation on `key` as its home (the first live member of its acceptor group), for the
    node that took it (`source`), within `timeout_ms`. `kind`: 0 if-absent, 1 if-match (`context`: the
    encoded context token), 2 put, 3 read; `value` (with `has_value`; a delete has none)."""

    request: int
    source: str
    key: str
    kind: int
    has_value: bool
    value: bytes
    context: str
    timeout_ms: int
    #: The written value expires this long after the write (0: never).
    ttl_ms: int


class CasResult(NamedTuple):
    """Answer to `CasRequest`: the operation's outcome (`dsm.core.cas_proposer.CasOutcome` value) and the
    key's chosen state (an encoded version set; b"" when refused or unknown)."""

    request: int
    source: str
    outcome: str
    state: bytes


Message = (
    Ping
    | PingReq
    | Ack
    | Nack
    | Join
    | JoinReply
    | Neighbor
    | Link
    | LinkReply
    | Unlink
    | Leave
    | SyncDigest
    | SyncSubDigests
    | SyncLeaves
    | SyncEntries
    | Routed
    | RoutedAck
    | RouteFailed
    | Push
    | DirectPush
    | IHave
    | Graft
    | Prune
    | GossipDigest
    | GossipReply
    | GossipItems
    | Reconcile
    | SyncPoint
    | Replicate
    | Replicated
    | CasPrepare
    | CasPromise
    | CasAccept
    | CasAccepted
    | CasCommit
    | CasCommits
    | CasRequest
    | CasResult
    | ReadRequest
    | ReadReply
)

#: Messages that exist to build and repair the overlay (what a join "costs"); the rest is probing,
#: which membership updates ride on, and routed application traffic.
OVERLAY_MESSAGES = (Join, JoinReply, Neighbor, Link, LinkReply, Unlink, Leave)
#: Membership anti-entropy (periodic, not caused by any one join).
SYNC_MESSAGES = (SyncDigest, SyncSubDigests, SyncLeaves, SyncEntries)
#: Messages of write dissemination (direct updates and gossip).
DATA_MESSAGES = (Push, DirectPush, IHave, Graft, Prune, GossipDigest, GossipReply, GossipItems)
#: Messages of consistency levels and read repair (a coordinator and the members it asks).
LEVEL_MESSAGES = (Replicate, Replicated, ReadRequest, ReadReply)


# --- effects: what a core asks its runtime to do ---


class Send(NamedTuple):
    """Send `message` to the member `node_id` at `addr`."""

    node_id: str
    addr: str
    message: Message


class Deliver(NamedTuple):
    """A routed payload reached this node (its target)."""

    route_id: int
    source: str
    hops: int
    payload: Any


class RouteFailure(NamedTuple):
    """A payload this node routed could not be delivered; `reason` says why and `hops` how far it went."""

    route_id: int
    target: str
    hops: int
    reason: str


class Store(NamedTuple):
    """Merge these writes into the local replica. `path` says how they came ("push", "gossip" or
    "anti-entropy", whose items carry id 0) and
    `hops` how many overlay hops they travelled from their coordinator (for measurements)."""

    items: DataItems
    source: str
    path: str
    hops: int


Effect = Send | Deliver | RouteFailure | Store
