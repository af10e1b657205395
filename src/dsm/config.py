"""`StorageConfig`: every setting of a DSM node, its unit, default and trade-off, in one place.

Settings come from, weakest first: the defaults below, a TOML file (top-level keys named as the fields),
environment variables (`DSM_` + the field name in upper case, e.g. `DSM_GOSSIP_INTERVAL_MS=2000`) and
keyword arguments (what the command line's flags become). `StorageConfig.load` applies that precedence;
constructing `StorageConfig(...)` directly uses only defaults and keywords. An invalid value raises
`ConfigError` naming the field, the value and what is allowed, at construction time.

`dsm config` prints the table of settings with their documentation (generated from `FIELD_DOCS`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsm.core.versions import SIBLINGS_MAX_BYTES, SIBLINGS_META_MAX_BYTES
from dsm.errors import ConfigError
from dsm.types import NODE_ID_RULE, is_node_id

_REGION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

KIB = 1024
MIB = 1024 * KIB
#: What a node-to-node message carries besides one key's version set, at most (anti-entropy runs and
#: sketches, batches of writes capped at 1 MiB, the fields): all of it fitted in the 8 MiB frame of old.
MESSAGE_OVERHEAD_BYTES = 8 * MIB


def message_max_bytes(max_value_bytes: int, max_key_bytes: int) -> int:
    """The largest node-to-node message (packed body) a node sends or accepts: one key's largest version set
    (its values, at most `SIBLINGS_MAX_BYTES` or one value; its dots and contexts) plus the rest of a message.
    Every state a write can leave travels (see `dsm.core.versions` and docs/network.md, Large messages)."""
    return max(max_value_bytes, SIBLINGS_MAX_BYTES) + SIBLINGS_META_MAX_BYTES + max_key_bytes + MESSAGE_OVERHEAD_BYTES


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """The configuration of one DSM node. Immutable; see the module docstring for how it is loaded."""

    # --- identity (from the specification) ---
    node_id: str = field(
        default="",
        metadata=_doc(
            "Unique, stable name of the node (1-128 of A-Z a-z 0-9 . _ : @ -); its hash places the node "
            "on the ring. Keep it across restarts: a node's writes are identified by it. May be left empty "
            "in the config and given to create_epidemic_storage instead."
        ),
    )
    region: str = field(
        default="default",
        metadata=_doc("Geographic region (1-64 of A-Z a-z 0-9 . _ -), for regional consistency levels."),
    )

    # --- protocol (names and defaults from the specification) ---
    gossip_interval_ms: int = field(
        default=5000,
        metadata=_doc(
            "Base period of gossip rounds, ms. Shorter converges faster and costs more messages when idle. "
            "The adaptive period moves between gossip_interval_min_ms and gossip_interval_max_ms."
        ),
    )
    gossip_interval_min_ms: int = field(
        default=200,
        metadata=_doc("Shortest adaptive gossip period, ms (busy cluster): bounds message rate per node."),
    )
    gossip_interval_max_ms: int = field(
        default=30000,
        metadata=_doc("Longest adaptive gossip period, ms (idle cluster): bounds repair delay when idle."),
    )
    anti_entropy_interval_ms: int = field(
        default=60000,
        metadata=_doc(
            "Period of full reconciliation with one peer, ms. Shorter repairs long partitions sooner at the "
            "cost of a digest exchange per period."
        ),
    )
    gossip_fanout: int = field(
        default=3,
        metadata=_doc("Peers contacted per gossip round (1-32). Higher converges in fewer rounds, costs more."),
    )
    max_immediate_neighbors: int = field(
        default=16,
        metadata=_doc(
            "Near links: the closest nodes on the ring, half on each side (2-256, even). More links keep the "
            "overlay connected under more failures and cost more connections."
        ),
    )
    max_long_links: int = field(
        default=16,
        metadata=_doc("Long-range links drawn by harmonic distance (0-256). More links shorten routes."),
    )
    max_long_links_in: int = field(
        default=0,
        metadata=_doc(
            "Most incoming long links a node accepts (0 = 2 x max_long_links). Bounds connections per node; "
            "a lower cap spreads links more evenly but lengthens routes."
        ),
    )
    route_hop_limit: int = field(
        default=64,
        metadata=_doc("Most overlay hops a routed message may take (1-1024) before it fails as undeliverable."),
    )

    # --- failure detection (SWIM with Lifeguard; names after memberlist's) ---
    probe_interval_ms: int = field(
        default=1000,
        metadata=_doc(
            "Failure-detector protocol period, ms: each node probes one linked member per period. Shorter "
            "detects failures sooner and costs more messages."
        ),
    )
    probe_timeout_ms: int = field(
        default=500,
        metadata=_doc(
            "Wait for a direct probe's answer before asking helpers, ms (< probe_interval_ms). Too short "
            "raises false suspicions on slow links; too long delays detection."
        ),
    )
    indirect_probes: int = field(
        default=3,
        metadata=_doc("Helpers asked to probe a member that missed its direct probe (0-16). More resists loss."),
    )
    indirect_probes_max: int = field(
        default=8,
        metadata=_doc(
            "Most helpers asked when this node measures heavy message loss (indirect_probes-32): the number "
            "of helpers grows from indirect_probes with the measured loss, so that loss alone rarely makes "
            "a live member suspect."
        ),
    )
    suspicion_mult: int = field(
        default=4,
        metadata=_doc(
            "Suspicion timeout, in probe periods per log10(n) (1-100): a suspect is declared dead after "
            "between this and suspicion_max_mult times it. Longer gives slow nodes time to refute."
        ),
    )
    suspicion_max_mult: int = field(
        default=6,
        metadata=_doc(
            "Unconfirmed suspicions wait this many times the minimum timeout (1-100); each independent "
            "confirmation shortens the wait towards the minimum (Lifeguard)."
        ),
    )
    retransmit_mult: int = field(
        default=4,
        metadata=_doc(
            "Each membership update is piggybacked retransmit_mult * ceil(log10(n+1)) times (1-100). Higher "
            "spreads news more reliably, in bigger messages."
        ),
    )
    max_piggyback: int = field(
        default=32,
        metadata=_doc("Most membership updates carried by one probe message (1-1024): bounds message size."),
    )
    max_local_health: int = field(
        default=8,
        metadata=_doc(
            "Ceiling of Lifeguard's local health score (0-64): a node that misses answers stretches its "
            "probe period and timeouts up to (1 + this) times, so a slow node stops accusing healthy ones."
        ),
    )
    membership_sync_interval_ms: int = field(
        default=10000,
        metadata=_doc(
            "Membership anti-entropy period, ms: compare member-table digests with one linked member and "
            "exchange what differs. Shorter repairs missed updates sooner, at a small constant cost."
        ),
    )

    # --- running a node ---
    data_dir: str = field(
        default="dsm-data",
        metadata=_doc("Directory for the node's files (the SQLite database when storage_url is empty)."),
    )
    storage_url: str = field(
        default="",
        metadata=_doc(
            "Backing store: empty for SQLite at <data_dir>/dsm.sqlite3; 'sqlite:///abs/path.db' or "
            "'sqlite:rel/path.db'; 'postgresql://user@host:port/db' (needs the 'postgres' extra); "
            "'memory:' (nothing survives a restart; tests and simulations)."
        ),
    )
    listen_addr: str = field(
        default="127.0.0.1:7400",
        metadata=_doc(
            "host:port the node listens on for other nodes (TCP; port 0: one the system picks); empty runs a "
            "standalone node (one replica, no network)."
        ),
    )
    advertise_addr: str = field(
        default="",
        metadata=_doc("host:port other nodes should use to reach this one; empty means listen_addr."),
    )
    http_addr: str = field(
        default="127.0.0.1:7480",
        metadata=_doc("host:port of the client HTTP API."),
    )
    bootstrap: str = field(
        default="",
        metadata=_doc(
            "Comma-separated host:port addresses of existing members to join through (tried in turn, with "
            "the members saved in the store). Empty, with no saved members, starts a new cluster; a node "
            "that has either joins and is not ready until a member answers."
        ),
    )
    join_retry_max_ms: int = field(
        default=30000,
        metadata=_doc(
            "Longest wait between join attempts of a node that reaches no member, ms (100-3600000): the "
            "wait doubles from 2 s up to it. Longer costs less when the cluster is away, rejoins later."
        ),
    )
    new_cluster: bool = field(
        default=False,
        metadata=_doc(
            "Start a new cluster even though the store saved the members of one (disaster recovery, like "
            "etcd's --force-new-cluster): the saved members are forgotten. Refused with bootstrap addresses."
        ),
    )
    leave_on_terminate: bool = field(
        default=False,
        metadata=_doc(
            "Whether SIGTERM makes `dsm node run` leave the cluster for good (the others stop counting it for "
            "consistency levels) rather than stop as a member that will return. Off: a rolling restart never "
            "shrinks a quorum (Consul servers' default); leave for good with this on or `dsm remove-member`."
        ),
    )
    adopt_store: bool = field(
        default=False,
        metadata=_doc(
            "Run on a store another node id wrote (it becomes this node's). Off: such a store is refused at "
            "start, naming both ids, as a node started on the wrong data directory would otherwise serve it."
        ),
    )
    cluster_secret: str = field(
        default="",
        repr=False,  # a secret: never printed (`dsm config`, logs, a repr in a traceback)
        metadata=_doc(
            "Shared secret (at least 16 bytes) that authenticates and encrypts every node-to-node frame; "
            "empty: plain connections. A node without it can neither join, read nor inject."
        ),
    )
    cluster_secrets_accepted: str = field(
        default="",
        repr=False,
        metadata=_doc(
            "Comma-separated older or newer secrets also accepted from connecting nodes, to rotate "
            "cluster_secret without downtime (docs/network.md)."
        ),
    )
    http_token: str = field(
        default="",
        repr=False,
        metadata=_doc("Bearer token the HTTP API requires (except /health); empty: no token."),
    )
    http_header_timeout_ms: int = field(
        default=10000,
        metadata=_doc(
            "Most time an HTTP request's headers may take to arrive, from the connection's start or the "
            "request's first byte, ms (100-600000); then the connection is closed. Shorter frees the sockets "
            "of slow or half-sent requests sooner; too short cuts clients on very slow links."
        ),
    )
    http_body_timeout_ms: int = field(
        default=60000,
        metadata=_doc(
            "Most time a PUT's body may take to arrive once its headers have (else 408), and a client may take "
            "to read an answer or a watch line (else the connection is closed), ms (100-3600000). Must cover "
            "max_value_bytes at the slowest client's rate."
        ),
    )
    http_idle_timeout_ms: int = field(
        default=60000,
        metadata=_doc(
            "How long a kept-alive HTTP connection may wait for its next request, ms (100-86400000). Longer "
            "saves clients reconnecting; shorter frees idle sockets sooner."
        ),
    )
    http_max_connections: int = field(
        default=1024,
        metadata=_doc(
            "Most concurrent HTTP connections (1-1000000; at most half the open-files limit is used). At the "
            "cap a new connection closes the oldest one that is idle or still sending its headers; when all "
            "are busy it gets 503 with Retry-After. Higher serves more clients, costs a descriptor each."
        ),
    )
    tls_cert_file: str = field(
        default="",
        metadata=_doc(
            "PEM certificate chain of this node (its own certificate first); with tls_key_file it turns on "
            "TLS (1.2+) for node-to-node connections, serving peers and as the client certificate towards "
            "them, and for the HTTP API (see http_tls). Empty: no TLS. Every node of a cluster must agree."
        ),
    )
    tls_key_file: str = field(
        default="",
        metadata=_doc("Unencrypted PEM private key of tls_cert_file; set both or neither."),
    )
    tls_ca_file: str = field(
        default="",
        metadata=_doc(
            "PEM CA bundle of the cluster (needs tls_cert_file): peers' certificates must be signed by it, in "
            "both directions (mutual TLS; host names are not checked: the cluster CA model, docs/network.md). "
            "Empty: connecting nodes are not asked for a certificate, and the certificates of the nodes we "
            "connect to are checked against the system's CAs and the host name of their address."
        ),
    )
    tls_require_node_id: bool = field(
        default=True,
        metadata=_doc(
            "Whether a peer's TLS certificate must name its node id (URI SAN dsm:node:<id>); a certificate "
            "naming another id is refused either way. Off only for certificates a PKI cannot name so: then "
            "any certificate of the cluster CA passes as any node."
        ),
    )
    peer_handshake_timeout_ms: int = field(
        default=3000,
        metadata=_doc(
            "Deadline of a node-to-node handshake (TLS included) from accept or connect, ms (100-60000). "
            "Longer tolerates slower links; shorter frees unauthenticated connections sooner."
        ),
    )
    peer_handshakes_max: int = field(
        default=128,
        metadata=_doc(
            "Most incoming node connections in their handshake at once (1-65536); more are closed at once. "
            "Bounds what unauthenticated connections may hold (a few KiB each)."
        ),
    )
    peer_handshakes_per_host_max: int = field(
        default=32,
        metadata=_doc("Most of those from one IP address (1-65536), so one host cannot take every handshake slot."),
    )
    http_tls: str = field(
        default="auto",
        metadata=_doc(
            "Whether the HTTP API serves HTTPS with tls_cert_file: 'auto' (when tls_cert_file is set), 'on' "
            "(requires tls_cert_file) or 'off' (plain HTTP even with a certificate, e.g. behind a proxy that "
            "terminates TLS)."
        ),
    )
    durability: str = field(
        default="process",
        metadata=_doc(
            "'process': an acknowledged write survives a crash or kill -9 of the node process (SQLite WAL "
            "with synchronous=NORMAL; PostgreSQL synchronous_commit=off, the server holds it). 'fsync': "
            "every acknowledged write is also on stable storage and survives power loss (SQLite "
            "synchronous=FULL; PostgreSQL synchronous_commit=on); single-writer throughput drops "
            "to the disk's fsync rate, concurrent writers share fsyncs."
        ),
    )
    conflict_resolution: str = field(
        default="lww",
        metadata=_doc(
            "'lww': concurrent writes resolve to the highest (HLC timestamp, node id), identically on every "
            "node. 'siblings': concurrent values are kept and returned together until a write that read "
            "them resolves them."
        ),
    )
    tags: dict[str, str] = field(
        default_factory=dict,
        hash=False,
        metadata=_doc(
            "Free metadata of this node, spread to every member (`GET /v1/members`), like Serf's tags: a TOML "
            "table of strings; `dsm node run --tag key=value`; DSM_TAGS as JSON. NodeInfo.metadata overrides it."
        ),
    )
    write_consistency: str = field(
        default="local",
        metadata=_doc(
            "Default consistency level of writes: 'local' (acknowledged once durable on this node), "
            "'region_quorum' (a majority of this node's region), 'quorum' (a majority of all members), "
            "'each_region_quorum' (a majority in every region) or 'all'. Members that are unreachable or "
            "suspected still count in the denominator; only members that left do not. A request may "
            "override it, and `regions` may set it per region."
        ),
    )
    read_consistency: str = field(
        default="local",
        metadata=_doc(
            "Default consistency level of reads (the same names as write_consistency). Above 'local' a read "
            "merges the versions of enough members and repairs those that were stale (read repair)."
        ),
    )
    consistency_timeout_ms: int = field(
        default=2000,
        metadata=_doc(
            "How long a write or read above 'local' waits for enough members, ms (1 - 600000). Then it fails "
            "with ConsistencyError (HTTP 503); a write stays durable where it landed and keeps spreading."
        ),
    )
    regions: dict[str, dict[str, str]] = field(
        default_factory=dict,
        hash=False,
        metadata=_doc(
            "Per-region defaults: a TOML table per region, e.g. [regions.eu-west] with write_consistency = "
            "'region_quorum' and read_consistency = 'region_quorum'; a node uses its own region's table, "
            "else write_consistency / read_consistency. Environment: DSM_REGIONS as JSON."
        ),
    )
    tombstone_grace_ms: int = field(
        default=864_000_000,
        metadata=_doc(
            "How long a delete's tombstone is kept before it is purged, ms (1 s - 365 days; default 10 days). "
            "It must exceed the longest time a member may be away and come back with its data: a member away "
            "longer refuses to start with that data (see stale_replica). Shorter frees space sooner."
        ),
    )
    stale_replica: str = field(
        default="refuse",
        metadata=_doc(
            "What a networked node does when its data was last in the cluster longer ago than "
            "tombstone_grace_ms: 'refuse' to start (StaleReplicaError), or 'discard' its data and rejoin "
            "empty (it copies the cluster's data back by anti-entropy)."
        ),
    )

    # --- limits ---
    max_key_bytes: int = field(
        default=1 * KIB,
        metadata=_doc("Longest key, in UTF-8 bytes (1 - 64 KiB)."),
    )
    max_value_bytes: int = field(
        default=1 * MIB,
        metadata=_doc(
            "Largest value, bytes (0 - 64 MiB; the same on every node). Larger values cost memory in every "
            "message; node-to-node messages reach max(this, 4 MiB) + 9 MiB + max_key_bytes (max_message_bytes), "
            "and those above 1 MiB travel in chunks."
        ),
    )
    max_siblings: int = field(
        default=16,
        metadata=_doc(
            "Most concurrent versions a write may leave on a key (1-1024, siblings mode); a write beyond it "
            "supersedes the oldest. Bounds read size under heavy concurrent blind writes."
        ),
    )
    max_context_bytes: int = field(
        default=64 * KIB,
        metadata=_doc(
            "Largest context token a client may send, bytes (64 B - 16 MiB). A context holds one entry (about "
            "20-30 bytes) per node that coordinated writes of the key; raise it if thousands of nodes do."
        ),
    )
    reassembly_max_bytes: int = field(
        default=128 * MIB,
        metadata=_doc(
            "Most bytes of large node-to-node messages (sent in chunks) being reassembled at once on this node "
            "(16 MiB - 64 GiB; at least max_message_bytes). A connection whose message does not fit waits, "
            "unread (backpressure). Larger lets more large values arrive at once; it costs that much memory."
        ),
    )
    max_clock_offset_ms: int = field(
        default=10000,
        metadata=_doc(
            "How far ahead of our wall clock a remote or client timestamp may be before it is rejected, ms. "
            "Larger tolerates worse clock sync; smaller limits how far a bad clock can skew last-writer-wins."
        ),
    )
    write_batch_max: int = field(
        default=512,
        metadata=_doc(
            "Most writes grouped into one storage commit (1-100000). Larger batches raise throughput under "
            "many concurrent writers and lengthen each commit."
        ),
    )
    write_batch_max_bytes: int = field(
        default=4 * MIB,
        metadata=_doc(
            "Most value bytes grouped into one storage commit (64 KiB - 1 GiB; a single larger write still "
            "commits alone). Bounds how long one commit keeps the event loop busy with large values."
        ),
    )
    storage_timeout_ms: int = field(
        default=10000,
        metadata=_doc(
            "Deadline of each call to a networked store (PostgreSQL), ms. A server that stops answering fails "
            "calls with StorageUnavailableError after this long instead of hanging them."
        ),
    )
    write_queue_max: int = field(
        default=8192,
        metadata=_doc(
            "Most writes waiting for a commit (1-1000000); further writers wait (backpressure) rather than "
            "grow memory without bound."
        ),
    )

    def __post_init__(self) -> None:
        _validate(self)

    # --- derived values ---
    @property
    def max_message_bytes(self) -> int:
        """Largest node-to-node message sent or accepted, bytes (`message_max_bytes`)."""
        return message_max_bytes(self.max_value_bytes, self.max_key_bytes)

    @property
    def advertised(self) -> str:
        """The address other nodes use to reach this one."""
        return self.advertise_addr or self.listen_addr

    @property
    def bootstrap_addrs(self) -> tuple[str, ...]:
        """The bootstrap addresses as a tuple."""
        return tuple(a.strip() for a in self.bootstrap.split(",") if a.strip())

    @property
    def accepted_secrets(self) -> tuple[str, ...]:
        return tuple(s for s in self.cluster_secrets_accepted.split(",") if s)

    @property
    def peer_tls(self) -> bool:
        """Whether node-to-node connections use TLS (a certificate and key are configured)."""
        return bool(self.tls_cert_file)

    @property
    def http_uses_tls(self) -> bool:
        """Whether the HTTP API serves HTTPS (http_tls 'on', or 'auto' with a certificate)."""
        return self.http_tls == "on" or (self.http_tls == "auto" and bool(self.tls_cert_file))

    def levels(self, region: str | None = None) -> tuple[str, str]:
        """The default (write, read) consistency levels of `region` (default: this node's)."""
        table = self.regions.get(self.region if region is None else region, {})
        return table.get("write_consistency", self.write_consistency), table.get(
            "read_consistency", self.read_consistency
        )

    def resolved_storage_url(self) -> str:
        """The storage URL with the default (SQLite under data_dir) filled in."""
        if self.storage_url:
            return self.storage_url
        return "sqlite://" + str((Path(self.data_dir) / "dsm.sqlite3").resolve())

    def replace(self, **changes: Any) -> StorageConfig:
        """A copy with some fields changed (validated like a new config)."""
        _check_known(changes)
        return dataclasses.replace(self, **changes)

    @staticmethod
    def load(
        toml_path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> StorageConfig:
        """Builds a config from a TOML file, `DSM_*` environment variables and keyword overrides.

        Args:
            toml_path: a TOML file whose top-level keys are field names, or None.
            env: the environment to read `DSM_*` variables from (default: `os.environ`).
            **overrides: field values that win over everything else (None values are ignored).

        Returns:
            the validated config.

        Raises:
            ConfigError: a file that cannot be read or parsed, an unknown setting or an invalid value.
        """
        values: dict[str, Any] = {}
        if toml_path is not None:
            try:
                with open(toml_path, "rb") as handle:
                    document = tomllib.load(handle)
            except OSError as exc:
                raise ConfigError("config file", str(toml_path), f"a readable TOML file ({exc})") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError("config file", str(toml_path), f"valid TOML ({exc})") from exc
            _check_known(document)
            values.update(document)
        environment = os.environ if env is None else env
        for f in dataclasses.fields(StorageConfig):
            raw = environment.get("DSM_" + f.name.upper())
            if raw is not None:
                values[f.name] = _from_text(f.name, raw)
        given = {k: v for k, v in overrides.items() if v is not None}
        _check_known(given)
        values.update(given)
        return StorageConfig(**values)


#: Field name -> documentation, in declaration order (for `dsm config` and the README).
FIELD_DOCS: dict[str, str] = {f.name: f.metadata["doc"] for f in dataclasses.fields(StorageConfig)}
#: Secrets: fields kept out of the config's repr, `dsm config` and error messages.
_HIDDEN = frozenset(f.name for f in dataclasses.fields(StorageConfig) if not f.repr)
_FIELD_TYPES: dict[str, type] = {
    f.name: (int if f.type in ("int", int) else bool if f.type in ("bool", bool) else str)
    for f in dataclasses.fields(StorageConfig)
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _check_known(values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if name not in _FIELD_TYPES:
            raise ConfigError(name, value, "an unknown setting; known: " + ", ".join(_FIELD_TYPES))


def _from_text(name: str, raw: str) -> Any:
    if name in ("regions", "tags"):
        try:
            return json.loads(raw)
        except ValueError:
            what = "region -> {write_consistency, read_consistency}" if name == "regions" else "key -> value"
            raise ConfigError(name, raw, f"JSON: an object of {what}") from None
    if _FIELD_TYPES[name] is bool:
        text = raw.strip().lower()
        if text not in _TRUE + _FALSE:
            raise ConfigError(name, raw, "true or false (1/0, yes/no, on/off)")
        return text in _TRUE
    if _FIELD_TYPES[name] is int:
        try:
            return int(raw.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(name, raw, "an integer") from None
    return raw


def _int_in(config: StorageConfig, name: str, low: int, high: int) -> int:
    value = getattr(config, name)
    if type(value) is not int:
        raise ConfigError(name, value, f"an integer from {low} to {high}")
    if not low <= value <= high:
        raise ConfigError(name, value, f"an integer from {low} to {high}")
    return value


def _str(config: StorageConfig, name: str) -> str:
    value = getattr(config, name)
    if not isinstance(value, str):
        raise ConfigError(name, "<hidden>" if name in _HIDDEN else value, "a string")
    return value


def _address(config: StorageConfig, name: str, allow_empty: bool = False) -> None:
    value = _str(config, name)
    if allow_empty and not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(name, value, "host:port with a port from 0 to 65535")


def _readable_file(c: StorageConfig, name: str) -> None:
    path = _str(c, name)
    if not path:
        return
    if "\x00" in path or not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(name, path, "a readable PEM file (it does not exist or cannot be read)")


def _tls(c: StorageConfig) -> None:
    """TLS settings: file paths only (`dsm.net.tls.contexts` loads and checks the PEM contents)."""
    cert, key, ca = _str(c, "tls_cert_file"), _str(c, "tls_key_file"), _str(c, "tls_ca_file")
    if cert and not key:
        raise ConfigError("tls_key_file", key, "the private key of tls_cert_file (set both or neither)")
    if key and not cert:
        raise ConfigError("tls_cert_file", cert, "the certificate of tls_key_file (set both or neither)")
    if ca and not cert:
        raise ConfigError("tls_cert_file", cert, "a certificate and key when tls_ca_file is set (mutual TLS)")
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        _readable_file(c, name)
    if _str(c, "http_tls") not in ("auto", "on", "off"):
        raise ConfigError("http_tls", c.http_tls, "'auto', 'on' or 'off'")
    if c.http_tls == "on" and not cert:
        raise ConfigError("http_tls", c.http_tls, "'on' only with tls_cert_file and tls_key_file")


def _validate(c: StorageConfig) -> None:
    node_id = _str(c, "node_id")
    if node_id and not is_node_id(node_id):
        raise ConfigError("node_id", node_id, NODE_ID_RULE)
    if not _REGION.match(_str(c, "region")):
        raise ConfigError("region", c.region, "1-64 characters of A-Z a-z 0-9 . _ -")
    day_ms = 86_400_000
    _int_in(c, "gossip_interval_min_ms", 1, day_ms)
    _int_in(c, "gossip_interval_max_ms", 1, day_ms)
    interval = _int_in(c, "gossip_interval_ms", 1, day_ms)
    if not c.gossip_interval_min_ms <= interval <= c.gossip_interval_max_ms:
        raise ConfigError(
            "gossip_interval_ms",
            interval,
            f"a period between gossip_interval_min_ms ({c.gossip_interval_min_ms}) and "
            f"gossip_interval_max_ms ({c.gossip_interval_max_ms})",
        )
    _int_in(c, "anti_entropy_interval_ms", 1, 7 * day_ms)
    _int_in(c, "gossip_fanout", 1, 32)
    if _int_in(c, "max_immediate_neighbors", 2, 256) % 2:
        raise ConfigError("max_immediate_neighbors", c.max_immediate_neighbors, "an even number (half on each side)")
    _int_in(c, "max_long_links", 0, 256)
    _int_in(c, "max_long_links_in", 0, 1024)
    _int_in(c, "route_hop_limit", 1, 1024)
    _int_in(c, "probe_interval_ms", 10, day_ms)
    if not 1 <= _int_in(c, "probe_timeout_ms", 1, day_ms) < c.probe_interval_ms:
        raise ConfigError("probe_timeout_ms", c.probe_timeout_ms, "from 1 to less than probe_interval_ms")
    _int_in(c, "indirect_probes", 0, 16)
    if not c.indirect_probes <= _int_in(c, "indirect_probes_max", 0, 32):
        raise ConfigError("indirect_probes_max", c.indirect_probes_max, "from indirect_probes to 32")
    _int_in(c, "suspicion_mult", 1, 100)
    _int_in(c, "suspicion_max_mult", 1, 100)
    _int_in(c, "retransmit_mult", 1, 100)
    _int_in(c, "max_piggyback", 1, 1024)
    _int_in(c, "max_local_health", 0, 64)
    _int_in(c, "membership_sync_interval_ms", 100, day_ms)
    if not _str(c, "data_dir") or "\x00" in c.data_dir:
        raise ConfigError("data_dir", c.data_dir, "a non-empty directory path without NUL characters")
    url = _str(c, "storage_url")
    if "\x00" in url:
        raise ConfigError("storage_url", url, "a URL without NUL characters")
    if url and not url.startswith(("sqlite:", "postgresql://", "postgres://", "memory:")):
        raise ConfigError("storage_url", url, "empty, sqlite:///path, sqlite:path, postgresql://..., or memory:")
    _address(c, "listen_addr", allow_empty=True)
    _address(c, "advertise_addr", allow_empty=True)
    _address(c, "http_addr")
    for addr in _str(c, "bootstrap").split(","):
        if addr.strip():
            host, sep, port = addr.strip().rpartition(":")
            if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
                raise ConfigError("bootstrap", c.bootstrap, "comma-separated host:port addresses")
    for name in ("cluster_secret", "cluster_secrets_accepted"):
        for secret in _str(c, name).split(","):
            if secret and len(secret.encode("utf-8", "surrogatepass")) < 16:
                raise ConfigError(name, "<hidden>", "secrets of at least 16 bytes")
    if c.cluster_secrets_accepted and not c.cluster_secret:
        raise ConfigError("cluster_secrets_accepted", "<hidden>", "empty unless cluster_secret is set")
    _int_in(c, "join_retry_max_ms", 100, 3_600_000)
    for name in ("new_cluster", "adopt_store", "leave_on_terminate", "tls_require_node_id"):
        if type(getattr(c, name)) is not bool:
            raise ConfigError(name, getattr(c, name), "true or false")
    if c.new_cluster and c.bootstrap_addrs:
        raise ConfigError("new_cluster", True, "false when bootstrap addresses are given (a new cluster joins nobody)")
    _str(c, "http_token")
    _int_in(c, "http_header_timeout_ms", 100, 600_000)
    _int_in(c, "http_body_timeout_ms", 100, 3_600_000)
    _int_in(c, "http_idle_timeout_ms", 100, day_ms)
    _int_in(c, "http_max_connections", 1, 1_000_000)
    _tls(c)
    _int_in(c, "peer_handshake_timeout_ms", 100, 60_000)
    _int_in(c, "peer_handshakes_max", 1, 65_536)
    _int_in(c, "peer_handshakes_per_host_max", 1, 65_536)
    if _str(c, "durability") not in ("process", "fsync"):
        raise ConfigError("durability", c.durability, "'process' or 'fsync'")
    if _str(c, "conflict_resolution") not in ("lww", "siblings"):
        raise ConfigError("conflict_resolution", c.conflict_resolution, "'lww' or 'siblings'")
    levels = ("local", "region_quorum", "quorum", "each_region_quorum", "all")
    for name in ("write_consistency", "read_consistency"):
        if _str(c, name) not in levels:
            raise ConfigError(name, getattr(c, name), "one of " + ", ".join(levels))
    _int_in(c, "consistency_timeout_ms", 1, 600_000)
    if not isinstance(c.regions, dict):
        raise ConfigError("regions", c.regions, "a table per region (region -> {write_consistency, read_consistency})")
    for region, table in c.regions.items():
        if not isinstance(region, str) or not _REGION.match(region):
            raise ConfigError("regions", region, "region names of 1-64 of A-Z a-z 0-9 . _ -")
        if not isinstance(table, dict):
            raise ConfigError(f"regions.{region}", table, "a table with write_consistency and/or read_consistency")
        for name, level in table.items():
            if name not in ("write_consistency", "read_consistency"):
                raise ConfigError(f"regions.{region}.{name}", level, "write_consistency or read_consistency")
            if level not in levels:
                raise ConfigError(f"regions.{region}.{name}", level, "one of " + ", ".join(levels))
    if not isinstance(c.tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in c.tags.items()):
        raise ConfigError("tags", c.tags, "a table of strings (key = value)")
    _int_in(c, "tombstone_grace_ms", 1000, 365 * day_ms)
    if _str(c, "stale_replica") not in ("refuse", "discard"):
        raise ConfigError("stale_replica", c.stale_replica, "'refuse' or 'discard'")
    _int_in(c, "max_key_bytes", 1, 64 * KIB)
    _int_in(c, "max_value_bytes", 0, 64 * MIB)
    _int_in(c, "max_siblings", 1, 1024)
    _int_in(c, "max_context_bytes", 64, 16 * MIB)
    _int_in(c, "reassembly_max_bytes", 16 * MIB, 64 * 1024 * MIB)
    if c.reassembly_max_bytes < c.max_message_bytes:
        raise ConfigError(
            "reassembly_max_bytes", c.reassembly_max_bytes, f"at least max_message_bytes ({c.max_message_bytes})"
        )
    _int_in(c, "max_clock_offset_ms", 1, day_ms)
    _int_in(c, "write_batch_max", 1, 100_000)
    _int_in(c, "write_batch_max_bytes", 64 * KIB, 1024 * MIB)
    _int_in(c, "storage_timeout_ms", 100, day_ms)
    _int_in(c, "write_queue_max", 1, 1_000_000)
