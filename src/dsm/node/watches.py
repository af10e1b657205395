"""Watches: the committed changes of the keys under a prefix, in commit order, for readers that follow them;
each event with the cursor to resume from (`dsm.core.watch_cursor`), on this node or any other.

`Watches` subscribes to the node's commits (`Commits.subscribe`) and offers each committed change of a
client key (`Commit.changes`: local writes and replicated ones alike) to every open watch whose prefix it
matches, with the commit's stamp. An event is the key's state in that commit (`Event`), and its cursor
says the watch is complete up to that commit (one below its stamp while more keys of the same commit follow).

A watch opened with a cursor (`since`) first catches up, then goes live without a gap: it subscribes when
it is opened, so every later commit is queued, and then
- on the cursor's own node and store epoch (`Plan.SAME_NODE`), replays the rows changed after the cursor's
  stamp (`BackingStore.changed_since`, paged in (seq, key) order: each key once, in its current state),
  and then delivers the queued commits stamped above the last row it replayed (those at or below it are
  already in the replayed rows: commits are stored one at a time, in stamp order);
- on another node, when it keeps a sync point of the cursor's node that covers the cursor (`Plan.SYNC_POINT`,
  `watch_cursor.choose`; the sync points anti-entropy left are read from the store's metadata,
  `dsm.node.sync_points`, when the watch starts), replays its own rows changed after the sync point's stamp
  of its own, exactly as above; its cursors are then this node's;
- otherwise (`Plan.RESYNC`), sends `Resync(begin)`, the current state of every key under the prefix
  (tombstones included; paged by key), then `Resync(end)` with a cursor of this node at the last commit
  before the watch was opened, and delivers every queued commit.

Expiries: a key that becomes absent by expiry is reported too, though nothing is committed then. A live
watch keeps an expiry mark (in its cursors): it asks the store for the keys under its prefix that expired
after the mark (`dsm.node.expiries`, by the node's wall clock), hands each out as an event with `expired`
and `deleted` set, before the queued commits, and sleeps until the next expiry under its prefix; a commit
that stores a key with an earlier expiry wakes it sooner. A new watch reports the expiries from its opening
on, a resumed one from its cursor's mark.

Bounds and ends: a watch's live queue holds at most `limit` changes. A reader that falls further behind is
not allowed to hold the node's memory: its watch delivers what is queued, then ends with `End("overflow")`
carrying the cursor after the last queued change; a resume from it replays the rest, coalesced per key.
When the node closes, every watch ends the same way with `End("shutdown")`. `close()` (the reader went away)
just stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dsm.core import expiry, watch_cursor
from dsm.core.encoding import DecodeError, decode_versions, digest
from dsm.core.replica import USER_KEYS_START, Commit, Replica
from dsm.core.versions import VersionSet
from dsm.core.watch_cursor import Cursor, Plan
from dsm.node import startup, sync_points
from dsm.node.checks import prefix_end
from dsm.node.expiries import Expiries
from dsm.storage.base import BackingStore

#: Rows read per page while a watch replays or resyncs.
PAGE_ROWS = 500


@dataclass(frozen=True, slots=True)
class Event:
    """A key's state, as a watch delivers it.

    Attributes:
        key: the key.
        timestamp: the hybrid-logical-clock timestamp of its newest version.
        writer: the node that accepted that version.
        deleted: no value is readable (the newest version is a delete, or every value expired).
        expired: values are held, but every one has expired.
        digest: the stored row's digest (equal on two nodes holding the same versions).
        local: written through this node.
        cursor: where the watch stands after this event (resume from it).
        value: the newest readable value, when the watch asked for values and there is one.
    """

    key: str
    timestamp: int
    writer: str
    deleted: bool
    expired: bool
    digest: int
    local: bool
    cursor: str
    value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Resync:
    """The bounds of a resync: `begin`, then the current state of every key under the prefix, then the end,
    with the cursor after it. A key the reader holds that the resync did not list is gone."""

    begin: bool
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class End:
    """The node ended the watch (`reason`: 'overflow' or 'shutdown'); resume from `cursor`."""

    reason: str
    cursor: str


Item = Event | Resync | End


def state_of(
    versions: VersionSet, node_id: str, now_ms: int, values: bool
) -> tuple[int, str, bool, bool, bool, bytes | None]:
    """(timestamp, writer, deleted, expired, local, value) of a key holding `versions`, read at `now_ms`."""
    newest = max(versions.versions, key=lambda v: v.dot.timestamp)
    readable = versions.live_at(now_ms)
    deleted = not readable
    expired = deleted and bool(versions.live)
    value = None
    if values and readable:
        value = max(readable, key=lambda v: v.dot.timestamp).value
    return newest.dot.timestamp, newest.dot.node, deleted, expired, newest.dot.node == node_id, value


class Watch:
    """The changes of the keys under a prefix (see the module docstring): an async iterator of `Event`s,
    `Resync` bounds and a last `End`. `cursor` is where the reader stands; `close()` stops the watch.

    Cancelling a wait for the next item (a reader's timeout) loses nothing: the catch-up changes its state
    only once a page has been read, and the live queue only when an item is handed out.
    """

    def __init__(
        self, hub: Watches, prefix: str, limit: int, since: Cursor | None, values: bool, on_end: Callable[[Watch], None]
    ) -> None:
        self.prefix = prefix
        self.values = values
        self._hub = hub
        self._limit = limit
        self._on_end = on_end
        self._lo = max(prefix, USER_KEYS_START)
        self._hi = prefix_end(prefix)
        # Live changes, in commit order: (stamp, position after it, event).
        self._queue: deque[tuple[int, int, Event]] = deque()
        # Items of the catch-up read but not handed out yet: (position after it, item).
        self._pending: deque[tuple[int, Item]] = deque()
        self._wake: asyncio.Future[None] | None = None
        # Expiry events ready to hand out: (expiry mark after it, event); and when to look for more (Unix ms).
        self._expired: deque[tuple[int, Event]] = deque()
        self._expiry_due_ms = 0
        self._end: str | None = None
        #: Why the node ended the watch (None: it did not, or not yet).
        self.end_reason: str | None = None
        self.closed = False
        #: The stamp of the last commit offered (or before the watch opened), and the stamp up to which the
        #: reader has been given everything.
        self._opened_at = self._seen = self._position = hub.last_stamp
        #: The expiry mark: every key under the prefix that expired up to it has been handed out (a new watch
        #: reports the expiries from its opening on; a resumed one from its cursor's mark).
        self._expiry_ms = hub.wall_ms()
        self._since_text: str | None = None
        #: How the watch catches up (None: it is live).
        self.plan: Plan | None = None
        self._caught_up = False
        # The catch-up's next page: after (stamp, key) for a replay, from a key for a resync.
        self._page_stamp, self._page_from = 0, self._lo
        self._page_after: str | None = None
        self._skip_through = 0
        #: The cursor of another node, while the watch has not yet read the sync points it keeps.
        self.deciding: Cursor | None = None
        if since is not None:
            resume = watch_cursor.choose(since, hub.node_id, hub.epoch, hub.wall_ms(), hub.grace_ms)
            if resume.plan is Plan.RESYNC and since.node != hub.node_id:
                self.deciding = since  # a sync point may cover it (`_decide`); until then, as a resync
                self.plan = Plan.RESYNC
                self._since_text = watch_cursor.encode(since)
            else:
                self._start(since, resume)

    def _start(self, since: Cursor, resume: watch_cursor.Resume) -> None:
        """Sets the catch-up going: a replay of this node's rows after `resume.after`, or a resync."""
        self.plan = resume.plan
        if resume.plan is Plan.RESYNC:
            self._since_text = watch_cursor.encode(since)
            self._pending.append((self._position, Resync(True)))
        else:
            self._position = self._page_stamp = resume.after
            self._expiry_ms = since.expiry_ms

    async def _decide(self, since: Cursor) -> None:
        """Chooses how to resume from another node's cursor, with the sync points this node keeps."""
        hub = self._hub
        held = await sync_points.read(hub.store, hub.epoch)
        resume = watch_cursor.choose(since, hub.node_id, hub.epoch, hub.wall_ms(), hub.grace_ms, held.of(since.node))
        self.deciding = None
        self._start(since, resume)
        hub.resumes[resume.plan.value] += 1

    # --- what the node's commits offer

    def offer(self, stamp: int, events: list[tuple[int, Event]]) -> None:
        """Queues a commit's events (position after each, event) for the reader (ends the watch if the
        reader is `limit` behind)."""
        if self.closed:
            return
        if events:
            if len(self._queue) + len(events) > self._limit:
                self.finish("overflow")
                return
            self._queue.extend((stamp, pos, event) for pos, event in events)
            self._notify()
        self._seen = stamp

    def make_cursor(self, stamp: int) -> str:
        return watch_cursor.encode(Cursor(self._hub.node_id, self._hub.epoch, stamp, self._expiry_ms))

    @property
    def cursor(self) -> str:
        """Where the reader stands now: resuming from it misses nothing it has not been given (after a sync
        point's replay started, this node's cursor at its stamp: see `dsm.core.reconcile`, "Sync points")."""
        if self.plan is Plan.RESYNC:
            assert self._since_text is not None
            return self._since_text  # mid-resync: a resume resyncs again
        if self.plan is None and not self._queue and self._end is None:
            return self.make_cursor(max(self._position, self._seen))
        return self.make_cursor(self._position)

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def finish(self, reason: str | None) -> None:
        """Ends the watch: the reader gets what is queued, then `End(reason)` with its cursor (None: the
        iteration just stops)."""
        if not self.closed:
            self.closed = True
            self._end = self.end_reason = reason
            self._on_end(self)
            self._notify()

    def close(self) -> None:
        """Stops the watch (its reader went away); changes already queued are dropped."""
        self._queue.clear()
        self._pending.clear()
        self._expired.clear()
        self.finish(None)

    # --- what the reader gets

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Item:
        while self.plan is not None:
            if self.closed:
                return self._ending()  # the catch-up stops; a resume from the cursor continues it
            if self._pending:
                position, item = self._pending.popleft()
                self._position = position
                if self._caught_up and not self._pending:
                    self.plan = None  # live from here: `cursor` is this node's (a resync's end was handed out)
                return item
            if self.deciding is not None:
                await self._decide(self.deciding)
            elif self._caught_up:
                # Live from here; the queued commits the catch-up already covered are skipped.
                self.plan = None
            elif self.plan is not Plan.RESYNC:
                await self._replay_page()
            else:
                await self._resync_page()
        queue = self._queue
        while True:
            if self._expired and not self.closed:
                # Before the queued commits: their cursors carry the mark of when they were queued, which
                # must not pass an expiry not handed out yet (a resume from them would miss it).
                self._expiry_ms, event = self._expired.popleft()
                return event
            while queue:
                stamp, position, event = queue.popleft()
                if stamp <= self._skip_through:
                    continue  # the catch-up gave this key in this state or a later one
                self._position = position
                return event
            if self.closed:
                return self._ending()
            wait_ms = self._expiry_due_ms - self._hub.wall_ms()
            if wait_ms <= 0:
                await self._expiry_page()
                continue
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(wait_ms / 1000):
                    await self._wake
            except TimeoutError:
                pass  # time to look for expired keys
            finally:
                self._wake = None

    async def _expiry_page(self) -> None:
        """Looks for the keys under the prefix that expired since the mark (`dsm.node.expiries`): queues a page
        of expired events, each with the mark after it in its cursor, and sets when to look again."""
        hub, mark = self._hub, self._expiry_ms
        async with contextlib.aclosing(hub.expiries.pages(self._lo, self._hi, mark)) as pages:
            async for rows, page_mark in pages:
                if not rows:
                    # Nothing expired up to now. The mark stays where it is: a quiet watch's cursor does not
                    # change (looking again from it costs an empty index range).
                    break
                now_ms = hub.wall_ms()
                marks = expiry.marks_after([row[2] for row in rows], mark, page_mark)
                for (key, encoded, _), after in zip(rows, marks, strict=True):
                    cursor = watch_cursor.encode(Cursor(hub.node_id, hub.epoch, self._position, after))
                    event = hub.event_of(key, encoded, now_ms, self, cursor)
                    if event is not None:
                        self._expired.append((after, event))
                if not self._expired:  # only unreadable rows: nothing to hand out, the mark moves past them
                    self._expiry_ms = page_mark
                self._expiry_due_ms = 0  # a page at a time: look again once it is handed out
                return
        self._expiry_due_ms = await hub.expiries.wake_at(self._lo, self._hi, hub.wall_ms())

    def expiry_at(self, expires_ms: int) -> None:
        """A commit stored a key under the prefix that becomes absent at `expires_ms`: the watch looks for
        expired keys then at the latest (it may be sooner than the wake-up it had planned)."""
        if expires_ms < self._expiry_due_ms:
            self._expiry_due_ms = expires_ms
            self._notify()

    def _ending(self) -> End:
        """The last item of a watch the node ended (then the iteration stops)."""
        if self._end is None:
            raise StopAsyncIteration
        end = End(self._end, self.cursor)
        self._end = None
        return end

    async def _replay_page(self) -> None:
        """Reads the next page of the rows under the prefix changed after the cursor's stamp, each in its
        current state."""
        hub = self._hub
        page = await hub.store.changed_since(self._page_stamp, self._lo, self._hi, self._page_after, PAGE_ROWS)
        now_ms = hub.wall_ms()
        full = len(page) == PAGE_ROWS
        for i, (key, encoded, seq) in enumerate(page):
            more = page[i + 1][2] == seq if i + 1 < len(page) else full
            position = watch_cursor.position(seq, more)
            event = hub.event_of(key, encoded, now_ms, self, self.make_cursor(position))
            if event is not None:
                self._pending.append((position, event))
        if page:
            self._page_stamp, self._page_after = page[-1][2], page[-1][0]
        if not full:
            self._caught_up = True
            self._skip_through = self._page_stamp
            if not self._pending:  # an empty last page: the reader has everything up to the last row
                self._position = max(self._position, self._page_stamp)

    async def _resync_page(self) -> None:
        """Reads the next page of every key under the prefix, in its current state."""
        hub = self._hub
        page = await hub.store.scan(self._page_from, self._hi, PAGE_ROWS)
        found = await hub.store.read_many([key for key, _ in page])
        now_ms = hub.wall_ms()
        assert self._since_text is not None
        for key, _ in page:
            encoded = found.get(key)
            event = None if encoded is None else hub.event_of(key, encoded, now_ms, self, self._since_text)
            if event is not None:
                self._pending.append((self._position, event))
        if page:
            self._page_from = page[-1][0] + "\x00"
        if len(page) < PAGE_ROWS:
            # Every commit after the last one before the watch opened is queued, whatever the resync read.
            self._caught_up = True
            self._skip_through = self._opened_at
            self._pending.append((self._opened_at, Resync(False, self.make_cursor(self._opened_at))))


class Watches:
    """The open watches of one node (see the module docstring).

    Args:
        store: the node's store (replays and resyncs read it).
        replica: the node's replica (its clock gives the position of a watch opened before any commit).
        wall_ms: the wall clock, Unix ms.
        grace_ms: the tombstone grace period (an older cursor is resynced, see `watch_cursor.plan`).
    """

    def __init__(self, store: BackingStore, replica: Replica, wall_ms: Callable[[], int], grace_ms: int) -> None:
        self.store = store
        self.replica = replica
        self.node_id = replica.node_id
        self.wall_ms = wall_ms
        self.grace_ms = grace_ms
        self._open: set[Watch] = set()
        #: Watches opened with a cursor, by how they caught up ('same_node', 'sync_point', 'resync'); watches
        #: ended because their reader fell `limit` behind.
        self.resumes: dict[str, int] = {plan.value: 0 for plan in Plan}
        self.overflows = 0
        #: The keys that expired, for the watches' expiry events.
        self.expiries = Expiries(store, wall_ms)
        #: The store's epoch (read by `start`).
        self.epoch = 0
        #: The stamp of the last commit published, or a clock reading above every earlier stamp.
        self.last_stamp = 0

    def __len__(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        """Reads the store's epoch, once the store is open, and where a watch opened before any commit
        stands: at or above every stamp this store has given, below every stamp to come. Never a clock
        reading of its own, which the store does not record: a restart with a wall clock behind restarts the
        clock from what is stored, and could stamp later commits below such a reading."""
        self.epoch = await startup.store_epoch(self.store)
        self.last_stamp = max(self.last_stamp, sync_points.stamp_bound(self.replica, self.wall_ms()))

    def open(self, prefix: str, limit: int, since: Cursor | None = None, values: bool = False) -> Watch:
        watch = Watch(self, prefix, limit, since, values, self._ended)
        self._open.add(watch)
        if watch.plan is not None and watch.deciding is None:  # else counted once decided
            self.resumes[watch.plan.value] += 1
        return watch

    def _ended(self, watch: Watch) -> None:
        self._open.discard(watch)
        if watch.end_reason == "overflow":
            self.overflows += 1

    def event_of(self, key: str, encoded: bytes, now_ms: int, watch: Watch, cursor: str) -> Event | None:
        """The event of a stored row, with `cursor` (None: unreadable, left for an operator; reads report it)."""
        try:
            versions = decode_versions(encoded)
        except DecodeError:
            return None
        if not versions.versions:
            return None
        ts, writer, deleted, expired, local, value = state_of(versions, self.node_id, now_ms, watch.values)
        return Event(key, ts, writer, deleted, expired, digest(key, encoded), local, cursor, value)

    def on_commit(self, commit: Commit) -> None:
        """Offers a commit's changes to the watches they concern (a `Commits` listener)."""
        if not commit.rows:
            return
        stamp = commit.stamp
        self.last_stamp = max(self.last_stamp, stamp)
        if not self._open:
            return
        changes = commit.changes()
        now_ms = self.wall_ms()
        for watch in list(self._open):
            matching = [c for c in changes if c.key.startswith(watch.prefix)]
            events: list[tuple[int, Event]] = []
            for i, change in enumerate(matching):
                position = watch_cursor.position(stamp, i + 1 < len(matching))
                versions = commit.states[change.key]
                _, _, deleted, expired, _, value = state_of(versions, self.node_id, now_ms, watch.values)
                event = Event(
                    change.key, change.timestamp, change.writer, deleted, expired, change.digest, change.local,
                    watch.make_cursor(position), value,
                )  # fmt: skip
                events.append((position, event))
            watch.offer(stamp, events)
            for row in commit.rows:
                if row.expires_ms is not None and row.key.startswith(watch.prefix):
                    watch.expiry_at(row.expires_ms)

    def end_all(self, reason: str = "shutdown") -> None:
        """Ends every watch (the node closed): each reader gets what is queued, then `End(reason)`."""
        for watch in list(self._open):
            watch.finish(reason)
