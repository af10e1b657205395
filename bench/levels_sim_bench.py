"""Consistency levels on a simulated two-region cluster (issue "Regional consistency ..."): write and read
latency p50 / p99 per level, and cross-region staleness (from a write's acknowledgement in region A until
every node of region B holds it), p50 / p99.

The cluster: `--nodes-a` nodes in region a and `--nodes-b` in region b, one-way latency 1 ms + exponential
jitter of mean 2 ms within a region (mostly 1-5 ms) and 50 ms + jitter of mean 30 ms between the regions
(mostly 50-150 ms), production-default protocol settings, no faults. One client at a time per level, on a
random node of region a, with a fresh key per write (blind), --gap-ms (250) after each acknowledgement, as in
the real-node time-to-all benchmark, and reads of keys already written; latencies are
virtual time (the simulator's clock), so they show the protocol's round trips and nothing of this machine.
300 warm-up writes first: the broadcast tree forms over the first writes.

Reproduce: .venv/bin/python bench/levels_sim_bench.py   (about a minute; bench/results/levels-sim.json)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from common import pct
from dsm.core.consistency import LEVEL_NAMES, Level
from dsm.core.encoding import decode_versions
from dsm.core.messages import DataItem
from dsm.core.versions import Resolution
from dsm.sim.cluster import LevelRequest, Simulation
from dsm.sim.network import Latency, NetworkModel


def build(seed: int, nodes_a: int, nodes_b: int) -> Simulation:
    network = NetworkModel(same_region=Latency(1.0, 2.0), default_cross_region=Latency(50.0, 30.0))
    sim = Simulation(seed, network=network)
    sim.resolution = Resolution.LWW
    for _ in range(nodes_a):
        sim.add_node("a")
    for _ in range(nodes_b):
        sim.add_node("b")
    first = sim.nodes[0]
    sim.join(first, [])
    for node in sim.nodes[1:]:
        sim.join(node, [first])
    sim.run_until(sim.now + 20_000)  # joined, linked, probed
    # Warm-up writes: the broadcast tree forms over the first writes (they flood, later ones travel along
    # the tree), so the first level measured would otherwise pay for it.
    for i in range(300):
        sim.write(sim.nodes[i % len(sim.nodes)], f"warm-{i}", b"w")
        sim.run_until(sim.now + 20)
    sim.run_until(sim.now + 10_000)
    return sim


def measure_level(sim: Simulation, level: Level, ops: int, rng: random.Random, gap_ms: float) -> dict[str, Any]:
    region_a = [n for n in sim.nodes if n.info.region == "a"]
    region_b = {n.index for n in sim.nodes if n.info.region == "b"}
    writes: list[float] = []
    reads: list[float] = []
    failed = {"write": 0, "read": 0}
    staleness: list[float] = []
    pending: dict[tuple[int, str], tuple[float, set[int]]] = {}  # (dot) -> (ack time, b nodes still missing)

    def on_store(index: int, item: DataItem, path: str, hops: int) -> None:
        if index not in region_b or not pending:
            return
        versions = decode_versions(item.versions)
        for version in versions.versions:
            watch = pending.get(tuple(version.dot))  # type: ignore[arg-type]
            if watch is not None and index in watch[1]:
                watch[1].discard(index)
                if not watch[1]:
                    staleness.append(max(0.0, sim.now - watch[0]))
                    del pending[tuple(version.dot)]  # type: ignore[arg-type]

    # Payload copies of the measured writes, by message: every message carrying one (a level's `Replicate`,
    # a tree `Push`, gossip), and those of one write that went from one node to the same member twice.
    copies: Counter[str] = Counter()
    pairs: Counter[tuple[int, int, str]] = Counter()
    measured: set[str] = set()

    def on_send(source: int, target: int, message: Any) -> None:
        for item in getattr(message, "items", ()):
            if isinstance(item, DataItem) and item.key in measured:
                copies[type(message).__name__] += 1
                pairs[(source, target, item.key)] += 1

    sim.store_hooks.append(on_store)
    sim.send_hooks.append(on_send)
    keys: list[str] = []
    for i in range(ops):
        node = rng.choice(region_a)
        key = f"{level.value}-{i}-{rng.getrandbits(32)}"
        started = sim.now
        box: dict[str, Any] = {}

        def done(outcome: str, request: LevelRequest, box: dict[str, Any] = box) -> None:
            box["outcome"], box["at"] = outcome, sim.now

        measured.add(key)
        request = sim.write_at(node, key, b"v" * 100, level, done)
        assert request.item is not None
        dot = tuple(decode_versions(request.item.versions).versions[0].dot)
        missing = {i for i in region_b if sim.nodes[i].data.get(key) is None}
        while "outcome" not in box:
            sim.run_until(sim.now + 1)
        if box["outcome"] == "ok":
            writes.append(box["at"] - started)
            still = {i for i in missing if sim.nodes[i].data.get(key) is None}
            if still:
                pending[dot] = (box["at"], still)  # type: ignore[index]
            else:
                staleness.append(0.0)
            keys.append(key)
        else:
            failed["write"] += 1
        sim.run_until(sim.now + gap_ms)
    for _ in range(ops):
        node = rng.choice(region_a)
        started = sim.now
        box = {}

        def read_done(outcome: str, request: LevelRequest, box: dict[str, Any] = box) -> None:
            box["outcome"], box["at"] = outcome, sim.now

        sim.read_at(node, rng.choice(keys), level, read_done)
        while "outcome" not in box:
            sim.run_until(sim.now + 1)
        if box["outcome"] == "ok":
            reads.append(box["at"] - started)
        else:
            failed["read"] += 1
        sim.run_until(sim.now + 20)
    sim.run_until(sim.now + 10_000)  # the last writes reach region b
    sim.store_hooks.remove(on_store)
    sim.send_hooks.remove(on_send)
    written = max(1, len(measured))

    def dist(samples: list[float]) -> dict[str, float | None]:
        if not samples:
            return {"p50": None, "p99": None, "n": 0}
        return {"p50": round(pct(samples, 50), 1), "p99": round(pct(samples, 99), 1), "n": len(samples)}

    return {
        "level": level.value,
        "write_ms": dist(writes),
        "read_ms": dist(reads),
        "failed": failed,
        "staleness_to_region_b_ms": dist(staleness),
        "never_reached_b": len(pending),
        "payload_copies_per_write": {kind: round(n / written, 2) for kind, n in sorted(copies.items())},
        "payload_twice_to_one_member_per_write": round(sum(1 for n in pairs.values() if n > 1) / written, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes-a", type=int, default=5)
    parser.add_argument("--nodes-b", type=int, default=5)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gap-ms", type=float, default=250.0, help="pause after each acknowledged write")
    parser.add_argument("--json", default="bench/results/levels-sim.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sim = build(args.seed, args.nodes_a, args.nodes_b)
    rows = []
    for name in LEVEL_NAMES:
        row = measure_level(sim, Level(name), args.ops, rng, args.gap_ms)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        "| level | write p50 / p99 ms | read p50 / p99 ms | failed | region b holds the write, p50 / p99 ms "
        "| payload copies per write (by message) | sent twice to one member, per write |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        w, rd, s = r["write_ms"], r["read_ms"], r["staleness_to_region_b_ms"]
        copies = ", ".join(f"{kind} {n}" for kind, n in r["payload_copies_per_write"].items())
        print(
            f"| {r['level']} | {w['p50']} / {w['p99']} | {rd['p50']} / {rd['p99']} | "
            f"{r['failed']['write'] + r['failed']['read']} | {s['p50']} / {s['p99']} | {copies} | "
            f"{r['payload_twice_to_one_member_per_write']} |"
        )
    out = {"command": " ".join(sys.argv), "args": vars(args), "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
