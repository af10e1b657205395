"""The standard simulation run behind `dsm sim`: one seeded scenario that measures the overlay's claims.

Phases, on virtual time (T = probe_interval_ms, the failure detector's protocol period; R =
gossip_interval_ms, a gossip round):
1. *Form* a cluster of `nodes` members (everyone knows everyone; long links are then requested for real).
   Warm up for 5 T.
2. *Route* `pairs` random pairs greedily: `routing_hops`.
3. *Join* `joins` new members one at a time, each given a window of 2 R: `join_messages` (overlay messages
   to or from the joiner), `links_changed_per_join` (distinct members whose link tables changed during the
   window: an upper bound on what the join caused), `join_settle_ms` (the last link change in the window),
   and how far the join's news spread by piggybacking. Then `leaves` random members leave (announced), one
   at a time, each given a window of 2 R: `leave_messages` (every overlay message sent in the window, by
   anyone), `links_changed_per_leave`, `leave_settle_ms`, `leave_spread`.
4. Mark `slow` of the members slow (from here to the end of the faults; after the joins, so that the
   join figures measure a join, not the near-link churn that slow members' suspicions cause).
   *Crash* `crash` of the members at once: `detection_time_ms` (crash to the first member declaring it dead,
   p50/p99), the times until the survivors' overlay is connected and until every survivor's near links
   are its true nearest survivors, and `routing_after_crash` (survivor pairs routed 3 T and 3 detection
   periods after the crash).
5. *Steady* run for `duration_s` more seconds (slow members still slow): `false_suspicions` and
   `false_deaths` count the whole run (a suspicion or death declared by a member's own detector about a
   member that was up).
6. Faults stop (slow members recover, no more loss or duplication); the liveness checker waits for every
   live member to agree on the membership and on its near links, and (with writes) for every replica to be
   identical and to hold every acknowledged write, within a bound. (The writes phase, `_writes`, runs
   between 3 and 4; see docs/sim.md.)
Safety checkers watch every step. The report is a plain dict (JSON-ready); `FORMAT` documents its keys.
"""

from __future__ import annotations

import dataclasses
import gc
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from dsm.core.encoding import decode_versions
from dsm.core.messages import OVERLAY_MESSAGES, Ack, DataItem, Ping, PingReq
from dsm.core.peer import PeerSettings, suspicion_bounds
from dsm.core.ring import State
from dsm.sim.checkers import Checkers, CheckFailed
from dsm.sim.cluster import RouteOutcome, SimNode, Simulation
from dsm.sim.network import NetworkModel
from dsm.sim.writes import Track, WriteTracker

REPORT_VERSION = 1
#: The value of every simulated write (100 bytes, a typical small record).
VALUE = bytes(range(100))

