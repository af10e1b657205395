"""`NodeStatus`: a frozen snapshot of one node as the edge shows it (the HTTP API's members, topology and health
routes, its metrics, and anything else that reports on a running node).

The edge reads this, never the core's tables: `snapshot` is the one place that looks into the member table,
the directory, the overlay's links, the dissemination's gossip period and the runtime's, the transport's and
the store's counters, and it copies what it reads into frozen dataclasses and tuples. A snapshot never
changes afterwards, whatever the node does next (members joining or failing, links moving, counters
growing), and it holds no reference to a live array or counter, so the edge can keep it, compare two of
them or render it at leisure without seeing a half-updated table.

What it reads of the network runtime is the `NetworkSource` protocol (`dsm.net.runtime.Runtime` has all of
it); this module does not import the runtime, so the runtime may produce its own snapshot (a
`Runtime.status()` calling `snapshot`) without an import cycle. A node that runs standalone (no runtime) or
whose runtime has not started yet has `network=None`.

A snapshot costs one pass over the member table when the member list is asked for (`members=True`, for
`/v1/members`); the health probes and the metrics scrape ask for `members=False` and pay only for the
counters (a few dozen numbers), whatever the size of the cluster.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dsm.core.peer import Peer
from dsm.core.ring import State
from dsm.net.looplag import LoopLag
from dsm.net.transport import Transport
from dsm.node import EpidemicStorage
from dsm.node.sync_points import SyncPointBook

__all__ = [
    "STANDALONE",
    "STATES_COUNTED",
    "JoinStatus",
    "Links",
    "LoopLagStatus",
    "Member",
    "NetworkSource",
    "NetworkStatus",
    "NodeStatus",
    "StatusReader",
    "StoreStatus",
    "TransportStatus",
    "reader",
    "snapshot",
]

#: The member states counted in `NetworkStatus.member_counts`, in this order.
STATES_COUNTED = (State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT)

#: Labelled counts, `(label, count)` sorted by label: a counter as it was at the snapshot.
Counts = tuple[tuple[str, int], ...]


class NetworkSource(Protocol):
    """What a snapshot reads of the network runtime (`dsm.net.runtime.Runtime` provides it)."""

    @property
    def peer(self) -> Peer | None: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def loop_lag(self) -> LoopLag: ...

    @property
    def anti_entropy_sessions(self) -> int: ...

    @property
    def anti_entropy_held(self) -> int: ...

    @property
    def anti_entropy_answers(self) -> int: ...

    @property
    def anti_entropy_entries(self) -> int: ...

    @property
    def anti_entropy_repaired(self) -> int: ...

    @property
    def sync_points(self) -> SyncPointBook: ...

    def now(self) -> int: ...

    def join_status(self) -> dict[str, Any]: ...


class Member(NamedTuple):
    """One member as this node sees it (a named tuple rather than a frozen dataclass: a list of 10,000 is
    built three times faster)."""

    node_id: str
    addr: str
    region: str
    state: State
    incarnation: int
    #: How long ago (ms) this node last received a message from the member; None: never since it started
    #: (and for the node itself).
    heard_ms_ago: int | None = None


@dataclass(frozen=True, slots=True)
class Links:
    """This node's links in the overlay, by member id, each sorted: `near` (its ring neighbors), `long_out`
    (shortcuts it opened), `long_in` (shortcuts others opened to it)."""

    near: tuple[str, ...] = ()
    long_out: tuple[str, ...] = ()
    long_in: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinStatus:
    """Whether the node has joined its cluster and, if not, why: `reason` ("" once joined; "starting",
    "left", ...) and the join `targets`, `(address or id, how it last failed)` in the order they are tried."""

    joined: bool
    reason: str = ""
    targets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TransportStatus:
    """The transport's counters (messages and bytes by message type; drops, rejections and connect
    failures by reason) and its open connections."""

    frames_out: Counts
    frames_in: Counts
    bytes_out: Counts
    bytes_in: Counts
    dropped: Counts
    rejected: Counts
    connect_failures: Counts
    connections_out: int
    connections_in: int
    #: Times a member dialled again over a silent connection and this node dialled it again too.
    redials: int = 0


@dataclass(frozen=True, slots=True)
class LoopLagStatus:
    """The event loop's measured stalls (`dsm.net.looplag`): samples per bucket of `BUCKETS_S` and one more
    for larger lags, their sum and the longest one, in seconds."""

    counts: tuple[int, ...]
    total_s: float
    max_s: float


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """The networked part of a node: its membership view, links and counters."""

    node_id: str
    #: Every member this node knows of (itself included), sorted by id; None when the snapshot was taken
    #: with `members=False`.
    members: tuple[Member, ...] | None
    #: Members by state, `STATES_COUNTED` in order.
    member_counts: tuple[tuple[State, int], ...]
    members_alive: int
    links: Links
    gossip_interval_ms: int
    gossip_rounds: int
    #: The broadcast tree's and gossip's events so far (`DisseminationStats`), by name: duplicates, prunes,
    #: grafts, raced (pushed copies of writes gossip brought first), gossip_pulled.
    dissemination: tuple[tuple[str, int], ...]
    anti_entropy_sessions: int
    #: Rounds held back by heavy writes (`anti_entropy_busy_writes`).
    anti_entropy_held: int
    anti_entropy_answers: int
    anti_entropy_entries: int
    anti_entropy_repaired: int
    #: Members this node keeps anti-entropy sync points of (a watch resumed here from their cursors replays
    #: this node's rows after one, rather than resyncing the prefix).
    sync_point_peers: int
    transport: TransportStatus
    loop_lag: LoopLagStatus


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The store's counters: remote items merged (and refused, by cause), tombstones purged, level requests
    by `(operation, level, outcome)` (sorted), read repairs."""

    merged_items: int
    merged_changed: int
    refused_skew: int
    refused_corrupt: int
    refused_expired: int
    tombstones_purged: int
    level_requests: tuple[tuple[tuple[str, str, str], int], ...]
    read_repairs: int
    #: Open watches; watches opened with a cursor by how they caught up (sorted); watches a reader let overflow.
    watches_open: int = 0
    watch_resumes: tuple[tuple[str, int], ...] = ()
    watch_overflows: int = 0
    #: Replication delays (`dsm.node.lag`): per bucket of `lag.BUCKETS_S` and +Inf, the readings in it (not
    #: cumulative); their sum (s); and the median's bucket bound (s; None before any reading).
    replication_delay_counts: tuple[int, ...] = ()
    replication_delay_sum_s: float = 0.0
    replication_delay_p50_s: float | None = None


