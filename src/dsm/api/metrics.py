"""The node's Prometheus metrics, served at `GET /metrics` (text format).

Two sources, both read at scrape time, so nothing is counted twice:
- the node's status snapshot (`dsm.net.status`, one per scrape, without the member list): the store's
  merges, tombstones, level requests and read repairs; with a network, the transport's messages, bytes,
  drops, rejections, connect failures and connections, the members by state, whether the node joined, the
  gossip period and rounds, anti-entropy's work and the event loop's stalls;
- the HTTP server's own counters: unparseable requests by kind (`BAD_REQUESTS`) and the connections by
  phase and closed by a bound (`ConnectionPool`); and the Redis-protocol front door's, when it runs
  (`attach_resp`): connections, closes by bound, commands by name, errors by code.
Besides, the latency of the key operations is a histogram observed as each request ends (`timed`).

The names, labels and help texts are a contract with dashboards: README's metrics table lists them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dsm.api.connections import BAD_REQUESTS, CLOSE_REASONS, ConnectionPool
from dsm.api.resp import RESP_CLOSE_REASONS, RespServer
from dsm.net.looplag import BUCKETS_S
from dsm.net.status import NetworkStatus, StatusReader, StoreStatus
from dsm.node.lag import BUCKETS_S as DELAY_BUCKETS_S

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Buckets of `dsm_operation_seconds`, in seconds.
OPERATION_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class Metrics:
    """The app's registry: the operation latency histogram and the collectors (see the module docstring).

    Args:
        status: the node's status snapshots.
        pool: the HTTP server's connections.
        registry: where the metrics go (a new one when None).
    """

    def __init__(self, status: StatusReader, pool: ConnectionPool, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.latency = Histogram(
            "dsm_operation_seconds", "Latency of client operations", ["op"], registry=self.registry,
            buckets=OPERATION_BUCKETS_S,
        )  # fmt: skip
        self.collector = NodeCollector(status, pool)
        self.registry.register(self.collector)

    def attach_resp(self, server: RespServer) -> None:
        """Exports the Redis-protocol front door's counters too."""
        self.collector.resp = server

    def timed(self, op: str, handler: Handler) -> Handler:
        """`handler`, its latency observed as `dsm_operation_seconds{op=op}`."""
        observe = self.latency.labels(op).observe  # the labelled child once, not a lookup per request

        async def run(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            try:
                return await handler(request)
            finally:
                observe(time.perf_counter() - start)

        return run

    async def serve(self, request: web.Request) -> web.Response:
        """`GET /metrics`."""
        return web.Response(body=generate_latest(self.registry), content_type="text/plain", charset="utf-8")


class NodeCollector(Collector):
    """The node's metrics, from one status snapshot per scrape, and the HTTP server's counters (in the order
    they have always been exported)."""

    def __init__(self, status: StatusReader, pool: ConnectionPool) -> None:
        self.status, self.pool = status, pool
        self.resp: RespServer | None = None

    def collect(self) -> Iterator[Metric]:
        status = self.status(members=False)
        yield from merge_metrics(status.store)
        yield from http_metrics(self.pool)
        yield from level_metrics(status.store)
        yield from watch_metrics(status.store)
        yield from replication_metrics(status.store)
        network = status.network
        if network is not None:
            yield from transport_metrics(network)
            yield GaugeMetricFamily(
                "dsm_joined", "1 once this node has joined its cluster (levels above local need it), else 0",
                value=1 if status.join.joined else 0,
            )  # fmt: skip
            yield from network_metrics(network)
        if self.resp is not None:
            yield from resp_metrics(self.resp)


def resp_metrics(server: RespServer) -> Iterator[Metric]:
    """The Redis-protocol front door's counters."""
    yield GaugeMetricFamily("dsm_resp_connections", "Open Redis-protocol connections", value=len(server.connections))
    closed = CounterMetricFamily(
        "dsm_resp_connections_closed",
        "Redis-protocol connections closed by a bound: max_connections (refused at resp_max_connections), "
        "request_timeout (a command not complete in time), send_timeout (a client not taking its replies), "
        "idle_timeout, protocol_error (not RESP, or a request over the size bound), internal_error",
        labels=["reason"],
    )
    for reason in RESP_CLOSE_REASONS:
        closed.add_metric([reason], server.closed[reason])
    yield closed
    commands = CounterMetricFamily("dsm_resp_commands", "Redis-protocol commands run, by name", labels=["command"])
    for name, count in sorted(server.commands.items()):
        commands.add_metric([name.lower()], count)
    yield commands
    errors = CounterMetricFamily(
        "dsm_resp_errors", "Redis-protocol error replies, by code (ERR, NOAUTH, TRYAGAIN, ...)", labels=["code"]
    )
    for code, count in sorted(server.errors.items()):
        errors.add_metric([code], count)
    yield errors


def http_metrics(pool: ConnectionPool) -> Iterator[Metric]:
    """The HTTP server's own counters: unparseable requests, connections by phase, closes by reason."""
    bad = CounterMetricFamily(
        "dsm_http_bad_requests", "Unparseable HTTP requests refused with a 400, by kind", labels=["kind"]
    )
    for kind, count in sorted(BAD_REQUESTS.items()):
        bad.add_metric([kind], count)
    yield bad
    http_open = GaugeMetricFamily(
        "dsm_http_connections",
        "Open HTTP connections (served with the bounds), by phase: headers (a request arriving), busy, idle",
        labels=["phase"],
    )
    for phase, count in pool.phases().items():
        http_open.add_metric([phase], count)
    yield http_open
    http_closed = CounterMetricFamily(
        "dsm_http_connections_closed",
        "HTTP connections closed by a bound: header_timeout, body_timeout, send_timeout (a client not "
        "reading its answer), idle_timeout, evicted (the oldest "
        "idle or half-sent one, for a new connection at http_max_connections), refused (503, all busy); "
        "and client_gone: closed by the client before its request body arrived",
        labels=["reason"],
    )
    for reason in CLOSE_REASONS:
        http_closed.add_metric([reason], pool.closed[reason])
    yield http_closed


def merge_metrics(store: StoreStatus) -> Iterator[Metric]:
    """What merges of remote writes and the tombstone sweep did."""
    merged = CounterMetricFamily("dsm_merge_items", "Replicated items merged, by outcome", labels=["outcome"])
    refused = store.refused_skew + store.refused_corrupt + store.refused_expired
    merged.add_metric(["changed"], store.merged_changed)
    merged.add_metric(["unchanged"], store.merged_items - store.merged_changed - refused)
    merged.add_metric(["refused_skew"], store.refused_skew)
    merged.add_metric(["refused_corrupt"], store.refused_corrupt)
    merged.add_metric(["refused_expired"], store.refused_expired)
    yield merged
    yield CounterMetricFamily(
        "dsm_tombstones_purged",
        "Deleted keys whose tombstones the sweep purged (older than tombstone_grace_ms)",
        value=store.tombstones_purged,
    )


def level_metrics(store: StoreStatus) -> Iterator[Metric]:
    """Requests above the local level by outcome, and the read repairs they sent."""
    levels = CounterMetricFamily(
        "dsm_consistency_requests",
        "Reads and writes above the local level, by operation, level and outcome (ok, unmet)",
        labels=["op", "level", "outcome"],
    )
    for (op, name, outcome), count in store.level_requests:
        levels.add_metric([op, name, outcome], count)
    yield levels
    yield CounterMetricFamily(
        "dsm_read_repairs",
        "Members (this node included) a read above the local level found stale and sent the merge to",
        value=store.read_repairs,
    )


def replication_metrics(store: StoreStatus) -> Iterator[Metric]:
    """How long after their write replicated versions became durable on this node (`dsm.node.lag`)."""
    if not store.replication_delay_counts:
        return
    buckets, running = [], 0
    for bound, count in zip((*DELAY_BUCKETS_S, float("inf")), store.replication_delay_counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    yield HistogramMetricFamily(
        "dsm_replication_delay_seconds",
        "From a write (the writer's clock) to its durability on this node, for versions that arrived from "
        "other replicas (pushes, level requests, anti-entropy, conditional writes' commits)",
        buckets=buckets,
        sum_value=store.replication_delay_sum_s,
    )


def watch_metrics(store: StoreStatus) -> Iterator[Metric]:
    """Open watches, watches resumed from a cursor (by how they caught up), and those a reader let overflow."""
    yield GaugeMetricFamily("dsm_watches_open", "Open watch streams", value=store.watches_open)
    yield labelled_counter(
        "dsm_watch_resumes",
        "Watches opened with a cursor, by how they caught up: same_node (a replay of the rows changed since), "
        "resync (every key under the prefix: another node's cursor, another epoch, or older than the grace)",
        "plan",
        store.watch_resumes,
    )
    yield CounterMetricFamily(
        "dsm_watch_overflows",
        "Watches ended with a final cursor because their reader fell the queue's limit behind",
        value=store.watch_overflows,
    )


def transport_metrics(network: NetworkStatus) -> Iterator[Metric]:
    """The transport's counters (by message type or by reason) and its open connections."""
    transport = network.transport
    for name, doc, counts in (
        ("dsm_messages_sent", "Messages sent, by type", transport.frames_out),
        ("dsm_messages_received", "Messages received, by type", transport.frames_in),
        ("dsm_bytes_sent", "Bytes sent, by message type", transport.bytes_out),
        ("dsm_bytes_received", "Bytes received, by message type", transport.bytes_in),
        ("dsm_messages_dropped", "Messages not sent, by reason", transport.dropped),
        ("dsm_connections_rejected", "Incoming connections closed for bad input, by reason", transport.rejected),
        (
            "dsm_peer_connect_failures",
            "Outgoing node connections that failed, by reason",
            transport.connect_failures,
        ),
    ):
        yield labelled_counter(name, doc, "type" if "reason" not in doc else "reason", counts)
    yield CounterMetricFamily(
        "dsm_peer_redials",
        "Members that dialled this node again over a silent connection (a restart, a move), "
        "which this node then dialled again too",
        value=transport.redials,
    )


def labelled_counter(name: str, doc: str, label: str, counts: Iterable[tuple[str, float]]) -> Metric:
    """A counter family of one label, a sample per (label value, count)."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in counts:
        family.add_metric([value], count)
    return family


def network_metrics(network: NetworkStatus) -> Iterator[Metric]:
    """Members by state, gossip, anti-entropy, the event loop's stalls, the open connections."""
    states = GaugeMetricFamily("dsm_members", "Members by state, as this node sees them", labels=["state"])
    for state, count in network.member_counts:
        states.add_metric([state.name.lower()], count)
    yield states
    yield GaugeMetricFamily(
        "dsm_gossip_interval_seconds", "The current gossip period", value=network.gossip_interval_ms / 1000
    )
    yield CounterMetricFamily("dsm_gossip_rounds", "Gossip rounds run", value=network.gossip_rounds)
    yield labelled_counter(
        "dsm_dissemination_events",
        "Broadcast tree and gossip events: pushed duplicates, prunes, grafts, raced (pushed copies of writes "
        "gossip brought first), writes pulled by gossip",
        "event",
        network.dissemination,
    )
    yield CounterMetricFamily(
        "dsm_anti_entropy_sessions", "Anti-entropy exchanges opened", value=network.anti_entropy_sessions
    )
    yield CounterMetricFamily(
        "dsm_anti_entropy_held",
        "Anti-entropy rounds held back while the node saw more than anti_entropy_busy_writes writes a second",
        value=network.anti_entropy_held,
    )
    yield CounterMetricFamily(
        "dsm_anti_entropy_answers", "Anti-entropy steps answered", value=network.anti_entropy_answers
    )
    yield CounterMetricFamily(
        "dsm_anti_entropy_entries",
        "Entries anti-entropy exchanges brought to this node (differences found)",
        value=network.anti_entropy_entries,
    )
    yield CounterMetricFamily(
        "dsm_anti_entropy_repaired_keys",
        "Keys anti-entropy changed here: writes the direct pushes and gossip had not delivered",
        value=network.anti_entropy_repaired,
    )
    yield GaugeMetricFamily(
        "dsm_anti_entropy_sync_point_peers",
        "Members this node keeps anti-entropy sync points of (watches resumed here from their cursors replay "
        "this node's changes since one, not the whole prefix)",
        value=network.sync_point_peers,
    )
    lag = network.loop_lag
    cumulative = list(itertools.accumulate(lag.counts))
    yield HistogramMetricFamily(
        "dsm_event_loop_lag_seconds",
        "How late the event loop ran a timer: the length of stalls (sampled every 50 ms)",
        buckets=[*((str(b), c) for b, c in zip(BUCKETS_S, cumulative, strict=False)), ("+Inf", cumulative[-1])],
        sum_value=lag.total_s,
    )
    yield GaugeMetricFamily(
        "dsm_event_loop_lag_max_seconds", "The longest event-loop stall seen since start", value=lag.max_s
    )
    connections = GaugeMetricFamily("dsm_connections", "Open connections", labels=["direction"])
    connections.add_metric(["outgoing"], network.transport.connections_out)
    connections.add_metric(["incoming"], network.transport.connections_in)
    yield connections
