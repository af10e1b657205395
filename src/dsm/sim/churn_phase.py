"""The join and leave measurements of the standard run (phase 3 of `dsm.sim.run`).

`ChurnPhase` adds `joins` new members, then makes `leaves` random members leave (announced), one at a
time, each given a window of 2 gossip rounds. While a window is open it watches the simulation's hooks:
every overlay message to or from the joiner (for a leave, every overlay message by anyone: the cluster is
otherwise quiet, so this bounds the leave's cost from above), every member whose link table changed and
when, how many members learned the news and how often it was piggybacked on probes. Outside a window the
hooks record nothing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from dsm.core.messages import OVERLAY_MESSAGES, Ack, Ping, PingReq
from dsm.core.ring import State
from dsm.sim.cluster import SimNode
from dsm.sim.stage import Stage


@dataclass
class Window:
    """What one join's or leave's window saw."""

    index: int
    node_id: str
    slot: int | None
    #: ALIVE for a join, LEFT for a leave: the state whose news is being spread.
    state: State
    start_ms: float
    messages: list[float] = field(default_factory=list)
    piggybacked: int = 0
    learned: int = 0
    #: (time, observer, slot, delta) of every link-table change.
    link_events: list[tuple[float, int, int, int]] = field(default_factory=list)


class ChurnPhase:
    """Measures joins and announced leaves, one window each."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self._window: Window | None = None
        sim = stage.sim
        sim.member_hooks.append(self._on_member)
        sim.link_hooks.append(self._on_link)
        sim.send_hooks.append(self._on_send)

    # ------------------------------------------------------------------ hooks

    def _on_member(self, observer: int, slot: int, old: int, new: int, incarnation: int, own: bool) -> None:
        window = self._window
        if own or window is None:
            return
        if new == window.state and slot == window.slot and observer != window.index:
            window.learned += 1

    def _on_link(self, observer: int, slot: int, delta: int) -> None:
        if self._window is not None:
            self._window.link_events.append((self.stage.sim.now, observer, slot, delta))

    def _on_send(self, source: int, target: int, message: Any) -> None:
        window = self._window
        if window is None:
            return
        if isinstance(message, OVERLAY_MESSAGES):
            if window.state == State.LEFT or source == window.index or target == window.index:
                window.messages.append(self.stage.sim.now)
        elif type(message) in (Ping, Ack, PingReq):
            for update in message.updates:
                if update.node_id == window.node_id:
                    window.piggybacked += 1

    # ------------------------------------------------------------------ windows

    def _open(self, node: SimNode, slot: int | None, state: State) -> Window:
        window = Window(node.index, node.info.node_id, slot, state, self.stage.sim.now)
        self._window = window
        return window

    def _close(self, window: Window, phase: str) -> None:
        self.stage.run(phase, window.start_ms + 2 * self.stage.R)
        self._window = None

    def joins(self) -> dict[str, Any]:
        """Joins `joins` new members, each through 3 random live members; returns the join figures."""
        stage, sim = self.stage, self.stage.sim
        messages, changed, settle, spread, piggy, curves = [], [], [], [], [], []
        for _ in range(stage.p.joins):
            node = sim.add_node()
            window = self._open(node, sim.directory.slot(node.info.node_id), State.ALIVE)
            sim.join(node, stage.random_up(3, exclude={node.index}))
            self._close(window, "joins")
            start, events = window.start_ms, window.link_events
            messages.append(len(window.messages))
            changed.append(len({observer for _, observer, _, _ in events}))
            settle.append(max((t for t, _, _, _ in events), default=start) - start)
            spread.append((window.learned + 1) / len(sim.up_nodes()))
            piggy.append(window.piggybacked)
            curves.append(
                {
                    "link_changes_ms": [round(t - start, 1) for t, _, _, _ in events],
                    "messages_ms": [round(t - start, 1) for t in window.messages],
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
        R = stage.R
        return {
            "join_messages": {"mean": statistics.mean(messages), "max": max(messages), "per_join": messages},
            "links_changed_per_join": {"mean": statistics.mean(changed), "max": max(changed), "per_join": changed},
            "join_settle_ms": {"max": max(settle), "max_rounds": round(max(settle) / R, 3), "per_join": settle},
            "join_spread": {"min_fraction": round(min(spread), 4), "piggybacked_copies_mean": statistics.mean(piggy)},
            "curves": {"joins": curves},
        }

    def leaves(self) -> dict[str, Any]:
        """Announced leaves of random live members, one at a time; returns the leave figures."""
        stage, sim = self.stage, self.stage.sim
        messages, changed, settle, spread = [], [], [], []
        for _ in range(stage.p.leaves):
            (node,) = stage.random_up(1)
            window = self._open(node, sim.directory.slot(node.info.node_id), State.LEFT)
            sim.leave(node)
            stage.checkers.node_left(node)
            self._close(window, "leaves")
            start, events = window.start_ms, window.link_events
            messages.append(len(window.messages))
            changed.append(len({observer for _, observer, _, _ in events if observer != node.index}))
            settle.append(max((t for t, _, _, _ in events), default=start) - start)
            spread.append(window.learned / max(1, len(sim.up_nodes())))
        if not messages:
            return {
                "leave_messages": None,
                "links_changed_per_leave": None,
                "leave_settle_ms": None,
                "leave_spread": None,
            }
        R = stage.R
        return {
            "leave_messages": {"mean": statistics.mean(messages), "max": max(messages), "per_leave": messages},
            "links_changed_per_leave": {"mean": statistics.mean(changed), "max": max(changed), "per_leave": changed},
            "leave_settle_ms": {"max": max(settle), "max_rounds": round(max(settle) / R, 3), "per_leave": settle},
            "leave_spread": {"min_fraction": round(min(spread), 4)},
        }
