"""`Serving`: what a networked node does for other members' requests to its store, off the event loop's
critical path: storing items for a coordinator's level (`Replicate`), reading keys for a coordinator's read
(`ReadRequest`), and answering as an acceptor of conditional writes (`CasPrepare`, `CasAccept`,
`CasCommit`: their states go through the commit queue and are durable before the answer, see
`Commits.serve_acceptor`). What each answer says is the core's (`coordinator.stored_reply` / `read_reply`,
`cas_acceptor.serve_all`).

Bounds: at most MAX_SERVING requests are served at once; beyond that a level request is answered as failed
(the coordinator counts it as not stored, and the write still spreads by the other paths) and an acceptor
message gets no answer (the proposer counts this acceptor as down for the phase). A ReadRequest for more
than MAX_READ_KEYS keys is answered as failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dsm.core.ballot import ZERO
from dsm.core.coordinator import read_reply, stored_reply
from dsm.core.messages import CasAccept, CasAccepted, CasCommit, CasPrepare, CasPromise, ReadRequest, Replicate
from dsm.node import Commits

log = logging.getLogger("dsm.net")

#: Most keys one ReadRequest may ask for (a longer one is answered as failed).
MAX_READ_KEYS = 1024
#: Most requests served at once (see the module docstring).
MAX_SERVING = 1024


class Serving:
    """Other members' requests to this node's store (see the module docstring).

    Args:
        commits: the node's local replica.
        send: sends a message to a member (by node id).
        to_self: hands an answer to this node's own core (an acceptor answering its own proposer).
        background: runs a coroutine as a task the runtime keeps track of.
    """

    def __init__(
        self,
        commits: Commits,
        send: Callable[[str, Any], None],
        to_self: Callable[[Any], None],
        background: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self.commits = commits
        self.node_id = commits.node_id
        self.send, self.to_self, self.background = send, to_self, background
        #: Requests being served, and those refused (or left unanswered) for being over MAX_SERVING.
        self.active = 0
        self.refused = 0
        #: Level requests whose store work failed (closed, store errors).
        self.failures = 0

    def _admit(self) -> bool:
        if self.active >= MAX_SERVING:
            self.refused += 1
            return False
        self.active += 1
        return True

    def replicate(self, source: str, message: Replicate) -> None:
        if not self._admit():
            self._answer(source, stored_reply(message, self.node_id, False))
            return
        self.background(self._replicate(source, message))

    def _answer(self, source: str, reply: Any) -> None:
        if reply is not None:
            self.send(source, reply)

    async def _replicate(self, source: str, message: Replicate) -> None:
        stored = False
        try:
            stored = await self.commits.store_replicated(message.items)
        except Exception as exc:  # closed or the store failed: not stored, and the coordinator is told so
            self.failures += 1
            log.warning("storing %d items for %s failed: %s", len(message.items), source, exc)
        finally:
            self.active -= 1
        self._answer(source, stored_reply(message, self.node_id, stored))

    def read(self, source: str, message: ReadRequest) -> None:
        if len(message.keys) > MAX_READ_KEYS or not self._admit():
            self.send(source, read_reply(message, self.node_id, (), False))
            return
        self.background(self._read(source, message))

    async def _read(self, source: str, message: ReadRequest) -> None:
        entries: tuple[tuple[str, bytes], ...] = ()
        ok = False
        try:
            entries = tuple((await self.commits.read_raw(message.keys)).items())
            ok = True
        except Exception as exc:
            log.warning("reading %d keys for %s failed: %s", len(message.keys), source, exc)
        finally:
            self.active -= 1
        self.send(source, read_reply(message, self.node_id, entries, ok))

    def acceptor(self, source: str, message: CasPrepare | CasAccept | CasCommit) -> None:
        if message.source != source:
            return  # only the member the connection authenticated may ask for its own rounds
        if self.commits.acceptor_restored and not isinstance(message, CasCommit):
            # Restored from a snapshot: the promises made after it are forgotten, so this node refuses to act
            # as an acceptor (it counts as a member that refused; `dsm.node.snapshot`).
            refusal: CasPromise | CasAccepted = (
                CasPromise(message.seq, self.node_id, False, ZERO, ZERO, b"", b"")
                if isinstance(message, CasPrepare)
                else CasAccepted(message.seq, self.node_id, False, ZERO)
            )
            self._acceptor_done(source, message, refusal, None)
            return
        if not self._admit():
            return

        def done(reply: CasPromise | CasAccepted | None, error: BaseException | None) -> None:
            self.active -= 1
            self._acceptor_done(source, message, reply, error)

        try:
            if self.commits.serve_acceptor_soon(message, done):
                return  # the common case: queued at once, answered from the commit's callback
        except Exception as exc:  # closed
            done(None, exc)
            return
        self.background(self._acceptor(source, message))  # the queue is full: wait for a place

    async def _acceptor(self, source: str, message: CasPrepare | CasAccept | CasCommit) -> None:
        reply, error = None, None
        try:
            reply = await self.commits.serve_acceptor(message)
        except Exception as exc:
            error = exc
        finally:
            self.active -= 1
        self._acceptor_done(source, message, reply, error)

    def _acceptor_done(
        self,
        source: str,
        message: CasPrepare | CasAccept | CasCommit,
        reply: CasPromise | CasAccepted | None,
        error: BaseException | None,
    ) -> None:
        if error is not None:  # closed or the store failed: no answer (never one that is not durable)
            log.warning("serving a conditional write's %s for %s failed: %s", type(message).__name__, source, error)
            return
        if reply is None:
            return
        if source == self.node_id:
            self.to_self(reply)
        else:
            self.send(source, reply)