#: The join status of a node without a runtime: alone, it has nothing to join.
STANDALONE = JoinStatus(joined=True)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One node at one moment (see the module docstring)."""

    node_id: str
    #: The node is closing or closed: it no longer serves.
    closed: bool
    join: JoinStatus
    store: StoreStatus
    #: None for a node without a runtime, or whose runtime has not started.
    network: NetworkStatus | None

    @property
    def members_alive(self) -> int:
        """Alive members this node knows of, itself included (1 without a network)."""
        return self.network.members_alive if self.network is not None else 1


class StatusReader(Protocol):
    """Takes a snapshot of one node when called (`reader` makes one); what the edge is given in place of the
    node's runtime."""

    def __call__(self, *, members: bool = True) -> NodeStatus: ...


def reader(storage: EpidemicStorage, runtime: NetworkSource | None = None) -> StatusReader:
    """A `StatusReader` of this node: `snapshot(storage, runtime, members=...)` at every call."""

    def read(*, members: bool = True) -> NodeStatus:
        return snapshot(storage, runtime, members=members)

    return read


def snapshot(storage: EpidemicStorage, runtime: NetworkSource | None = None, *, members: bool = True) -> NodeStatus:
    """The node's status now, copied (see the module docstring).

    Args:
        storage: the node's store.
        runtime: its network runtime; None for a node that runs standalone.
        members: whether to list every member (one pass over the member table); without it
            `NetworkStatus.members` is None and the rest is the same.

    Returns:
        A frozen snapshot that later changes to the node do not move.
    """
    join = STANDALONE if runtime is None else _join(runtime.join_status())
    network = None if runtime is None or runtime.peer is None else _network(runtime, runtime.peer, members)
    return NodeStatus(node_id=storage.node_id, closed=storage.closed, join=join, store=_store(storage), network=network)


