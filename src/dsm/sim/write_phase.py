"""The write and dissemination measurements of the standard run, and the replicas' convergence check.

`WritePhase` makes the run's writes through the simulated nodes (the product's write path) and times how
they spread with a `WriteTracker`: `writes` urgent writes one at a time (each waited for; with gossip
alone, overlapping), then a burst of `bulk` non-urgent ones, then idle time to measure the adaptive gossip
period's quiet traffic (see docs/sim.md). Every write it makes is kept in `acknowledged`, so that after
the faults stop `replicas_converged` can check that every live replica is identical and holds each of
them: an acknowledged write missing from every replica fails the run.
"""

from __future__ import annotations

import statistics
from typing import Any

from dsm.core.encoding import decode_versions
from dsm.core.messages import DataItem
from dsm.sim.cluster import SimNode
from dsm.sim.stage import Stage, pct
from dsm.sim.writes import Track, WriteTracker

#: The value of every simulated write (100 bytes, a typical small record).
VALUE = bytes(range(100))


class WritePhase:
    """Writes, bulk writes and the idle window; `tracker` is None when the run makes no writes."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        p = stage.p
        self.tracker = WriteTracker(stage.sim) if p.writes or p.bulk else None
        self.acknowledged: list[DataItem] = []

    def write(self, node: SimNode, key: str, urgent: bool = True) -> Track:
        """Writes VALUE under `key` at `node` and starts tracking its spread (the run must make writes)."""
        tracker = self.tracker
        assert tracker is not None
        tracks: list[Track] = []
        item = self.stage.sim.write(node, key, VALUE, urgent, lambda it: tracks.append(tracker.watch(it, node.index)))
        self.acknowledged.append(item)
        return tracks[0]

    def _await(self, tracks: list[Track], phase: str, step: float, deadline: float) -> None:
        """Runs until every up node holds every write in `tracks`, or `deadline`."""
        sim = self.stage.sim
        while sim.now < deadline:
            up = sum(1 for n in sim.nodes if n.up)
            if all(len(t.holders) >= up for t in tracks):
                break
            self.stage.run(phase, min(deadline, sim.now + step))

    def measure(self) -> dict[str, Any]:
        """Writes one at a time (each waited for; with gossip alone, overlapping), then a burst of non-urgent
        ones, then idle time; returns the write figures (empty without writes)."""
        if self.tracker is None:
            return {}
        up = len(self.stage.sim.up_nodes())
        out: dict[str, Any] = {}
        singles = self._singles(self.tracker)
        if singles:
            out.update(self.figures(singles, up, "writes"))
        if self.stage.p.bulk:
            out.update(self._bulk(self.tracker, up))
        if self.stage.p.idle:
            out.update(self._idle(self.tracker, up))
        return out

    def _singles(self, tracker: WriteTracker) -> list[Track]:
        stage, sim, R = self.stage, self.stage.sim, self.stage.R
        p = stage.p
        singles: list[Track] = []
        if not p.settings.direct_updates:
            # Gossip alone takes several periods per write: the writes overlap, one every fifth of a period
            # from random nodes (each timed from its own start; a digest then lists a few ids, not one).
            for i in range(p.writes):
                singles.append(self.write(stage.random_up(1)[0], f"w{i}"))
                stage.run("writes", sim.now + R / 5)
            self._await(singles, "writes", R / 20, sim.now + 30 * R)
            stage.run("writes", sim.now + R)
            for track in singles:
                tracker.forget(track)
            return singles
        tail = 2 * p.settings.graft_timeout_ms
        for i in range(p.writes):
            track = self.write(stage.random_up(1)[0], f"w{i}")
            self._await([track], "writes", 10.0, sim.now + 6 * R)
            stage.run("writes", sim.now + tail)
            tracker.forget(track)
            singles.append(track)
        return singles

    def _bulk(self, tracker: WriteTracker, up: int) -> dict[str, Any]:
        stage, sim, R = self.stage, self.stage.sim, self.stage.R
        tracker.counting = True
        tracker.window_messages = tracker.window_bytes = 0
        start = sim.now
        bulk = [self.write(stage.random_up(1)[0], f"b{i}", urgent=False) for i in range(stage.p.bulk)]
        self._await(bulk, "bulk", R / 20, sim.now + 30 * R)
        done = sim.now
        stage.run("bulk", sim.now + R)
        for track in bulk:
            tracker.forget(track)
        out = self.figures(bulk, up, "bulk")
        out["bulk_time_to_all_ms"] = round(done - start, 1)
        stage.run("after burst", sim.now + R)
        out["after_burst_bytes_per_node_per_s"] = round(tracker.window_bytes / up / ((sim.now - start) / 1000), 1)
        return out

    def _idle(self, tracker: WriteTracker, up: int) -> dict[str, Any]:
        """Lets the adaptive period stretch, then measures a quiet minute of data traffic."""
        stage, sim, R = self.stage, self.stage.sim, self.stage.R
        stage.run("idle", sim.now + 20 * R)
        tracker.counting = True
        tracker.window_messages = tracker.window_bytes = 0
        start = sim.now
        stage.run("idle", sim.now + 12 * R)
        seconds = (sim.now - start) / 1000
        tracker.counting = False
        periods = [n.peer.data.period for n in sim.nodes if n.up and n.peer is not None]
        return {
            "idle_bytes_per_node_per_s": round(tracker.window_bytes / up / seconds, 2),
            "idle_messages_per_node_per_s": round(tracker.window_messages / up / seconds, 4),
            "idle_gossip_period_ms": {"p50": pct(periods, 0.5), "min": min(periods), "max": max(periods)},
        }

    def figures(self, tracks: list[Track], population: int, name: str) -> dict[str, Any]:
        """The spread figures of `tracks` ("writes" or "bulk", whose keys get the `bulk_` prefix)."""
        n1 = max(1, population - 1)
        times = [t.time_to_fraction(1.0, population) for t in tracks]
        done = [x for x in times if x is not None]
        copies = [t.payload_copies / n1 for t in tracks]
        steady = copies[len(copies) // 4 :] if len(copies) >= 4 else copies
        prefix = "" if name == "writes" else "bulk_"
        figures: dict[str, Any] = {
            f"{prefix}time_to_all_ms": {
                "p50": pct(done, 0.5) if done else None,
                "p99": pct(done, 0.99) if done else None,
                "max": max(done) if done else None,
                "reached_all": len(done) / len(tracks),
                "writes": len(tracks),
            },
            f"{prefix}payload_copies_per_update": {
                "first": round(copies[0], 3),
                "mean": round(statistics.mean(copies), 3),
                "steady_mean": round(statistics.mean(steady), 3),
                "steady_max": round(max(steady), 3),
                "unit": "n - 1",
            },
            f"{prefix}messages_per_update": {
                "mean": round(statistics.mean(t.messages for t in tracks), 1),
                "steady_mean": round(statistics.mean(t.messages for t in tracks[len(tracks) // 4 :]), 1),
            },
            f"{prefix}bytes_per_update": {
                "mean": round(statistics.mean(t.bytes for t in tracks), 1),
                "steady_mean": round(statistics.mean(t.bytes for t in tracks[len(tracks) // 4 :]), 1),
            },
        }
        if name == "writes":
            figures.update(self._single_figures(tracks, done, population))
        return figures

    def _single_figures(self, tracks: list[Track], done: list[float], population: int) -> dict[str, Any]:
        """The figures only the one-at-a-time writes report: rounds, hops and the first writes' curves."""
        rounds = [x / self.stage.R for x in done]
        hops = [max(h for _, _, h in t.holders.values()) for t in tracks]
        return {
            "rounds_to_all": {
                "p50": round(pct(rounds, 0.5), 2) if rounds else None,
                "p99": round(pct(rounds, 0.99), 2) if rounds else None,
                "max": round(max(rounds), 2) if rounds else None,
                "samples": [round(r, 3) for r in rounds],
            },
            "delivery_hops": {"p50": pct(hops, 0.5), "max": max(hops)},
            "write_curves": {
                "population": population,
                "curves": [
                    sorted(round(t - track.start_ms, 1) for t, _, _ in track.holders.values()) for track in tracks[:8]
                ],
            },
        }

    def replicas_converged(self, bound: float) -> float | None:
        """Waits (up to `bound`) until every up replica is identical and holds every acknowledged write;
        returns the wait, or raises CheckFailed when an acknowledged write is lost for good."""
        stage, sim = self.stage, self.stage.sim
        start = sim.now
        while True:
            up = [n for n in sim.nodes if n.up]
            reference = up[0].data
            if all(n.data == reference for n in up):
                for item in self.acknowledged:
                    held = reference.get(item.key)
                    winner = decode_versions(held).winner if held is not None else None
                    mine = decode_versions(item.versions).winner
                    assert mine is not None
                    if winner is None or winner.dot < mine.dot:
                        raise stage.checkers.fail(f"acknowledged write of {item.key!r} lost on every replica")
                return sim.now - start
            if sim.now - start >= bound:
                differ = sum(1 for n in up if n.data != reference)
                raise stage.checkers.fail(f"replicas still differ {bound:.0f} ms after faults stopped ({differ} nodes)")
            stage.run("converge", sim.now + stage.T)
