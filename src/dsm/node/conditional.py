"""Conditional writes and linearizable reads as a node's front door sees them (issue 19).

An operation (`dsm.core.cas_ops`: `IfAbsent`, `IfMatch`, `Put`, `Read`) runs as a CASPaxos round of the
key's acceptor group, proposed by this node through the network runtime (`CasNetwork.cas`, the core's
`CasProposer`); see docs/consistency.md, "Conditional writes". Its end becomes a result or an error here:
- applied: a `WriteResult` (the new version is the key's only one); read: the chosen state;
- failed: `PreconditionFailedError` with the key's current context;
- refused (no accept was sent: nothing happened): `ConsistencyError`;
- unknown (an accept was sent but not confirmed in time): `OutcomeUnknownError`.
The chosen state is merged into this node's replica before the caller hears of it, so a `local` read here
afterwards sees it; every other replica gets it from the round's commit and its publication.

A standalone node (no network) is the only member of every key's group: its operations on a key run one at
a time (a lock per key) on its own replica, with the same change functions.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Protocol

from dsm.core.cas_ops import IfAbsent, IfMatch, Operation, Outcome, Put, Read, evaluate
from dsm.core.cas_proposer import CasDone, CasOutcome, writer_id
from dsm.core.encoding import encode_context, encode_versions
from dsm.core.messages import DataItem
from dsm.core.versions import VersionSet
from dsm.errors import ConsistencyError, OutcomeUnknownError, PreconditionFailedError
from dsm.node.commits import Commits
from dsm.types import WriteResult

#: The consistency name of linearizable reads and unconditional linearizable writes.
LINEARIZABLE = "linearizable"

_ENDED = {Outcome.APPLIED: CasOutcome.APPLIED, Outcome.FAILED: CasOutcome.FAILED, Outcome.READ: CasOutcome.READ}


class CasNetwork(Protocol):
    """What conditional operations need of the network runtime (`dsm.net.runtime.Runtime.cas`)."""

    async def cas(self, key: str, operation: Operation, timeout_ms: int) -> tuple[CasDone, bool]:
        """Runs `operation` on `key` (its key's home proposes); its end, and whether the chosen state is
        durable in this node's store already."""
        ...


class Conditionals:
    """A node's conditional operations (see the module docstring).

    Args:
        commits: the node's local replica.
        timeout_ms: how long an operation may take (`consistency_timeout_ms`).
        network: the runtime, or None for a standalone node.
    """

    def __init__(self, commits: Commits, timeout_ms: int, network: CasNetwork | None) -> None:
        self.commits = commits
        self.timeout_ms = timeout_ms
        self.network = network
        #: Operations by (kind, outcome), for the metrics.
        self.stats: Counter[tuple[str, str]] = Counter()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def write(self, key: str, operation: IfAbsent | IfMatch | Put) -> WriteResult:
        """Runs a conditional (or linearizable) write; its result once chosen and durable here.

        Raises:
            PreconditionFailedError: the condition was false (nothing was written).
            ConsistencyError: the key's acceptor group could not be reached (nothing was written).
            OutcomeUnknownError: it may or may not have been written.
        """
        done = await self._run(key, operation)
        assert done.state is not None
        if done.outcome is CasOutcome.FAILED:
            state = done.state
            context = encode_context(state.context(), key) if state.versions else None
            raise PreconditionFailedError(key, context, bool(state.live))
        return WriteResult(key, done.state.max_timestamp, done.state)

    async def read(self, key: str) -> VersionSet:
        """The key's state, read linearizably (a round that chooses it unchanged).

        Raises:
            ConsistencyError: the group could not be reached; OutcomeUnknownError: it did not confirm.
        """
        done = await self._run(key, Read())
        assert done.state is not None
        return done.state

    async def _run(self, key: str, operation: Operation) -> CasDone:
        kind = type(operation).__name__.lower()
        durable = True  # a standalone node's operation ran on its own replica
        if self.network is not None:
            done, durable = await self.network.cas(key, operation, self.timeout_ms)
        else:
            done = await self._standalone(key, operation)
        self.stats[(kind, done.outcome.value)] += 1
        doing = "read" if kind == "read" else "write"
        if done.outcome is CasOutcome.REFUSED:
            reason = (
                "this node has not joined its cluster yet; nothing was written"
                if done.reason == "not_joined"
                else "a majority of the key's acceptor group did not answer in time; nothing was written"
            )
            cause = "not_joined" if done.reason == "not_joined" else ""
            raise ConsistencyError(LINEARIZABLE, doing, 0, 0, {}, reason, cause=cause)
        if done.outcome is CasOutcome.UNKNOWN:
            reason = "the key's acceptor group did not confirm in time: the operation may or may not have taken effect"
            raise OutcomeUnknownError(LINEARIZABLE, doing, 0, 0, {}, reason)
        assert done.state is not None
        if not durable and done.state.versions:
            # Durable here before the caller hears of it: a `local` read on this node sees the chosen state
            # (already so when this node proposed the round: the runtime awaited its merge of the round's state).
            await self.commits.merge([DataItem(0, key, encode_versions(done.state))])
        return done

    async def _standalone(self, key: str, operation: Operation) -> CasDone:
        """A standalone node's operation: one at a time per key, on its own replica."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                commits, replica = self.commits, self.commits.replica
                raw = await commits.store.read(key)
                state = VersionSet() if raw is None else replica.decode(key, raw)
                writer, settings = writer_id(commits.node_id), replica.settings
                new, outcomes = evaluate(
                    state, [operation], replica.clock, commits.wall_ms(), writer, replica.resolution,
                    settings.max_siblings,
                )  # fmt: skip
                if outcomes[0] is Outcome.APPLIED:
                    await commits.merge([DataItem(0, key, encode_versions(new))])
                return CasDone(0, _ENDED[outcomes[0]], new)
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
