"""Sibling count and causal-context size of one key under concurrent read-then-write clients and churn.

A deterministic (seeded) simulation of the pure core, no network: `M` members each hold a replica
(`VersionSet`, `Resolution.SIBLINGS`, `max_siblings` 1024 so the write-path bound never acts) of one key, and
`C` clients update it. Steps are interleaved at random: each step one random client either reads (if it
has no read pending) or writes. A read takes the client's coordinator's set and its `context()`; the write
that follows is coordinated on that member with that context, exactly as the node does: the member's
integer clock is advanced past its own set and the context (`ts = max(clock, set, context) + 1`) and
`versions.write(...)` makes the new set. Other clients' reads and writes happen between a client's read and
its write, so their writes are concurrent with it. A client's coordinator is sticky; when its member
leaves, the client moves to the member that took the leaver's replica. `--roam P` instead sends a read (and
the write after it) to a random member with probability P, like a client with no session affinity: its
reads may then miss its own last write (not recorded by default; see below).

Replication: after each write the coordinator's whole set is merged into 1 or 2 random other members
(`--push`), and every `--gossip-every` writes two random members exchange whole sets (both end with the
merge), like anti-entropy. Churn: every `--churn-every` writes (0: never) a random member leaves (its set is
first merged into another random member, which takes over its clients) and a member with a fresh id joins:
it takes over one random client, bootstrapping (merging, from empty) the set of that client's coordinator
(`--no-rebalance`: takes no client, bootstraps from a random member). So new members become writers and,
over 1,000,000 updates with the defaults, about a hundred distinct members coordinate writes.

Measured: sibling counts (the coordinator's set after each write, and the largest set on any replica, both
sampled at every write), context entries (every read's context, and the final merge of all replicas), the
encoded context token (`encode_context`, every 100th read and the final one) and encoded version set
(`encode_versions`) sizes, distinct coordinators, wall time.

Checked, against an exact causal history kept beside the vectors (each version's true history is a
per-client vector of write sequence numbers: exact because every client's writes form a chain, which is
checked too):
- `own_write_not_read`: a client read that did not include (or supersede) its own previous write;
- `same_client_siblings`: a replica holding two versions of one client (the sibling bound <= C rests on
  these two being 0: siblings are an antichain and each client's writes are a chain);
- `false_supersessions`: a version dropped (by `write` or a merge) although the writer of every version
  dominating it never saw it (a lost update);
- `false_conflicts`: two versions held side by side although one's writer had seen the other;
- `context_entries_over_writers`: a read context with more entries than members that had coordinated;
- `final_dominated`: a version of the final merge dominated (by vector) by another;
- `final_order_dependent`: 1 if merging all replicas in another order gives another set;
- `final_lost_acks`: a client's last acknowledged write neither present in the final merge of all
  replicas nor truly seen by the writer of one of its versions (and `final_uncovered_acks`: not covered by
  the final merge's context).
All are counts of violations, expected 0. With `--roam` the per-client histories are no longer exact (a
client's writes can fork), so `false_supersessions`, `false_conflicts` and `final_lost_acks` are not
checked (null); the other checks still hold exactly.

Cost: the run time is dominated by the core itself (`VersionSet.of`'s pairwise dominance test through
`VersionVector.get`, a linear scan of contexts that reach ~110 entries with churn); the checks and the
loop add about 10 %. About 3 minutes for the default 1,000,000 updates on the machine of the recorded run
(`us_per_update` and the load average are recorded with each run).

Each invocation adds (or replaces) one entry, named by `--label` (default: from the parameters), in the
JSON file, keeping the others. The recorded results come from:

    .venv/bin/python bench/context_bench.py
    .venv/bin/python bench/context_bench.py --clients 7 --members 3 --updates 200000 --churn-every 0
    .venv/bin/python bench/context_bench.py --clients 7 --members 3 --updates 200000 --churn-every 0 --roam 0.1

(the third shows what the bound rests on: clients without read-your-writes) and a Markdown table of the
run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

from common import pct
from dsm.core.encoding import encode_context, encode_versions
from dsm.core.vclock import VersionVector
from dsm.core.versions import Dot, Resolution, VersionSet, write

RESULTS = Path(__file__).parent / "results"
SIBLINGS = Resolution.SIBLINGS
MAX_SIBLINGS = 1024
KEY = "context-bench"
EMPTY = VersionSet()

Hist = tuple[int, ...]  # a version's true causal history: per client, the last of its writes seen


class Sim:
    def __init__(self, members: int, clients: int, seed: int, roam: float = 0.0) -> None:
        assert members >= 2 and clients >= 1
        self.rng = random.Random(seed)
        self.clients = clients
        self.roam = roam
        # Per-client histories are exact only while every client's writes form a chain (no roaming).
        self.exact = roam == 0
        self.next_member = 0
        self.replicas: dict[str, VersionSet] = {}
        self.clock: dict[str, int] = {}
        for _ in range(members):
            self.replicas[self.new_member_id()] = EMPTY
        self.members = list(self.replicas)
        for m in self.members:
            self.clock[m] = 0
        # Per version (by dot): (client, seq, history). Pruned to the versions still held somewhere.
        self.info: dict[Dot, tuple[int, int, Hist]] = {}
        # Per read state (by its dots): (context, history of the read). Same dots, same versions.
        self.read_cache: dict[tuple[Dot, ...], tuple[VersionVector, Hist]] = {}
        self.coord = [self.rng.choice(self.members) for _ in range(clients)]
        self.pending: list[tuple[VersionVector, Hist] | None] = [None] * clients
        self.seq = [0] * clients
        self.last_ack: list[Dot | None] = [None] * clients
        self.writers: set[str] = set()
        self.violations = dict.fromkeys(
            ("own_write_not_read", "same_client_siblings", "false_supersessions", "false_conflicts"), 0
        )
        self.merges = self.merges_fast = 0

    def new_member_id(self) -> str:
        self.next_member += 1
        return f"m{self.next_member:04d}"

    # -- the exact history checks -------------------------------------------------------------------

    def check_dropped(self, before: VersionSet, after: VersionSet, seen: Hist | None = None) -> None:
        """Every version of `before` missing from `after` was truly seen by a version of `after` (or `seen`)."""
        if not self.exact:
            return
        kept = {v.dot for v in after.versions}
        info = self.info
        for v in before.versions:
            if v.dot in kept:
                continue
            c, s, _ = info[v.dot]
            if seen is not None and seen[c] >= s:
                continue
            if not any(info[w.dot][2][c] >= s for w in after.versions):
                self.violations["false_supersessions"] += 1

    def check_set(self, state: VersionSet) -> None:
        """One version per client, and no version truly seen by another's writer."""
        if len(state.versions) < 2:
            return
        infos = [self.info[v.dot] for v in state.versions]
        if len({c for c, _, _ in infos}) != len(infos):
            self.violations["same_client_siblings"] += 1
        if not self.exact:
            return
        for c, s, _ in infos:
            if any(h[c] >= s for c2, _, h in infos if c2 != c):
                self.violations["false_conflicts"] += 1

    def merge(self, a: VersionSet, b: VersionSet) -> VersionSet:
        """`a.merge(b)`, checked; shortcut (exact: one dot, one version) when one side's dots hold the other's."""
        self.merges += 1
        if a is b or not b.versions:
            self.merges_fast += 1
            return a
        da = {v.dot for v in a.versions}
        db = {v.dot for v in b.versions}
        if db <= da:
            self.merges_fast += 1
            return a
        if da <= db:
            self.merges_fast += 1
            return b
        out = a.merge(b, SIBLINGS)
        self.check_dropped(a, out)
        self.check_dropped(b, out)
        self.check_set(out)
        return out

    # -- client operations --------------------------------------------------------------------------

    def read(self, client: int) -> int:
        if self.roam and self.rng.random() < self.roam:
            self.coord[client] = self.rng.choice(self.members)
        state = self.replicas[self.coord[client]]
        dots = tuple(v.dot for v in state.versions)
        got = self.read_cache.get(dots)
        if got is None:
            hist = [0] * self.clients
            for v in state.versions:
                c, s, h = self.info[v.dot]
                for i, x in enumerate(h):
                    if x > hist[i]:
                        hist[i] = x
                if s > hist[c]:
                    hist[c] = s
            got = (state.context(), tuple(hist))
            if len(self.read_cache) > 4096:
                self.read_cache.clear()
            self.read_cache[dots] = got
        if got[1][client] < self.seq[client]:
            self.violations["own_write_not_read"] += 1
        self.pending[client] = got
        return len(got[0])

    def write(self, client: int) -> VersionSet:
        pending = self.pending[client]
        assert pending is not None
        self.pending[client] = None
        context, seen = pending
        member = self.coord[client]
        current = self.replicas[member]
        ts = max(self.clock[member], current.max_timestamp, context.max_timestamp()) + 1
        self.clock[member] = ts
        self.seq[client] += 1
        dot = Dot(ts, member)
        self.info[dot] = (client, self.seq[client], seen)
        new = write(current, dot, context, b"c%d:%d" % (client, self.seq[client]), SIBLINGS, MAX_SIBLINGS)
        self.check_dropped(current, new, seen)
        self.check_set(new)
        self.replicas[member] = new
        self.last_ack[client] = dot
        self.writers.add(member)
        return new

    # -- replication and churn ----------------------------------------------------------------------

    def push(self, source: str, state: VersionSet, fanout: int) -> None:
        for target in self.rng.sample(self.members, fanout + 1):
            if target != source and fanout > 0:
                self.replicas[target] = self.merge(self.replicas[target], state)
                fanout -= 1

    def gossip(self) -> None:
        x, y = self.rng.sample(self.members, 2)
        both = self.merge(self.replicas[x], self.replicas[y])
        self.replicas[x] = self.replicas[y] = both

    def churn(self, rebalance: bool) -> None:
        leaver = self.rng.choice(self.members)
        self.members.remove(leaver)
        heir = self.rng.choice(self.members)
        self.replicas[heir] = self.merge(self.replicas[heir], self.replicas.pop(leaver))
        del self.clock[leaver]
        self.coord = [heir if c == leaver else c for c in self.coord]
        joiner = self.new_member_id()
        if rebalance:
            # The joiner takes over one client, bootstrapping from that client's coordinator.
            client = self.rng.randrange(self.clients)
            source = self.coord[client]
            self.coord[client] = joiner
        else:
            source = self.rng.choice(self.members)
        self.replicas[joiner] = self.merge(EMPTY, self.replicas[source])
        self.clock[joiner] = 0
        self.members.append(joiner)

    def gc(self) -> None:
        held = {v.dot for s in self.replicas.values() for v in s.versions}
        self.info = {d: i for d, i in self.info.items() if d in held}

    # -- the final merge ----------------------------------------------------------------------------

    def final(self) -> tuple[VersionSet, dict[str, int]]:
        states = list(self.replicas.values())
        merged = EMPTY
        for s in states:
            merged = self.merge(merged, s)
        shuffled = states[:]
        self.rng.shuffle(shuffled)
        again = EMPTY
        for s in shuffled:
            again = again.merge(s, SIBLINGS)
        checks = dict.fromkeys(("final_dominated", "final_lost_acks", "final_uncovered_acks"), 0)
        checks["final_order_dependent"] = int(again != merged)
        for v in merged.versions:
            if any(v.dominated_by(w) for w in merged.versions if w is not v):
                checks["final_dominated"] += 1
        held = {v.dot: v for v in merged.versions}
        ctx = merged.context()
        for client, dot in enumerate(self.last_ack):
            if dot is None or dot in held:
                continue
            if self.exact and not any(self.info[w.dot][2][client] >= self.seq[client] for w in merged.versions):
                checks["final_lost_acks"] += 1
            if not ctx.covers(dot.timestamp, dot.node):
                checks["final_uncovered_acks"] += 1
        return merged, checks


