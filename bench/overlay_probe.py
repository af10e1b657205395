"""Probe for issue 3: greedy routing hops on a static small-world ring, before the real overlay exists.

n nodes at random 64-bit ring positions; each keeps `--near` near links (half on each side) and draws
`--long` long links at a ring distance x * 2^64 with x log-uniform in [1/n, 1/2] (the harmonic, 1/x
density of Symphony), linking the node nearest to that point, optionally refusing targets that already
have `--in-cap` incoming long links (then drawing again). Greedy routing forwards to the linked node
closest to the target by ring distance, over forward links only or forward and reverse links.

Usage: python bench/overlay_probe.py [--n 10000] [--near 16] [--long 16] [--in-cap 32] [--pairs 2000]
Findings are in docs/overlay.md. This is a throwaway: the simulator of issue 3 replaces it.
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import statistics

RING = 1 << 64


def ring_distance(a: int, b: int) -> int:
    d = (a - b) % RING
    return min(d, RING - d)


def build(n: int, near: int, long_links: int, in_cap: int, rnd: random.Random) -> tuple[list[int], list[set[int]]]:
    pos = sorted(rnd.getrandbits(64) for _ in range(n))
    out: list[set[int]] = [set() for _ in range(n)]
    indegree = [0] * n
    for i in range(n):
        for j in range(1, near // 2 + 1):
            out[i].add((i + j) % n)
            out[i].add((i - j) % n)
        wanted = len(out[i]) + long_links
        for _ in range(1000):
            if len(out[i]) >= wanted:
                break
            x = math.exp(rnd.uniform(math.log(1 / n), math.log(0.5)))
            point = (pos[i] + (1 if rnd.random() < 0.5 else -1) * int(x * RING)) % RING
            k = bisect.bisect_left(pos, point) % n
            target = min((k, (k - 1) % n), key=lambda c: ring_distance(pos[c], point))
            if target != i and target not in out[i] and indegree[target] < in_cap:
                out[i].add(target)
                indegree[target] += 1
    return pos, out


def route(pos: list[int], table: list[list[int]], source: int, target: int, hop_limit: int = 64) -> int | None:
    current, hops = source, 0
    while current != target:
        best, best_d = current, ring_distance(pos[current], pos[target])
        for neighbor in table[current]:
            d = ring_distance(pos[neighbor], pos[target])
            if d < best_d:
                best, best_d = neighbor, d
        if best == current or hops >= hop_limit:
            return None
        current, hops = best, hops + 1
    return hops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--near", type=int, default=16)
    ap.add_argument("--long", type=int, default=16)
    ap.add_argument("--in-cap", type=int, default=32, help="most incoming long links per node (0: no cap)")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    pos, out = build(a.n, a.near, a.long, a.in_cap or 10**9, rnd)
    forward = [sorted(s) for s in out]
    both_sets = [set(s) for s in out]
    for i, s in enumerate(out):
        for j in s:
            both_sets[j].add(i)
    both = [sorted(s) for s in both_sets]
    pairs = [(rnd.randrange(a.n), rnd.randrange(a.n)) for _ in range(a.pairs)]
    for name, table in (("forward links", forward), ("forward + reverse", both)):
        hops = [route(pos, table, s, t) for s, t in pairs]
        ok = sorted(h for h in hops if h is not None)
        degrees = [len(t) for t in table]
        print(
            f"n={a.n} in-cap={a.in_cap or 'none'} {name:18s} delivered {len(ok) / len(hops):.1%} "
            f"mean {statistics.mean(ok):.2f} p99 {ok[int(0.99 * len(ok))]} max {ok[-1]} "
            f"links/node mean {statistics.mean(degrees):.1f} max {max(degrees)}"
        )


if __name__ == "__main__":
    main()
