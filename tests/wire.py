"""Cores wired together in memory: zero-latency FIFO delivery, time advanced by hand, faults by hand.

Unlike the simulator, every peer here has its own `Directory` (as in the network runtime), so these tests
also check that nothing depends on the simulator's shared one.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import Any

from dsm.core.messages import Deliver, Effect, Message, RouteFailure, Send, Store
from dsm.core.peer import Peer, PeerSettings
from dsm.core.ring import MemberInfo

SMALL = PeerSettings(max_immediate_neighbors=4, max_long_links=3, max_long_links_in=6, membership_sync_interval_ms=5000)


def info(node_id: str, region: str = "default") -> MemberInfo:
    return MemberInfo(node_id, f"mem://{node_id}", region)


class Wire:
    def __init__(self, seed: int = 0, settings: PeerSettings = SMALL) -> None:
        self.rng = random.Random(seed)
        self.settings = settings
        self.now = 1_000_000
        self.peers: dict[str, Peer] = {}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.queue: deque[tuple[str, str, Message]] = deque()
        self.delivered: list[Deliver] = []
        self.failures: list[RouteFailure] = []
        self.sent: Counter[str] = Counter()
        self.by_addr: dict[str, str] = {}
        self.stored: dict[str, list[Store]] = {}
        # Fraction of messages lost at random (drawn from the wire's own seeded RNG).
        self.loss = 0.0
        # When a list: every message sent, as (sender, target, message), lost ones included.
        self.log: list[tuple[str, str, Message]] | None = None

    def peer(self, node_id: str, incarnation: int = 0, region: str = "default") -> Peer:
        p = Peer(
            info(node_id, region),
            self.settings,
            random.Random(self.rng.getrandbits(32)),
            self.now,
            incarnation=incarnation,
        )
        self.peers[node_id] = p
        self.by_addr[p.info.addr] = node_id
        self.down.discard(node_id)
        return p

    def formed(self, count: int, prefix: str = "n", regions: tuple[str, ...] = ("default",)) -> list[Peer]:
        """`count` peers that all know each other; peer i in region `regions[i % len(regions)]`."""
        ids = [f"{prefix}{i}" for i in range(count)]
        region = {node_id: regions[i % len(regions)] for i, node_id in enumerate(ids)}
        members = [(info(i, region[i]), 0) for i in ids]
        peers = []
        for node_id in ids:
            p = self.peer(node_id, region=region[node_id])
            p.install(members)
            peers.append(p)
        return peers

    def apply(self, sender: str, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Send):
                target = e.node_id or self.by_addr.get(e.addr, "")
                self.sent[type(e.message).__name__] += 1
                if self.log is not None:
                    self.log.append((sender, target, e.message))
                if self.loss and self.rng.random() < self.loss:
                    continue
                if target in self.down or sender in self.down or frozenset((sender, target)) in self.cut:
                    continue
                if target in self.peers:
                    self.queue.append((sender, target, e.message))
            elif isinstance(e, Deliver):
                self.delivered.append(e)
            elif isinstance(e, RouteFailure):
                self.failures.append(e)
            elif isinstance(e, Store):
                self.stored.setdefault(sender, []).append(e)

    def flush(self, limit: int = 1_000_000) -> None:
        steps = 0
        while self.queue:
            _, target, message = self.queue.popleft()
            steps += 1
            assert steps < limit, "message storm"
            if target in self.down:
                continue
            self.apply(target, self.peers[target].handle(self.now, message))

    def advance(self, ms: int, step: int = 10) -> None:
        end = self.now + ms
        while self.now < end:
            self.now += step
            for node_id, p in self.peers.items():
                if node_id in self.down:
                    continue
                deadline = p.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.apply(node_id, p.tick(self.now))
            self.flush()

    def call(self, node_id: str, method: str, *args: Any) -> Any:
        """Calls a runtime method (join/leave/route) and delivers its effects."""
        result = getattr(self.peers[node_id], method)(self.now, *args)
        if isinstance(result, tuple):
            value, effects = result
        else:
            value, effects = None, result
        self.apply(node_id, effects)
        self.flush()
        return value
