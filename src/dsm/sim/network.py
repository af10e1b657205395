"""The simulated network: latency per pair of regions, loss, duplication, reordering and partitions.

All randomness comes from the simulation's seeded RNG, so a seed fixes every delay and every drop.
Reordering is not a separate knob: each copy of a message gets its own delay (a base per pair of regions
plus an exponentially distributed jitter), so messages overtake each other as they would on a real network.
A partition is a set of nodes cut off from the rest between a start and an end time; messages crossing the
cut in either direction are dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Latency:
    """One-way delay: `base_ms` plus exponential jitter of mean `jitter_ms`."""

    base_ms: float
    jitter_ms: float


@dataclass
class Partition:
    """Nodes in `group` cannot exchange messages with nodes outside it during [start_ms, end_ms)."""

    group: frozenset[int]
    start_ms: float
    end_ms: float


@dataclass
class NetworkModel:
    """Delays, faults and partitions of the simulated network."""

    same_region: Latency = field(default_factory=lambda: Latency(1.0, 1.0))
    cross_region: dict[tuple[str, str], Latency] = field(default_factory=dict)
    default_cross_region: Latency = field(default_factory=lambda: Latency(40.0, 10.0))
    loss: float = 0.0
    duplicate: float = 0.0
    partitions: list[Partition] = field(default_factory=list)

    def latency(self, source_region: str, target_region: str) -> Latency:
        if source_region == target_region:
            return self.same_region
        pair = self.cross_region.get((source_region, target_region)) or self.cross_region.get(
            (target_region, source_region)
        )
        return pair or self.default_cross_region

    def cut(self, source: int, target: int, now: float) -> bool:
        """Whether a partition separates the two nodes at `now`."""
        return any(p.start_ms <= now < p.end_ms and (source in p.group) != (target in p.group) for p in self.partitions)

    def delays(self, rng: random.Random, source_region: str, target_region: str) -> list[float]:
        """Delays of the copies of one message that arrive: none if lost, two if duplicated."""
        if self.loss and rng.random() < self.loss:
            return []
        lat = self.latency(source_region, target_region)
        first = lat.base_ms + rng.expovariate(1.0 / lat.jitter_ms) if lat.jitter_ms > 0 else lat.base_ms
        if self.duplicate and rng.random() < self.duplicate:
            return [first, lat.base_ms + rng.expovariate(1.0 / max(lat.jitter_ms, 0.001))]
        return [first]
