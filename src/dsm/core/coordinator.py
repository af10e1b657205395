"""`Coordinator`: writes and reads at consistency levels above `local`, as a sans-IO machine.

The node that takes a client's request coordinates it: it counts its own commit (or its own read) first,
then asks other members and counts their answers against the level's groups (`consistency.Tally`) until
the level is met or the request times out. The network runtime and the simulator both drive this one
machine: they start requests, feed it the answers that arrive and the time, and carry out what it returns
(`Send`s, `Store`s of read repairs on this node, and one `LevelDone` per request).

    request, effects = coordinator.write(now, level, items, timeout_ms)
    request, effects = coordinator.read(now, level, key, own_versions, timeout_ms)
    effects = coordinator.handle(now, source, message)   # a Replicated or ReadReply arrived
    effects = coordinator.tick(now)                      # at coordinator.next_deadline()

Rules it keeps:
- Who is asked, in two waves (`LevelView.level_targets`): first the fewest members that can meet the level,
  the rest only if the first wave has not met it after the hedge delay (`level_hedge_ms`, three measured
  round trips). A request ends at the first of: level met (ok), `timeout_ms` passed (not ok).
- An answer counts once, only from a member the level counts (`Tally.add`), only for the request that
  asked (request ids come from the driver's `new_id`: random 63-bit numbers in the network runtime, so a
  guessed or replayed id finds nothing) and only from the member the connection authenticated (`source`,
  compared with the message's claim). A `Replicated` counts only when the member stored every item.
- Until this node has joined its cluster, its view is only itself (or the one it saved): a request is
  refused at once (`LevelDone.reason` "not_joined") rather than met by a majority of one.
- A read merges the version sets that answered (this node's first) with the conflict resolution rule
  (`merge_answers`); the members whose set differs are repaired: the others by a `Replicate` without an
  answer (seq 0), this node by a `Store` of the merge (path "repair"). An undecodable answer does not
  count towards the merge (`stats.bad_replies`).
Serving the other side (a member asked to store or to read) is the driver's store work; `stored_reply`
and `read_reply` say what it answers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from dsm.core.consistency import Group, Level, Tally, merge_answers
from dsm.core.encoding import DecodeError, decode_versions, encode_versions
from dsm.core.messages import DataItem, Message, ReadReply, ReadRequest, Replicate, Replicated, Send, Store
from dsm.core.ring import Directory
from dsm.core.versions import Resolution, VersionSet


class LevelView(Protocol):
    """What the coordinator needs of the membership (`Peer` provides it)."""

    @property
    def joined(self) -> bool: ...

    def level_groups(self, level: Level) -> tuple[Group, ...]: ...

    def level_targets(self, tally: Tally) -> tuple[list[str], list[str]]: ...

    def level_hedge_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LevelDone:
    """A request ended: `ok` (its level met) or not (`reason`: "timeout" or "not_joined"). `tally` says who
    answered and what was required; a read's `versions` is the merge of what answered."""

    request: int
    ok: bool
    tally: Tally
    versions: VersionSet | None = None
    reason: str = ""


LevelEffect = Send | Store | LevelDone


class Timer(Enum):
    """The coordinator's timers: the second wave of a request, and its deadline."""

    HEDGE = 0
    DEADLINE = 1


@dataclass(slots=True)
class _Request:
    tally: Tally
    message: Message
    rest: list[str]
    #: A read's key and the version sets that answered (this node's first); None for a write.
    key: str | None = None
    held: dict[str, VersionSet] = field(default_factory=dict)


@dataclass(slots=True)
class CoordinatorStats:
    """What the coordinator did (exported as metrics)."""

    read_repairs: int = 0
    bad_replies: int = 0


