"""Time `dsm.sim.linearizability.check` on a random linearizable single-key history of concurrent clients.

Each client runs operations back to back (a random duration, a random think time between them); each
operation takes effect at a random point inside its interval, and the results are what a register answers in
the order of those points, so the history is linearizable by construction. The mix: reads 40 %, writes 20 %,
cas 30 % (expecting the current value half the time, so about half succeed), deletes 10 % (half of them
conditional). With `--pending F`, a fraction F of the writes, cas and deletes lose their answer (they took
effect, the client never heard). Every write and cas writes a distinct value. A last run mutates one read to
a value never written and checks that the checker reports the violation (and how long that takes).

    python bench/linearizability_bench.py --ops 1000 --clients 8 --seeds 1 2 3 --pending 0.02
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from dsm.sim.linearizability import Operation, OpKind, Verdict, check


def history(ops: int, clients: int, pending: float, rng: random.Random) -> list[Operation]:
    """A linearizable history of `ops` operations on one key by `clients` concurrent clients."""
    intervals: list[tuple[int, int, str]] = []
    for c in range(clients):
        now = rng.randrange(10)
        for _ in range(ops // clients + (1 if c < ops % clients else 0)):
            start = now
            now += rng.randrange(1, 40)
            intervals.append((start, now, f"c{c}"))
            now += rng.randrange(5)
    points = [(rng.randrange(start, end + 1), start, end, client) for start, end, client in intervals]
    points.sort()
    state: bytes | None = None
    written: list[bytes] = []
    out: list[Operation] = []
    for i, (_, start, end, client) in enumerate(points):
        roll = rng.random()
        if roll < 0.4:
            observed = () if state is None else (state,)
            out.append(Operation(i, client, "k", OpKind.READ, start, end, observed=observed))
            continue
        lost = rng.random() < pending
        complete = None if lost else end
        if roll < 0.6 or (roll >= 0.9 and rng.random() < 0.5):
            value = None if roll >= 0.9 else f"v{i}".encode()
            out.append(
                Operation(i, client, "k", OpKind.DELETE if value is None else OpKind.WRITE, start, complete, value)
            )
            state = value
            if value is not None:
                written.append(value)
            continue
        expected = state if rng.random() < 0.5 else rng.choice([None, *written[-3:]])
        value = None if roll >= 0.9 else f"v{i}".encode()
        holds = state == expected
        if lost and not holds:
            continue  # a lost answer to a refused request is the same as no request
        kind = OpKind.DELETE if value is None else OpKind.CAS
        out.append(Operation(i, client, "k", kind, start, complete, value, True, expected, ok=holds))
        if holds:
            state = value
            if value is not None:
                written.append(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--pending", type=float, default=0.0, help="fraction of writes whose answer is lost")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    print("| seed | ops | pending | verdict | steps | check s | mutated verdict | mutated steps | mutated s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        rng = random.Random(seed)
        ops = history(args.ops, args.clients, args.pending, rng)
        t0 = time.perf_counter()
        result = check(ops, max_steps=None)
        elapsed = time.perf_counter() - t0
        assert result.verdict == Verdict.OK, result.summary()
        reads = [i for i, op in enumerate(ops) if op.kind == OpKind.READ]
        victim = reads[len(reads) // 2]
        mutated = [*ops]
        mutated[victim] = replace(ops[victim], observed=(b"never written",))
        t0 = time.perf_counter()
        bad = check(mutated, max_steps=None)
        bad_elapsed = time.perf_counter() - t0
        assert bad.verdict == Verdict.VIOLATION, bad.summary()
        pending = sum(1 for op in ops if op.pending)
        print(
            f"| {seed} | {len(ops)} | {pending} | {result.verdict} | {result.results[0].steps} | {elapsed:.3f} "
            f"| {bad.verdict} | {bad.results[0].steps} | {bad_elapsed:.3f} |"
        )


if __name__ == "__main__":
    main()
