"""Watches: the committed changes of the keys under a prefix, in commit order, for readers that follow them.

`Watches` subscribes to the node's commits (`Commits.subscribe`) and offers each committed change of a
client key (`Commit.changes`: local writes and replicated ones alike) to every open watch whose prefix it
matches. A watch's queue is bounded: a reader that falls `limit` changes behind is not allowed to hold the
node's memory; its watch ends with `WatchOverflowError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from dsm.core.replica import Change, Commit
from dsm.errors import WatchOverflowError


class Watch:
    """The committed changes of the keys under a prefix, in commit order, from the moment of `watch()`.

    An async iterator of `Change`s. Its queue is bounded (`limit`): a reader that falls that far behind is
    not allowed to hold the node's memory, its watch ends with `WatchOverflowError` (start a new one and
    re-read what it needs). `close()` ends it; iteration then stops.
    """

    def __init__(self, prefix: str, limit: int, on_end: Callable[[Watch], None]) -> None:
        self.prefix = prefix
        self._limit = limit
        self._on_end = on_end
        self._queue: deque[Change] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._end: BaseException | None = None
        self.closed = False

    def offer(self, change: Change) -> None:
        """Queues a change for the reader (ends the watch if the reader is `limit` behind)."""
        if self.closed:
            return
        if len(self._queue) >= self._limit:
            self.finish(WatchOverflowError(f"watch of {self.prefix!r} fell {self._limit} changes behind"))
            return
        self._queue.append(change)
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def finish(self, end: BaseException | None) -> None:
        """Ends the watch: the reader gets what is queued, then `end` (None: the iteration stops)."""
        if not self.closed:
            self.closed = True
            self._end = end
            self._on_end(self)
            self._notify()

    def close(self) -> None:
        """Ends the watch; changes already queued are dropped."""
        self._queue.clear()
        self.finish(None)

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Change:
        while not self._queue:
            if self.closed:
                if self._end is not None:
                    end, self._end = self._end, None
                    raise end
                raise StopAsyncIteration
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
            self._wake = None
        return self._queue.popleft()


class Watches:
    """The open watches of one node (see the module docstring)."""

    def __init__(self) -> None:
        self._open: set[Watch] = set()

    def __len__(self) -> int:
        return len(self._open)

    def open(self, prefix: str, limit: int) -> Watch:
        watch = Watch(prefix, limit, self._open.discard)
        self._open.add(watch)
        return watch

    def on_commit(self, commit: Commit) -> None:
        """Offers a commit's changes to the watches they concern (a `Commits` listener)."""
        if not self._open or not commit.rows:
            return
        for change in commit.changes():
            for watch in [w for w in self._open if change.key.startswith(w.prefix)]:
                watch.offer(change)

    def end_all(self) -> None:
        """Ends every watch (the node closed): their readers stop without error."""
        for watch in list(self._open):
            watch.finish(None)