class Coordinator:
    """Requests at consistency levels coordinated by one node (see the module docstring).

    Args:
        node_id: this node.
        view: its membership view.
        directory: where members' addresses are found.
        resolution: the conflict resolution rule reads merge with.
        new_id: issues request ids (never 0).
    """

    def __init__(
        self,
        node_id: str,
        view: LevelView,
        directory: Directory,
        resolution: Resolution,
        new_id: Callable[[], int],
    ) -> None:
        self.node_id = node_id
        self.view = view
        self.directory = directory
        self.resolution = resolution
        self.new_id = new_id
        self.stats = CoordinatorStats()
        self._requests: dict[int, _Request] = {}
        self._timers: list[tuple[int, int, Timer]] = []

    @property
    def pending(self) -> int:
        """Requests in flight."""
        return len(self._requests)

    # --- starting requests

    def write(
        self, now: int, level: Level, items: Sequence[DataItem], timeout_ms: int
    ) -> tuple[int, list[LevelEffect]]:
        """Starts a write at `level` of `items`, already durable on this node (its commit counts first)."""
        rid = self._next_id()
        return rid, self._start(now, rid, level, Replicate(rid, self.node_id, tuple(items)), timeout_ms, None)

    def read(self, now: int, level: Level, key: str, own: VersionSet, timeout_ms: int) -> tuple[int, list[LevelEffect]]:
        """Starts a read of `key` at `level`; `own` is this node's version set of it (empty if absent)."""
        rid = self._next_id()
        return rid, self._start(now, rid, level, ReadRequest(rid, self.node_id, (key,)), timeout_ms, (key, own))

    def _next_id(self) -> int:
        rid = self.new_id()
        while rid in self._requests or rid == 0:
            rid = self.new_id()
        return rid

    def _start(
        self,
        now: int,
        rid: int,
        level: Level,
        message: Message,
        timeout_ms: int,
        read: tuple[str, VersionSet] | None,
    ) -> list[LevelEffect]:
        view = self.view
        tally = Tally(level, view.level_groups(level))
        tally.add(self.node_id)
        request = _Request(tally, message, [])
        if read is not None:
            request.key = read[0]
            request.held[self.node_id] = read[1]
        if not view.joined:
            return [LevelDone(rid, False, tally, None, "not_joined")]
        if tally.met:
            return self._finish(rid, request, True)
        first, rest = view.level_targets(tally)
        if not first:
            first, rest = rest, []
        request.rest = rest
        self._requests[rid] = request
        if rest:
            self._arm(now + min(timeout_ms, view.level_hedge_ms()), rid, Timer.HEDGE)
        self._arm(now + timeout_ms, rid, Timer.DEADLINE)
        return [self._send(node, message) for node in first]

    # --- answers and timers

    def handle(self, now: int, source: str, message: Replicated | ReadReply) -> list[LevelEffect]:
        """An answer from `source` (the member the connection authenticated)."""
        request = self._requests.get(message.seq)
        if request is None or message.source != source:
            return []  # late (the request ended), unknown, or claiming another sender
        if isinstance(message, Replicated):
            if not message.stored:
                return []
        else:
            if not message.ok or request.key is None:
                return []
            raw = dict(message.entries).get(request.key)
            try:
                request.held[source] = VersionSet() if raw is None else decode_versions(raw)
            except DecodeError:
                self.stats.bad_replies += 1
                return []
        if request.tally.add(source):
            del self._requests[message.seq]
            return self._finish(message.seq, request, True)
        return []

    def next_deadline(self) -> int | None:
        """When `tick` must next be called, or None."""
        timers = self._timers
        while timers and timers[0][1] not in self._requests:
            heapq.heappop(timers)  # the request ended before its timer
        return timers[0][0] if timers else None

    def tick(self, now: int) -> list[LevelEffect]:
        """Runs the timers due at `now`: second waves and deadlines."""
        out: list[LevelEffect] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, rid, kind = heapq.heappop(timers)
            request = self._requests.get(rid)
            if request is None:
                continue
            if kind is Timer.HEDGE:
                out.extend(self._send(node, request.message) for node in request.rest)
            else:
                del self._requests[rid]
                out.append(LevelDone(rid, False, request.tally, None, "timeout"))
        return out

    def abandon(self) -> list[LevelEffect]:
        """Ends every request in flight as not met (reason "closed": the node is stopping)."""
        out: list[LevelEffect] = [LevelDone(rid, False, r.tally, None, "closed") for rid, r in self._requests.items()]
        self._requests.clear()
        self._timers.clear()
        return out

    def _arm(self, when: int, rid: int, kind: Timer) -> None:
        heapq.heappush(self._timers, (when, rid, kind))

    def _send(self, node_id: str, message: Message) -> Send:
        slot = self.directory.slot(node_id)
        return Send(node_id, "" if slot is None else self.directory.infos[slot].addr, message)

    def _finish(self, rid: int, request: _Request, ok: bool) -> list[LevelEffect]:
        if request.key is None:
            return [LevelDone(rid, ok, request.tally)]
        merged, stale = merge_answers(request.held, self.resolution)
        out: list[LevelEffect] = []
        if merged.versions:
            item = DataItem(0, request.key, encode_versions(merged))
            for node in stale:
                if node == self.node_id:
                    out.append(Store((item,), self.node_id, "repair", 0))
                else:
                    out.append(self._send(node, Replicate(0, self.node_id, (item,))))
            self.stats.read_repairs += len(stale)
        out.append(LevelDone(rid, ok, request.tally, merged))
        return out


def stored_reply(message: Replicate, node_id: str, stored: bool) -> Replicated | None:
    """What a member asked to store `message`'s items answers (None: a read repair wants no answer)."""
    return Replicated(message.seq, node_id, stored) if message.seq else None


def read_reply(message: ReadRequest, node_id: str, entries: Sequence[tuple[str, bytes]], ok: bool) -> ReadReply:
    """What a member asked for `message`'s keys answers (`ok` False: its store failed; nothing counts)."""
    return ReadReply(message.seq, node_id, tuple(entries) if ok else (), ok)