FORMAT = {
    "version": "format version of this report (integer, bumped on incompatible changes)",
    "params": "the run's parameters (nodes, seed, loss, crash, slow, ...)",
    "routing_hops": "greedy routing over random pairs: mean, p50, p99, max hops, delivered fraction, pairs",
    "hop_histogram": "number of delivered pairs by hop count",
    "join_messages": "overlay messages to or from each joiner in its window: mean, max, per-join list",
    "links_changed_per_join": "members whose links changed during each join window: mean, max, per-join list",
    "join_settle_ms": "time of the last link change in each join window: max, and max in gossip rounds",
    "join_spread": "fraction of members knowing each joiner at the end of its window (min) and piggybacked copies",
    "leave_messages": "overlay messages sent by any member in each leave window (upper bound): mean, max, per-leave",
    "links_changed_per_leave": "members whose links changed during each leave window: mean, max, per-leave list",
    "leave_settle_ms": "time of the last link change in each leave window: max, and max in gossip rounds",
    "leave_spread": "fraction of live members that know of each leave at the end of its window (min)",
    "rounds_to_all": "writes: time until every live node held each write, in gossip rounds (p50, p99, max, samples)",
    "time_to_all_ms": "writes: time until every live node held each write: p50, p99, max, fraction reaching all",
    "delivery_hops": "writes: overlay hops of the last node's copy (p50 and max over writes)",
    "payload_copies_per_update": "writes: payload copies sent per write, in units of n - 1 (first, mean, steady)",
    "messages_per_update": "writes: data messages per write (a message about k writes counts 1/k)",
    "bytes_per_update": "writes: bytes of those messages per write (msgpack + 4-byte frame header)",
    "write_curves": "writes: live nodes (population) and, for the first 8 writes, the sorted times (ms) they stored it",
    "bulk_time_to_all_ms": "bulk: time from the first non-urgent write until every node held all of them",
    "bulk_payload_copies_per_update": "bulk (non-urgent, gossip only) writes: as payload_copies_per_update",
    "bulk_messages_per_update": "bulk writes: as messages_per_update",
    "bulk_bytes_per_update": "bulk writes: as bytes_per_update",
    "after_burst_bytes_per_node_per_s": "data bytes per node per second, burst until a round after",
    "idle_bytes_per_node_per_s": "data bytes per node per second in 12 idle rounds (after 20 rounds of backing off)",
    "idle_messages_per_node_per_s": "data messages per node per second in the same window",
    "idle_gossip_period_ms": "adaptive gossip period of the live nodes at the end of the idle window (p50, min, max)",
    "replicas_converged_ms": "after faults stop: time until every live replica was identical",
    "converged": "every live replica identical and holding every acknowledged write at the end",
    "write_after_crash": (
        "a write 3 T after the mass crash: fraction of survivors holding it 2 rounds later and at the end, "
        "time to 99.9 % and to all, the sorted times (ms) at which survivors stored it (curve)"
    ),
    "detection_time_ms": "crash to first dead declaration, over crashed members: p50, p99, max, detected fraction",
    "detection_samples_ms": "every crashed member's detection time, sorted (for the plot)",
    "crash_recovery": "after the mass crash: connected_ms, ring_repaired_ms (null if not within the run)",
    "routing_after_crash": "survivor pairs routed at 3 probe periods and 3 detection periods after the crash",
    "false_suspicions": "suspicions raised by a member's own detector about members that were up",
    "false_deaths": "deaths declared by a member's own detector about members that were up",
    "false_suspicions_split": "false suspicions raised by slow members, and raised by healthy ones about slow ones",
    "converged_after_ms": "time from the end of faults until every live member agrees (liveness check)",
    "checks": "passed (bool) and the first failure's message, which starts with the seed",
    "messages": "messages sent over the whole run, by type",
    "virtual_time_s": "simulated time covered by the run, s",
    "events": "events processed (message deliveries and timer firings)",
    "wall_time_s": "wall-clock duration of the run",
    "phase_wall_s": "wall-clock seconds per phase (start, routing, joins, leaves, writes, crash, steady, converge)",
    "peak_memory_mib": "peak resident memory of the process",
    "curves": "per-join cumulative link changes and overlay messages against time (for the plot)",
}