def run(args: argparse.Namespace) -> dict[str, Any]:
    sim = Sim(args.members, args.clients, args.seed, args.roam)
    rng = sim.rng
    coordinator_siblings: list[int] = []
    replica_max_siblings: list[int] = []
    context_entries: list[int] = []
    context_token_max = 0
    context_over_writers = 0
    reads = writes = leaves = 0
    started = time.perf_counter()
    replicas = sim.replicas
    while writes < args.updates:
        client = rng.randrange(args.clients)
        if sim.pending[client] is None:
            entries = sim.read(client)
            reads += 1
            context_entries.append(entries)
            if entries > len(sim.writers):
                context_over_writers += 1
            if reads % 100 == 0:
                token = encode_context(sim.pending[client][0], KEY)  # type: ignore[index]
                context_token_max = max(context_token_max, len(token))
            continue
        new = sim.write(client)
        writes += 1
        sim.push(sim.coord[client], new, rng.randint(1, args.push))
        coordinator_siblings.append(len(new.live))
        replica_max_siblings.append(max(map(len, replicas.values())))
        if args.gossip_every and writes % args.gossip_every == 0:
            sim.gossip()
        if args.churn_every and writes % args.churn_every == 0:
            sim.churn(args.rebalance)
            leaves += 1
        if writes % 50_000 == 0:
            sim.gc()
    merged, final_checks = sim.final()
    wall = time.perf_counter() - started
    final_context = merged.context()
    departed = [node for node, _ in final_context.entries if node not in sim.replicas]
    checks: dict[str, int | None] = {**sim.violations, **final_checks}
    if not sim.exact:
        for name in ("false_supersessions", "false_conflicts", "final_lost_acks"):
            checks[name] = None
    return {
        "updates": writes,
        "reads": reads,
        "members": args.members,
        "clients": args.clients,
        "churn_every": args.churn_every,
        "leaves": leaves,
        "joins": leaves,
        "push_fanout_max": args.push,
        "gossip_every": args.gossip_every,
        "rebalance": args.rebalance,
        "roam": args.roam,
        "exact_history_checks": sim.exact,
        "seed": args.seed,
        "members_ever": sim.next_member,
        "distinct_writers": len(sim.writers),
        "siblings_after_write_p50": pct(coordinator_siblings, 50),
        "siblings_after_write_p99": pct(coordinator_siblings, 99),
        "siblings_after_write_max": max(coordinator_siblings),
        "siblings_any_replica_p50": pct(replica_max_siblings, 50),
        "siblings_any_replica_p99": pct(replica_max_siblings, 99),
        "siblings_any_replica_max": max(replica_max_siblings),
        "siblings_bound_ok": max(replica_max_siblings) <= args.clients,
        "writes_reaching_bound": sum(1 for n in coordinator_siblings if n == args.clients),
        "final_siblings": len(merged),
        "context_entries_p50": pct(context_entries, 50),
        "context_entries_p99": pct(context_entries, 99),
        "context_entries_max": max(context_entries),
        "context_entries_over_writers": context_over_writers,
        "final_context_entries": len(final_context),
        "final_context_entries_departed": len(departed),
        "final_context_token_bytes": len(encode_context(final_context, KEY)),
        "context_token_bytes_max_sampled": context_token_max,
        "final_versions_bytes": len(encode_versions(merged)),
        "merges": sim.merges,
        "merges_shortcut": sim.merges_fast,
        **checks,
        "wall_s": round(wall, 1),
        "us_per_update": round(wall / max(writes, 1) * 1e6, 1),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def label_of(args: argparse.Namespace) -> str:
    churn = f"churn{args.churn_every}" if args.churn_every else "nochurn"
    extra = ("" if args.rebalance else "-norebalance") + (f"-roam{args.roam}" if args.roam else "")
    return f"m{args.members}-c{args.clients}-u{args.updates}-{churn}{extra}-seed{args.seed}"


VIOLATIONS = (
    "own_write_not_read",
    "same_client_siblings",
    "false_supersessions",
    "false_conflicts",
    "final_dominated",
    "final_lost_acks",
    "final_uncovered_acks",
    "final_order_dependent",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=1_000_000)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--clients", type=int, default=7)
    ap.add_argument("--churn-every", type=int, default=10_000, help="writes between leave+join (0: no churn)")
    ap.add_argument("--push", type=int, default=2, help="after a write, push to 1..PUSH random members")
    ap.add_argument("--gossip-every", type=int, default=10, help="writes between pairwise exchanges (0: none)")
    ap.add_argument(
        "--rebalance", action=argparse.BooleanOptionalAction, default=True,
        help="each joining member takes over one random client (bootstrapping from its coordinator)",
    )  # fmt: skip
    ap.add_argument(
        "--roam", type=float, default=0.0,
        help="probability that a client reads (and then writes) at a random member instead of its own; "
        "> 0 breaks read-your-writes, and the exact-history checks are then skipped (reported as null)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label", default=None, help="the entry's name in the JSON file (default: from parameters)")
    ap.add_argument("--json", default=str(RESULTS / "context.json"))
    args = ap.parse_args()
    label = args.label or label_of(args)
    result = run(args)
    path = Path(args.json)
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    doc[label] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    r = result
    print(f"\n{label} ({r['wall_s']} s)\n")
    print("| measure | value |")
    print("| --- | --- |")
    rows = [
        ("updates (writes) / reads", f"{r['updates']:,} / {r['reads']:,}"),
        ("members (ever) / leaves / joins", f"{r['members']} ({r['members_ever']}) / {r['leaves']} / {r['joins']}"),
        ("concurrent clients (the bound)", r["clients"]),
        (
            "siblings after a write p50 / p99 / max",
            f"{r['siblings_after_write_p50']} / {r['siblings_after_write_p99']} / {r['siblings_after_write_max']}",
        ),
        (
            "largest replica set p50 / p99 / max",
            f"{r['siblings_any_replica_p50']} / {r['siblings_any_replica_p99']} / {r['siblings_any_replica_max']}",
        ),
        ("writes leaving exactly C siblings", f"{r['writes_reaching_bound']:,}"),
        ("distinct writers (coordinators)", r["distinct_writers"]),
        (
            "read context entries p50 / p99 / max",
            f"{r['context_entries_p50']} / {r['context_entries_p99']} / {r['context_entries_max']}",
        ),
        (
            "final context entries (of departed members)",
            f"{r['final_context_entries']} ({r['final_context_entries_departed']})",
        ),
        ("final context token bytes", r["final_context_token_bytes"]),
        ("final version set bytes", f"{r['final_versions_bytes']} ({r['final_siblings']} versions)"),
        (
            "violations (all checks; null: not checked)",
            ", ".join(f"{k} {r[k]}" for k in (*VIOLATIONS, "context_entries_over_writers") if r[k] is None or r[k])
            or "none",
        ),
        ("wall time (s)", r["wall_s"]),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
