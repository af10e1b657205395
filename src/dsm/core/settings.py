"""`PeerSettings`: the protocol's knobs as the core reads them, named as in `StorageConfig`.

Owns the one list of knobs the parts of a node's core (membership, probing, links, routing, dissemination,
anti-entropy) read. Every field has the name of its `StorageConfig` field (config.py documents each one),
so `from_config` copies the fields the two share by name, whatever the config holds; the knobs the config
does not offer keep their defaults here. Keeps true: one name per knob from the config down to the core,
and `max_long_links_in` is never 0 here (the config's 0 means "twice max_long_links").
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class PeerSettings:
    """The protocol's knobs, taken from `StorageConfig` by `from_config` (see config.py for each one)."""

    probe_interval_ms: int = 1000
    probe_timeout_ms: int = 500
    indirect_probes: int = 3
    indirect_probes_max: int = 8
    suspicion_mult: int = 4
    suspicion_max_mult: int = 6
    retransmit_mult: int = 4
    max_piggyback: int = 32
    max_local_health: int = 8
    max_immediate_neighbors: int = 16
    max_long_links: int = 16
    max_long_links_in: int = 32
    route_hop_limit: int = 64
    join_timeout_ms: int = 2000
    join_retry_max_ms: int = 30000
    membership_sync_interval_ms: int = 10000
    # Dissemination of writes (dissemination.py).
    gossip_interval_ms: int = 5000
    gossip_interval_min_ms: int = 200
    gossip_interval_max_ms: int = 30000
    gossip_fanout: int = 3
    gossip_adaptive: bool = True
    gossip_retain_mult: int = 3
    direct_updates: bool = True
    lazy_fanout: int = 3
    direct_push_max: int = 8
    announce_delay_ms: int = 0
    graft_timeout_ms: int = 250
    graft_min_ms: int = 20
    max_recent: int = 8192
    max_digest_ids: int = 4096
    seen_max: int = 65536
    anti_entropy_interval_ms: int = 60000
    anti_entropy_max_bytes: int = 1 << 20
    anti_entropy_busy_writes: int = 1000

    @classmethod
    def from_config(cls, config: Any) -> PeerSettings:
        """The settings of `config` (a `StorageConfig`): every field of the same name is copied, the others
        keep their defaults; `max_long_links_in` 0 becomes twice `max_long_links`."""
        values = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        if not values.get("max_long_links_in", cls.max_long_links_in):
            values["max_long_links_in"] = 2 * values.get("max_long_links", cls.max_long_links)
        return cls(**values)


__all__ = ["PeerSettings"]