def _join(status: dict[str, Any]) -> JoinStatus:
    targets = tuple((str(target), str(reason)) for target, reason in status["targets"].items())
    return JoinStatus(joined=bool(status["joined"]), reason=str(status["reason"]), targets=targets)


def _store(storage: EpidemicStorage) -> StoreStatus:
    merges = storage.merge_stats
    return StoreStatus(
        merged_items=merges.items,
        merged_changed=merges.keys_changed,
        refused_skew=merges.refused_skew,
        refused_corrupt=merges.refused_corrupt,
        refused_expired=merges.refused_expired,
        tombstones_purged=storage.tombstones_purged,
        level_requests=tuple(sorted(storage.level_stats.items())),
        read_repairs=storage.read_repairs,
        watches_open=len(storage.watches),
        watch_resumes=tuple(sorted(storage.watches.resumes.items())),
        watch_overflows=storage.watches.overflows,
        replication_delay_counts=tuple(storage.replication_delay.counts),
        replication_delay_sum_s=storage.replication_delay.sum_s,
        replication_delay_p50_s=storage.replication_delay.quantile(0.5),
    )


def _network(runtime: NetworkSource, peer: Peer, members: bool) -> NetworkStatus:
    counts = peer.table.counts
    lag = runtime.loop_lag
    return NetworkStatus(
        node_id=peer.id,
        members=_members(peer, runtime.now()) if members else None,
        member_counts=tuple((state, counts[int(state)]) for state in STATES_COUNTED),
        members_alive=peer.live_count(),
        links=_links(peer),
        gossip_interval_ms=peer.data.period,
        gossip_rounds=peer.data.stats.gossip_rounds,
        dissemination=tuple(
            (name, getattr(peer.data.stats, name))
            for name in ("duplicates", "prunes", "grafts", "raced", "gossip_pulled")
        ),
        anti_entropy_sessions=runtime.anti_entropy_sessions,
        anti_entropy_held=runtime.anti_entropy_held,
        anti_entropy_answers=runtime.anti_entropy_answers,
        anti_entropy_entries=runtime.anti_entropy_entries,
        anti_entropy_repaired=runtime.anti_entropy_repaired,
        sync_point_peers=len(runtime.sync_points.points),
        transport=_transport(runtime.transport),
        loop_lag=LoopLagStatus(counts=tuple(lag.counts), total_s=lag.total_s, max_s=lag.max_s),
    )


#: The states by their value in the member table (a tuple index costs less than an enum lookup).
_STATES = tuple(State)


def _members(peer: Peer, now: int) -> tuple[Member, ...]:
    infos = peer.directory.infos
    heard = peer.last_heard
    found = [
        Member(
            info.node_id, info.addr, info.region, _STATES[raw], incarnation,
            None if at is None else max(0, now - at),
        )
        for slot, raw, incarnation in peer.table.entries()
        for info, at in ((infos[slot], heard.get(slot)),)
    ]  # fmt: skip
    found.sort()
    return tuple(found)


def _links(peer: Peer) -> Links:
    overlay, infos = peer.overlay, peer.directory.infos

    def ids(slots: Iterable[int]) -> tuple[str, ...]:
        return tuple(sorted(infos[slot].node_id for slot in slots))

    return Links(near=ids(overlay.near), long_out=ids(overlay.long_out), long_in=ids(overlay.long_in))


def _transport(transport: Transport) -> TransportStatus:
    stats = transport.stats
    outgoing, incoming = transport.connections()

    def counts(counter: Counter[str]) -> Counts:
        return tuple(sorted(counter.items()))

    return TransportStatus(
        frames_out=counts(stats.frames_out),
        frames_in=counts(stats.frames_in),
        bytes_out=counts(stats.bytes_out),
        bytes_in=counts(stats.bytes_in),
        dropped=counts(stats.dropped),
        rejected=counts(stats.rejected),
        connect_failures=counts(stats.connect_failure_reasons),
        connections_out=outgoing,
        connections_in=incoming,
        redials=stats.redials,
    )
