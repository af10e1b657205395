"""Helpers shared by the benchmarks: percentiles and the per-operation summary they all report."""

from __future__ import annotations


def pct(samples: list[float], p: float) -> float:
    """The p-th percentile of `samples` (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(op: str, rate_per_s: float, latencies_s: list[float]) -> dict[str, float]:
    """`{op}_per_s`, `{op}_p50_us` and `{op}_p99_us` of one measured operation."""
    return {
        f"{op}_per_s": rate_per_s,
        f"{op}_p50_us": pct(latencies_s, 50) * 1e6,
        f"{op}_p99_us": pct(latencies_s, 99) * 1e6,
    }