@dataclass
class SimParams:
    """Parameters of the standard run (`dsm sim` flags)."""

    nodes: int = 1000
    seed: int = 1
    loss: float = 0.0
    duplicate: float = 0.0
    crash: float = 0.0
    slow: float = 0.0
    slow_ms: float = 1000.0
    joins: int = 5
    leaves: int = 0
    pairs: int = 2000
    duration_s: float = 0.0
    regions: int = 1
    skew_ms: int = 100
    converge_bound_s: float = 0.0
    writes: int = 0
    bulk: int = 0
    gossip_only: bool = False
    idle: bool = True
    settings: PeerSettings = field(default_factory=PeerSettings)


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _hop_histogram(outcomes: list[RouteOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        if o.delivered:
            counts[str(o.hops)] = counts.get(str(o.hops), 0) + 1
    return counts


def _route_summary(outcomes: list[RouteOutcome]) -> dict[str, Any]:
    hops = [float(o.hops) for o in outcomes if o.delivered]
    failures: dict[str, int] = {}
    for o in outcomes:
        if not o.delivered:
            reason = o.reason or "lost (no answer)"
            failures[reason] = failures.get(reason, 0) + 1
    return {
        "pairs": len(outcomes),
        "delivered": len(hops) / len(outcomes) if outcomes else None,
        "mean": round(statistics.mean(hops), 3) if hops else None,
        "p50": _pct(hops, 0.50) if hops else None,
        "p99": _pct(hops, 0.99) if hops else None,
        "max": max(hops) if hops else None,
        "failures": failures,
    }


class StandardRun:
    """Runs the phases of the module docstring and builds the report."""

    def __init__(self, params: SimParams, progress: Callable[[str, float, float], None] | None = None) -> None:
        if params.gossip_only:
            params = dataclasses.replace(
                params, settings=dataclasses.replace(params.settings, direct_updates=False, gossip_adaptive=False)
            )
        self.p = params
        self.progress = progress
        network = NetworkModel(loss=params.loss, duplicate=params.duplicate)
        regions = tuple(f"r{i}" for i in range(max(1, params.regions)))
        self.sim = Simulation(
            seed=params.seed, settings=params.settings, network=network, regions=regions, skew_max_ms=params.skew_ms
        )
        self.checkers = Checkers(self.sim)
        self.T = params.settings.probe_interval_ms
        self.R = params.settings.gossip_interval_ms
        self.tracker = WriteTracker(self.sim) if params.writes or params.bulk else None
        self.acknowledged: list[DataItem] = []
        self.false_suspicions = 0
        self.false_deaths = 0
        self.false_suspicions_by_slow = 0
        self.false_suspicions_of_slow = 0
        self.true_suspicions = 0
        self.detected_at: dict[int, float] = {}
        self.sim.member_hooks.append(self._on_member)
        self._link_events: list[tuple[float, int, int, int]] | None = None
        self._join_tracking: dict[str, Any] | None = None
        self.sim.link_hooks.append(self._on_link)
        self.sim.send_hooks.append(self._on_send)
        self._phase = ""
        self._phase_start = 0.0
        self._phase_end = 0.0

    # ------------------------------------------------------------------ hooks

    def _on_member(self, observer: int, slot: int, old: int, new: int, incarnation: int, own: bool) -> None:
        if not own:
            tracking = self._join_tracking
            if (
                tracking is not None
                and new == tracking["state"]
                and slot == tracking["slot"]
                and observer != tracking["index"]
            ):
                tracking["learned"] += 1
            return
        sim = self.sim
        member = sim.index_of[sim.directory.infos[slot].node_id]
        target = sim.nodes[member]
        if new == State.SUSPECT:
            if target.up:
                self.false_suspicions += 1
                if sim.nodes[observer].slow_ms:
                    self.false_suspicions_by_slow += 1
                elif target.slow_ms:
                    self.false_suspicions_of_slow += 1
            else:
                self.true_suspicions += 1
        elif new == State.DEAD:
            if target.up:
                self.false_deaths += 1
            elif target.crashed_at is not None and member not in self.detected_at:
                self.detected_at[member] = sim.now - target.crashed_at

    def _on_link(self, observer: int, slot: int, delta: int) -> None:
        if self._link_events is not None:
            self._link_events.append((self.sim.now, observer, slot, delta))

    def _on_send(self, source: int, target: int, message: Any) -> None:
        tracking = self._join_tracking
        if tracking is None:
            return
        joiner = tracking["index"]
        if isinstance(message, OVERLAY_MESSAGES):
            if tracking["state"] == State.LEFT or source == joiner or target == joiner:
                tracking["messages"].append(self.sim.now)
        elif type(message) in (Ping, Ack, PingReq):
            joiner_id = tracking["id"]
            for update in message.updates:
                if update.node_id == joiner_id:
                    tracking["piggybacked"] += 1

    # ------------------------------------------------------------------ running

    def _run(self, phase: str, until: float) -> None:
        if phase != self._phase:
            self._phase, self._phase_start, self._phase_end = phase, self.sim.now, until
        progress = self.progress
        if progress is None:
            self.sim.run_until(until)
            return

        def report(now: float) -> None:
            progress(phase, now - self._phase_start, self._phase_end - self._phase_start)

        self.sim.run_until(until, report)

    def _random_up(self, count: int, exclude: set[int] | None = None) -> list[SimNode]:
        up = [n for n in self.sim.nodes if n.up and (exclude is None or n.index not in exclude)]
        return self.sim.rng.sample(up, min(count, len(up)))

    def _route_pairs(self, count: int, phase: str, wait_ms: float) -> list[RouteOutcome]:
        sim = self.sim
        up = sim.up_nodes()
        outcomes = []
        for _ in range(count):
            source, target = sim.rng.sample(up, 2) if len(up) > 1 else (up[0], up[0])
            outcomes.append(sim.route(source, target))
        self._run(phase, sim.now + wait_ms)
        return outcomes

    def run(self) -> dict[str, Any]:
        # A simulation holds millions of long-lived objects; with the default thresholds the collector
        # rescans them all over and over (it took a third of the time of a 3,000-node run). The cores make
        # no reference cycles per message (peak memory is the same with the collector off), so it is off
        # for the run, and the formed cluster is frozen out of its sight for the collections between
        # phases.
        thresholds = gc.get_threshold()
        gc.set_threshold(0)
        try:
            return self._run_all()
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    def _run_all(self) -> dict[str, Any]:
        wall = time.perf_counter()
        p, sim = self.p, self.sim
        T = self.T
        phase_wall: dict[str, float] = {}
        mark = wall

        def lap(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            phase_wall[name] = round(now - mark, 2)
            mark = now

        sim.form(p.nodes)
        gc.collect()
        gc.freeze()
        self._run("warm-up", sim.now + 5 * T)
        lap("start")

        routed = self._route_pairs(p.pairs, "routing", 4 * T)
        routing = _route_summary(routed)
        lap("routing")

        joins = self._joins()
        lap("joins")
        leaves = self._leaves()
        lap("leaves")
        writes = self._writes()
        gc.collect()
        lap("writes")
        for node in sim.rng.sample(sim.nodes, round(p.slow * p.nodes)):
            node.slow_ms = p.slow_ms

        crash = self._crash()
        gc.collect()
        lap("crash")

        if p.duration_s > 0:
            self._run("steady", sim.now + p.duration_s * 1000)
        lap("steady")

        # Faults stop: slow members recover and the network stops losing and duplicating.
        for node in sim.nodes:
            node.slow_ms = 0.0
        sim.network.loss = sim.network.duplicate = 0.0
        self.checkers.check_incarnations()
        _, high = suspicion_bounds(p.settings, len(sim.up_nodes()))
        bound = p.converge_bound_s * 1000 or (high + 60 * T)
        self._phase = "converge"
        failure = None
        converged = None
        try:
            converged = self.checkers.wait_converged(bound, step_ms=T, sample=200)
            if self.acknowledged:
                replicas = self._replicas_converged(bound)
                writes["replicas_converged_ms"] = replicas
                writes["converged"] = replicas is not None
        except CheckFailed as exc:
            failure = str(exc)
        lap("converge")

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "version": REPORT_VERSION,
            "params": {k: v for k, v in asdict(p).items() if k != "settings"} | {"settings": asdict(p.settings)},
            "routing_hops": routing,
            "hop_histogram": _hop_histogram(routed),
            **joins,
            **leaves,
            **writes,
            **crash,
            "false_suspicions": self.false_suspicions,
            "false_deaths": self.false_deaths,
            "false_suspicions_split": {
                "by_slow_members": self.false_suspicions_by_slow,
                "of_slow_members_by_healthy": self.false_suspicions_of_slow,
            },
            "converged_after_ms": converged,
            "checks": {"passed": failure is None, "failure": failure},
            "messages": dict(sorted(sim.sent.items())),
            "virtual_time_s": round((sim.now - sim.start_ms) / 1000, 1),
            "events": sim.events,
            "wall_time_s": round(time.perf_counter() - wall, 2),
            "phase_wall_s": phase_wall,
            "peak_memory_mib": round(usage.ru_maxrss / 1024, 1),
        }

    # ------------------------------------------------------------------ writes

    def _write(self, node: SimNode, key: str, urgent: bool = True) -> Track:
        tracker = self.tracker
        assert tracker is not None
        tracks: list[Track] = []
        item = self.sim.write(node, key, VALUE, urgent, lambda it: tracks.append(tracker.watch(it, node.index)))
        self.acknowledged.append(item)
        return tracks[0]

    def _await(self, tracks: list[Track], phase: str, step: float, deadline: float) -> None:
        """Runs until every up node holds every write in `tracks`, or `deadline`."""
        sim = self.sim
        while sim.now < deadline:
            up = sum(1 for n in sim.nodes if n.up)
            if all(len(t.holders) >= up for t in tracks):
                break
            self._run(phase, min(deadline, sim.now + step))

    def _writes(self) -> dict[str, Any]:
        """Writes one at a time (each waited for; with gossip alone, overlapping), then a burst of non-urgent
        ones, then idle time."""
        p, sim, R = self.p, self.sim, self.R
        if self.tracker is None:
            return {}
        tracker = self.tracker
        gossip_only = not p.settings.direct_updates
        tail = 2 * p.settings.graft_timeout_ms
        singles: list[Track] = []
        up = len(sim.up_nodes())
        if gossip_only:
            # Gossip alone takes several periods per write: the writes overlap, one every fifth of a period
            # from random nodes (each timed from its own start; a digest then lists a few ids, not one).
            for i in range(p.writes):
                singles.append(self._write(self._random_up(1)[0], f"w{i}"))
                self._run("writes", sim.now + R / 5)
            self._await(singles, "writes", R / 20, sim.now + 30 * R)
            self._run("writes", sim.now + R)
            for track in singles:
                tracker.forget(track)
        else:
            for i in range(p.writes):
                track = self._write(self._random_up(1)[0], f"w{i}")
                self._await([track], "writes", 10.0, sim.now + 6 * R)
                self._run("writes", sim.now + tail)
                tracker.forget(track)
                singles.append(track)
        out: dict[str, Any] = {}
        if singles:
            out.update(self._write_figures(singles, up, "writes"))
        bulk: list[Track] = []
        if p.bulk:
            tracker.counting = True
            tracker.window_messages = tracker.window_bytes = 0
            start = sim.now
            for i in range(p.bulk):
                bulk.append(self._write(self._random_up(1)[0], f"b{i}", urgent=False))
            self._await(bulk, "bulk", R / 20, sim.now + 30 * R)
            done = sim.now
            self._run("bulk", sim.now + R)
            for track in bulk:
                tracker.forget(track)
            out.update(self._write_figures(bulk, up, "bulk"))
            out["bulk_time_to_all_ms"] = round(done - start, 1)
            self._run("after burst", sim.now + R)
            out["after_burst_bytes_per_node_per_s"] = round(tracker.window_bytes / up / ((sim.now - start) / 1000), 1)
        if not p.idle:
            return out
        # Idle: let the adaptive period stretch, then measure a quiet minute of data traffic.
        self._run("idle", sim.now + 20 * R)
        tracker.counting = True
        tracker.window_messages = tracker.window_bytes = 0
        start = sim.now
        self._run("idle", sim.now + 12 * R)
        seconds = (sim.now - start) / 1000
        tracker.counting = False
        out["idle_bytes_per_node_per_s"] = round(tracker.window_bytes / up / seconds, 2)
        out["idle_messages_per_node_per_s"] = round(tracker.window_messages / up / seconds, 4)
        periods = [n.peer.data.period for n in sim.nodes if n.up and n.peer is not None]
        out["idle_gossip_period_ms"] = {"p50": _pct(periods, 0.5), "min": min(periods), "max": max(periods)}
        return out

    def _write_figures(self, tracks: list[Track], population: int, name: str) -> dict[str, Any]:
        R = self.R
        n1 = max(1, population - 1)
        times = [t.time_to_fraction(1.0, population) for t in tracks]
        done = [x for x in times if x is not None]
        hops = [max(h for _, _, h in t.holders.values()) for t in tracks]
        copies = [t.payload_copies / n1 for t in tracks]
        steady = copies[len(copies) // 4 :] if len(copies) >= 4 else copies
        prefix = "" if name == "writes" else "bulk_"
        figures: dict[str, Any] = {
            f"{prefix}time_to_all_ms": {
                "p50": _pct(done, 0.5) if done else None,
                "p99": _pct(done, 0.99) if done else None,
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
            rounds = [x / R for x in done]
            figures["rounds_to_all"] = {
                "p50": round(_pct(rounds, 0.5), 2) if rounds else None,
                "p99": round(_pct(rounds, 0.99), 2) if rounds else None,
                "max": round(max(rounds), 2) if rounds else None,
                "samples": [round(r, 3) for r in rounds],
            }
            figures["delivery_hops"] = {"p50": _pct(hops, 0.5), "max": max(hops)}
            figures["write_curves"] = {
                "population": population,
                "curves": [
                    sorted(round(t - track.start_ms, 1) for t, _, _ in track.holders.values()) for track in tracks[:8]
                ],
            }
        return figures

    def _replicas_converged(self, bound: float) -> float | None:
        """Waits (up to `bound`) until every up replica is identical and holds every acknowledged write;
        returns the wait, or raises CheckFailed when an acknowledged write is lost for good."""
        sim = self.sim
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
                        raise self.checkers.fail(f"acknowledged write of {item.key!r} lost on every replica")
                return sim.now - start
            if sim.now - start >= bound:
                differ = sum(1 for n in up if n.data != reference)
                raise self.checkers.fail(f"replicas still differ {bound:.0f} ms after faults stopped ({differ} nodes)")
            self._run("converge", sim.now + self.T)

    def _joins(self) -> dict[str, Any]:
        p, sim = self.p, self.sim
        window = 2 * self.R
        messages, changed, settle, spread, piggy, curves = [], [], [], [], [], []
        for _ in range(p.joins):
            node = sim.add_node()
            slot = sim.directory.slot(node.info.node_id)
            tracking: dict[str, Any] = {
                "index": node.index,
                "id": node.info.node_id,
                "slot": slot,
                "messages": [],
                "piggybacked": 0,
                "learned": 0,
                "state": State.ALIVE,
            }
            self._join_tracking = tracking
            self._link_events = []
            start = sim.now
            sim.join(node, self._random_up(3, exclude={node.index}))
            self._run("joins", start + window)
            events = self._link_events
            self._link_events = None
            self._join_tracking = None
            nodes_changed = {observer for _, observer, _, _ in events}
            messages.append(len(tracking["messages"]))
            changed.append(len(nodes_changed))
            last = max((t for t, _, _, _ in events), default=start) - start
            settle.append(last)
            up = len(sim.up_nodes())
            spread.append((tracking["learned"] + 1) / up)
            piggy.append(tracking["piggybacked"])
            curves.append(
                {
                    "link_changes_ms": [round(t - start, 1) for t, _, _, _ in events],
                    "messages_ms": [round(t - start, 1) for t in tracking["messages"]],
                }
            )
        if not messages:
            return {
                "join_messages": None,
                "links_changed_per_join": None,
                "join_settle_ms": None,
                "join_spread": None,
                "curves": {},
            }
        return {
            "join_messages": {"mean": statistics.mean(messages), "max": max(messages), "per_join": messages},
            "links_changed_per_join": {"mean": statistics.mean(changed), "max": max(changed), "per_join": changed},
            "join_settle_ms": {"max": max(settle), "max_rounds": round(max(settle) / self.R, 3), "per_join": settle},
            "join_spread": {"min_fraction": round(min(spread), 4), "piggybacked_copies_mean": statistics.mean(piggy)},
            "curves": {"joins": curves},
        }

    def _leaves(self) -> dict[str, Any]:
        """Announced leaves, one at a time, each given a window of 2 R: every overlay message sent by anyone
        in the window is counted (the cluster is otherwise quiet, so this is an upper bound on the leave's
        cost), and every member whose link table changed."""
        p, sim = self.p, self.sim
        window = 2 * self.R
        messages, changed, settle, spread = [], [], [], []
        for _ in range(p.leaves):
            (node,) = self._random_up(1)
            tracking: dict[str, Any] = {
                "index": node.index,
                "id": node.info.node_id,
                "slot": sim.directory.slot(node.info.node_id),
                "messages": [],
                "piggybacked": 0,
                "learned": 0,
                "state": State.LEFT,
            }
            self._join_tracking = tracking
            self._link_events = []
            start = sim.now
            sim.leave(node)
            self.checkers.node_left(node)
            self._run("leaves", start + window)
            events = self._link_events
            self._link_events = None
            self._join_tracking = None
            messages.append(len(tracking["messages"]))
            changed.append(len({observer for _, observer, _, _ in events if observer != node.index}))
            settle.append(max((t for t, _, _, _ in events), default=start) - start)
            spread.append(tracking["learned"] / max(1, len(sim.up_nodes())))
        if not messages:
            return {
                "leave_messages": None,
                "links_changed_per_leave": None,
                "leave_settle_ms": None,
                "leave_spread": None,
            }
        return {
            "leave_messages": {"mean": statistics.mean(messages), "max": max(messages), "per_leave": messages},
            "links_changed_per_leave": {"mean": statistics.mean(changed), "max": max(changed), "per_leave": changed},
            "leave_settle_ms": {"max": max(settle), "max_rounds": round(max(settle) / self.R, 3), "per_leave": settle},
            "leave_spread": {"min_fraction": round(min(spread), 4)},
        }

    def _crash(self) -> dict[str, Any]:
        p, sim = self.p, self.sim
        T = self.T
        count = round(p.crash * len(sim.up_nodes()))
        if count == 0:
            return {
                "write_after_crash": None,
                "detection_time_ms": None,
                "crash_recovery": None,
                "detection_samples_ms": [],
                "routing_after_crash": None,
            }
        victims = self._random_up(count)
        crash_time = sim.now
        for node in victims:
            sim.crash(node)
        survivors = len(sim.up_nodes())
        low, high = suspicion_bounds(p.settings, survivors + count)
        detection_period = T + low
        connected_ms = ring_ms = None
        routing_3t: list[RouteOutcome] = []
        routing_3d: list[RouteOutcome] = []
        # Watch until every crash is detected and the ring is repaired, or 3 detection periods plus the
        # longest suspicion timeout have passed.
        horizon = crash_time + max(3 * detection_period, high + 10 * T) + 4 * T
        next_route_3t = crash_time + 3 * T
        next_route_3d = crash_time + 3 * detection_period
        pairs = min(p.pairs, 2000)
        step = T / 2
        write_track: Track | None = None
        reached_2r: float | None = None
        while sim.now < horizon:
            if self.tracker is not None and write_track is None and sim.now >= next_route_3t:
                # The next write after the crash, while most dead members are still only suspected.
                write_track = self._write(self._random_up(1)[0], "after-crash")
            if write_track is not None and reached_2r is None and sim.now >= write_track.start_ms + 2 * self.R:
                reached_2r = len(write_track.holders) / survivors
            if not routing_3t and sim.now >= next_route_3t:
                routing_3t = self._route_pairs(pairs, "crash", 0)
            if not routing_3d and sim.now >= next_route_3d:
                routing_3d = self._route_pairs(pairs, "crash", 0)
            if connected_ms is None and self._survivors_connected():
                connected_ms = sim.now - crash_time
            if ring_ms is None and not self.checkers.ring_disagreements():
                ring_ms = sim.now - crash_time
            done = ring_ms is not None and len(self.detected_at) == count and routing_3d
            if done and sim.now >= next_route_3d + 4 * T:
                break
            self._run("crash", sim.now + step)
        detected = [self.detected_at[n.index] for n in victims if n.index in self.detected_at]
        after_crash = None
        if write_track is not None:
            assert self.tracker is not None
            self.tracker.forget(write_track)
            after_crash = {
                "written_after_ms": round(write_track.start_ms - crash_time, 1),
                "fraction_at_2_rounds": reached_2r,
                "fraction_at_end": len(write_track.holders) / survivors,
                "time_to_99_9_ms": write_track.time_to_fraction(0.999, survivors),
                "time_to_all_ms": write_track.time_to_fraction(1.0, survivors),
                "payload_copies": round(write_track.payload_copies / max(1, survivors - 1), 3),
                "curve": sorted(round(t - write_track.start_ms, 1) for t, _, _ in write_track.holders.values()),
            }
        return {
            "write_after_crash": after_crash,
            "detection_time_ms": {
                "crashed": count,
                "detected_fraction": len(detected) / count,
                "p50": _pct(detected, 0.5) if detected else None,
                "p99": _pct(detected, 0.99) if detected else None,
                "max": max(detected) if detected else None,
                "suspicion_timeout_ms": {"min": low, "max": high},
            },
            "crash_recovery": {
                "survivors": survivors,
                "connected_ms": connected_ms,
                "ring_repaired_ms": ring_ms,
                "probe_period_ms": T,
                "detection_period_ms": detection_period,
            },
            "detection_samples_ms": sorted(round(d, 1) for d in detected),
            "routing_after_crash": {
                "at_3_probe_periods": _route_summary(routing_3t) if routing_3t else None,
                "at_3_detection_periods": _route_summary(routing_3d) if routing_3d else None,
            },
        }

    def _survivors_connected(self) -> bool:
        """Whether the links between live members (as the live members hold them) connect them all."""
        sim = self.sim
        up = sim.up_nodes()
        if not up:
            return True
        index_of = sim.index_of
        infos = sim.directory.infos
        nodes = sim.nodes
        adjacency: dict[int, set[int]] = {n.index: set() for n in up}
        for node in up:
            assert node.peer is not None
            for slot in node.peer.overlay.refcount:
                other = index_of[infos[slot].node_id]
                if nodes[other].up:
                    adjacency[node.index].add(other)
                    adjacency[other].add(node.index)
        seen = {up[0].index}
        stack = [up[0].index]
        while stack:
            for other in adjacency[stack.pop()]:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        return len(seen) == len(up)
