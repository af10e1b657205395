"""Measuring how writes spread in a simulation: who holds each write when, and what it cost.

`WriteTracker` hangs off a `Simulation`'s store and send hooks. For every tracked write it records when
(and by which path, after how many hops) each node stored it, and charges it the data messages that carry
it: payload copies (the write's bytes sent in a `Push`, `DirectPush`, `GossipReply`, `GossipItems` or anti-entropy
`Reconcile`), messages and bytes (a message carrying k writes charges each tracked one 1/k of itself;
bytes are the msgpack encoding plus a 4-byte frame header, what the wire codec will send). While
`counting` is set, all data messages are also counted (the idle and after-burst windows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

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
    Reconcile,
)
from dsm.sim.cluster import Simulation

FRAME_HEADER = 4
DATA_TYPES = (Push, DirectPush, IHave, Graft, Prune, GossipDigest, GossipReply, GossipItems, Reconcile)


def wire_size(message: Any) -> int:
    """Bytes of `message` on the wire: its msgpack encoding and a frame header."""
    return len(msgpack.packb(message)) + FRAME_HEADER


@dataclass
class Track:
    """One write being watched."""

    item: DataItem
    start_ms: float
    holders: dict[int, tuple[float, str, int]] = field(default_factory=dict)
    payload_copies: int = 0
    messages: float = 0.0
    bytes: float = 0.0

    def time_to_fraction(self, fraction: float, population: int) -> float | None:
        """Time from the write until `fraction` of `population` nodes held it (None if not reached)."""
        need = max(1, -(-int(fraction * population * 1000) // 1000))
        if len(self.holders) < need:
            return None
        times = sorted(t for t, _, _ in self.holders.values())
        return times[need - 1] - self.start_ms


class WriteTracker:
    """See the module docstring."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.active: dict[int, Track] = {}
        self.by_key: dict[str, Track] = {}
        # All data messages and their bytes, counted while `counting` is set (idle-cost windows).
        self.counting = False
        self.window_messages = 0
        self.window_bytes = 0
        sim.store_hooks.append(self._on_store)
        sim.send_hooks.append(self._on_send)

    def watch(self, item: DataItem, node_index: int) -> Track:
        track = Track(item, self.sim.now)
        track.holders[node_index] = (self.sim.now, "write", 0)
        self.active[item.id] = track
        self.by_key[item.key] = track
        return track

    def forget(self, track: Track) -> None:
        self.active.pop(track.item.id, None)
        self.by_key.pop(track.item.key, None)

    def _on_store(self, index: int, item: DataItem, path: str, hops: int) -> None:
        # Anti-entropy entries carry no write id: matched by key (every tracked write has its own key).
        track = self.active.get(item.id) if item.id else self.by_key.get(item.key)
        if track is not None and index not in track.holders:
            track.holders[index] = (self.sim.now, path, hops)

    def _on_send(self, source: int, target: int, message: Any) -> None:
        kind = type(message)
        if kind not in DATA_TYPES:
            return
        size = wire_size(message) if self.counting else -1  # computed at most once, and only if needed
        if self.counting:
            self.window_messages += 1
            self.window_bytes += size
        active = self.active
        if kind is Reconcile:
            # Anti-entropy entries are payload copies of the writes whose keys they carry.
            by_key = self.by_key
            carried = [by_key[key] for key, _ in message.entries if key in by_key]
            if carried:
                size = size if size >= 0 else wire_size(message)
                share = 1 / len(message.entries)
                for track in carried:
                    track.payload_copies += 1
                    track.messages += share
                    track.bytes += size * share
            return
        if kind is Prune:
            if active:
                size = size if size >= 0 else wire_size(message)
                for track in active.values():
                    track.messages += 1 / len(active)
                    track.bytes += size / len(active)
            return
        if kind is Push or kind is DirectPush or kind is GossipItems:
            ids = [item.id for item in message.items]
        elif kind is GossipReply:
            ids = [*message.want, *(item.id for item in message.items)]
        elif kind is GossipDigest:
            ids = [*message.ids, *message.fresh]
        else:
            ids = list(message.ids)
        hit = [active[i] for i in ids if i in active] if active else []
        if not hit:
            return
        size = size if size >= 0 else wire_size(message)
        share = 1 / len(ids)
        for track in hit:
            track.messages += share
            track.bytes += size * share
        if kind is not GossipDigest and kind is not IHave and kind is not Graft:
            for item in message.items:
                track_of = active.get(item.id)
                if track_of is not None:
                    track_of.payload_copies += 1
