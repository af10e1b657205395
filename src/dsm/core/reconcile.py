"""Anti-entropy: range-based set reconciliation of two whole replicas.

Two nodes compare their stores by key ranges (keys in code-point order, as every backing store sorts
them). A range is summarised by a fingerprint: the number of keys in it and two 32-bit sums of the keys'
64-bit digests (`dsm.storage.base.RangeDigest`, computed identically by every store; a key's digest covers
the key and its whole encoded version set, so any difference in any version shows).

One message (`Reconcile`) carries runs of consecutive ranges, each in one of five modes:
- FINGERPRINT (a summary: the 64-bit fingerprint with the count mixed in): the receiver compares with
  its own. Equal: nothing more is said of the range. Different: if the receiver holds at most
  `IDLIST_MAX` keys there, it answers with their digests (IDLIST); if it holds more than `SKETCH_MIN`, with
  a difference sketch of them (SKETCH, `FIRST_CELLS` cells); otherwise it splits the range at its own keys
  into `PARTS` parts of equal count and answers with their summaries.
- SKETCH (an invertible Bloom lookup table of the sender's digests in the range, `sketch.py`): the
  receiver builds its own of the same size and subtracts. If the difference peels, it sends the entries
  only it holds and FETCHes the digests only the sender holds: done in about one round trip, with traffic
  proportional to the differences and independent of the store size. If not, it estimates the number of
  differences from the empty cells and answers with a sketch large enough for them (several, one per
  sub-range, beyond `sketch.MAX_CELLS`), or, when most of the range differs (a replica that missed
  much), with an IDLIST or a split as above.
- IDLIST (digests, cut to 4 bytes salted by the session, `short`): the receiver sends every entry of
  the range whose digest is not listed (the sender lacks it or holds another version set) and answers
  WANT with the listed digests it does not hold. If it holds more than `ENTRIES_MAX` keys there, it
  splits the range instead, so no step moves an unbounded number of entries.
- WANT (short digests): the receiver sends the entries with those digests.
- FETCH (full 64-bit digests from a peeled sketch): the receiver sends the entries with those digests.
Entries travel in the same message (key, encoded version set) and are merged by the receiver as any
other write; differing versions of one key are sent both ways, so both sides end with the merge.

The exchange is stateless: each message is answered from the receiver's store alone, and an exchange
ends when an answer would be empty: that answer is sent as an explicit end (`end`: an empty message, which
is never answered), so both sides know the exchange ended. One whole-store fingerprint when nothing
differs; a sketch of 96 cells (1.3 KB) then the entries for a few differences; larger sketches, each sized
from the last, for more; range splitting (about PARTS fingerprints per level and differing range, then
digest lists) for small ranges and for replicas that differ almost everywhere. A message holds at most
`max_entries_bytes` of entries; the rest of a step waits for the next exchange.

On the wire a run is compact: its bounds are prefix-compressed (each shares a prefix with the one before)
and its summaries (8 bytes) or digests (4 bytes) are one packed string (`encode_run`).

Sync points (what a watch resumed on another node rests on, `dsm.core.watch_cursor`). Each side records,
per exchange, its own commit stamp at the start of its first step (`anti_entropy.Exchanges`: the last commit
stored before the step's read snapshot, so the snapshot holds the state B@b of every commit up to stamp b,
and a row changed later carries a higher seq). When A has seen the end, merged every entry B sent in the
exchange with no refusal, and B answered every step in full (`Answer.complete`: no entries left over for
`max_entries_bytes`, no WANT left unanswered), A sends B `SyncPoint(A's epoch, a)`, a being A's last commit
stamp after those merges, and B keeps `(A, epoch, a, b)`. The lemma: **for every key k that B held at b,
either A at a holds or dominates B's versions of k at b, or B's row of k changed after b (its seq > b)**.
Why: B's snapshots in the exchange all hold B@b (a node's rows only grow: every merge keeps or dominates
what it held; purged tombstones aside, see below). The exchange starts with the whole key space in
question, and every range in question is, at some step, either (1) found equal: A's snapshot then held
exactly B's rows of a snapshot S ⊒ B@b there, (2) answered with B's entries of S, which A merged without
refusal, or (3) handed on as smaller ranges, sketches or digest lists that the next step answers; an exchange
that ended left no range in question, and a step that answered less (a cut, an unanswered WANT) marks
it incomplete. In (1) and (2) A got k's row of S, so A holds or dominates it, and k's row of S either is its
row at b or changed after b. The one way B can leave out a key it was asked for in full is that its digest
changed since B listed it (a WANT or FETCH finds rows by digest), and then the row changed after b. A's
state only grows after the step, up to a. Two failure modes are probabilistic, as anti-entropy already is:
4-byte `short` digests colliding (about 2^-32 per pair of keys per exchange) and a sketch peeling wrongly.
Hence a watch cursor (A, epoch, s) with a <= s resumes on B by replaying B's rows with seq > b: a version B
holds now that A did not hold at s reached B after b (it was not in B@b, whose every key A held or dominated
at a <= s, or its row changed after b), so its row has seq > b; the replay's extra rows (B's changes between
b and s that the cursor already covered) are duplicates of the same writer and timestamp. A tombstone B
purged after b (its death older than the grace period) was either held by A at s, and the reader saw the
delete, or reached A after s, which a replay on A itself would miss too: the cursor's own age is what
`watch_cursor.choose` bounds by the grace period, as on one node.

The algorithm reads the store through `RangeView`, a small synchronous interface: `SortedReplica` (here,
in memory: the simulator and tests) and `SqlRangeView` (SQLite and PostgreSQL, `dsm.storage.sqlview`).
The core stays deterministic: given the same view contents and message it answers the same; the network
runtime runs a step off its event loop, against a read snapshot.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from dsm.core.encoding import digest as entry_digest
from dsm.core.messages import Reconcile, Run
from dsm.core.sketch import CELL_BYTES, GOLDEN, MASK64, MAX_CELLS, Sketch, cells_for, estimate, salt_of, signed64

MASK32 = 0xFFFFFFFF
#: Parts a differing range is split into.
PARTS = 16
#: A differing range with at most this many keys is answered with their digests.
IDLIST_MAX = 32
#: A range is split rather than answered with entries while the sender holds more than this many keys.
ENTRIES_MAX = 4 * IDLIST_MAX

#: A differing range where the receiver holds more keys than this is answered with a difference sketch.
SKETCH_MIN = 1024
#: Cells of the first sketch of a range (1.3 KB; peels up to about 40 differing digests).
FIRST_CELLS = 96
#: Most sketch bytes one message carries (beyond that, ranges are split by fingerprints instead).
MAX_SKETCH_BYTES = 4 << 20

FINGERPRINT = 0
IDLIST = 1
WANT = 2
SKETCH = 3
FETCH = 4
MODES = (FINGERPRINT, IDLIST, WANT, SKETCH, FETCH)

#: Limits on what one message may ask (checked before any work): runs, values per run, bound length.
MAX_RUNS = 4096
MAX_VALUES = 4096
MAX_BOUND = 4096


class RangeView(Protocol):
    """What reconciliation reads of a store."""

    def fingerprint(self, lo: str, hi: str | None) -> tuple[int, int]:
        """(count, fingerprint) of the keys in [lo, hi)."""

    def split(self, lo: str, hi: str | None, parts: int) -> list[tuple[str, int, int]]:
        """[lo, hi) cut at its own keys into at most `parts` ranges of about equal count: (lower bound,
        count, fingerprint) each, in order; the first lower bound is `lo`."""

    def digests(self, lo: str, hi: str | None) -> list[tuple[str, int]]:
        """(key, digest) of every key in [lo, hi), in order."""

    def entries(self, keys: Sequence[str]) -> list[tuple[str, bytes]]:
        """(key, encoded versions) of those keys."""

    def sketch(self, lo: str, hi: str | None, cells: int, salt: int) -> Sketch:
        """The difference sketch (`sketch.Sketch`) of the digests of the keys in [lo, hi)."""

    def keys_of(self, lo: str, hi: str | None, digests: Sequence[int]) -> list[str]:
        """The keys in [lo, hi) whose digest (as an unsigned 64-bit int) is one of `digests`."""


def fold(count: int, low: int, high: int) -> tuple[int, int]:
    """The (count, fingerprint) of a range from its count and digest-half sums."""
    return count, ((high & MASK32) << 32) | (low & MASK32)


def short(digest: int, session: int) -> int:
    """A key digest cut to 4 bytes for digest lists, salted by the session: two different entries of one
    small range collide with probability about 2**-32 (the difference then waits for the next session,
    whose salt differs)."""
    salt = (session * 0xD6E8FEB86659FD93 + 1) & MASK64
    return ((((digest & MASK64) ^ salt) * GOLDEN) & MASK64) >> 32


def summary(count: int, fp: int) -> int:
    """What a message carries for a range: its fingerprint with its count mixed in (8 bytes)."""
    return signed64(fp + count * GOLDEN)


# --- the compact form of runs (see messages.Run) ---


def encode_run(lo: str, hi: str | None, mode: int, bounds: Sequence[str], values: Sequence[int]) -> Run:
    """A run from `lo` to `hi`: for FINGERPRINT, len(bounds) + 1 consecutive ranges cut at `bounds`, one
    summary each; for IDLIST and WANT, the one range [lo, hi) and its digests. Each bound is sent as the
    length of the prefix it shares with the previous bound (one byte, at most 255) and the rest."""
    shared = bytearray()
    suffixes = []
    previous = lo
    for bound in bounds:
        n = 0
        limit = min(len(previous), len(bound), 255)
        while n < limit and previous[n] == bound[n]:
            n += 1
        shared.append(n)
        suffixes.append(bound[n:])
        previous = bound
    if mode == FINGERPRINT:
        packed = struct.pack(f">{len(values)}q", *(signed64(v) for v in values))
    elif mode == FETCH:
        packed = struct.pack(f">{len(values)}Q", *values)
    else:
        packed = struct.pack(f">{len(values)}I", *values)
    return (lo, hi, mode, bytes(shared), tuple(suffixes), packed)


def sketch_run(lo: str, hi: str | None, sketch: Sketch) -> Run:
    """A SKETCH run: the difference sketch of the sender's keys in [lo, hi)."""
    return (lo, hi, SKETCH, b"", (), sketch.to_bytes())


def decode_run(run: Run) -> tuple[str, str | None, int, list[str], tuple[int, ...] | Sketch]:
    """(lo, hi, mode, bounds, values) of a run (for SKETCH, values is the `Sketch`); raises ValueError on a
    malformed one (wrong types, an unknown mode, bounds out of order, more than MAX_VALUES values, bounds
    longer than MAX_BOUND, a malformed or oversized sketch)."""
    try:
        lo, hi, mode, shared, suffixes, packed = run
    except (TypeError, ValueError):
        raise ValueError("malformed anti-entropy run") from None
    if (
        not isinstance(lo, str)
        or not (hi is None or isinstance(hi, str))
        or mode not in MODES
        or not isinstance(shared, bytes)
        or not isinstance(packed, bytes)
        or not isinstance(suffixes, tuple | list)
        or len(lo) > MAX_BOUND
        or (hi is not None and (len(hi) > MAX_BOUND or hi <= lo))
    ):
        raise ValueError("malformed anti-entropy run")
    if mode == SKETCH:
        if shared or suffixes:
            raise ValueError("malformed anti-entropy run: a sketch has no bounds")
        return lo, hi, mode, [], Sketch.from_bytes(packed)
    width = 8 if mode in (FINGERPRINT, FETCH) else 4
    if len(shared) != len(suffixes) or len(packed) % width or len(packed) // width > MAX_VALUES:
        raise ValueError("malformed anti-entropy run")
    bounds = []
    previous = lo
    for n, rest in zip(shared, suffixes, strict=True):
        if not isinstance(rest, str) or n + len(rest) > MAX_BOUND:
            raise ValueError("anti-entropy run: bound too long")
        bound = previous[:n] + rest
        if bound <= previous or (hi is not None and bound >= hi):
            raise ValueError("anti-entropy run: bounds out of order")
        previous = bound
        bounds.append(bound)
    code = "q" if mode == FINGERPRINT else "Q" if mode == FETCH else "I"
    values = struct.unpack(f">{len(packed) // width}{code}", packed)
    if mode == FINGERPRINT and len(values) != len(bounds) + 1:
        raise ValueError("anti-entropy run: one summary per range expected")
    return lo, hi, mode, bounds, values


def opening(session: int, source: str, view: RangeView) -> Reconcile:
    """The first message of an exchange: the summary of the whole store."""
    return Reconcile(
        session, source, (encode_run("", None, FINGERPRINT, (), (summary(*view.fingerprint("", None)),)),), ()
    )


#: Most entries read from the store at once while answering (reading stops at the byte cap).
ENTRY_CHUNK = 512


def is_end(message: Reconcile) -> bool:
    """Whether `message` is an exchange's explicit end: no runs, no entries (nothing left to say)."""
    return not message.runs and not message.entries


def end(session: int, source: str) -> Reconcile:
    """The explicit end of an exchange: sent instead of an empty answer, so both sides know it ended (a node
    built before sync points answers it with nothing, as any message that asks nothing)."""
    return Reconcile(session, source, (), ())


class Answer(NamedTuple):
    """What answering a message gives: the reply (None: nothing left to say), the entries the message
    carried (for the caller to merge), and whether the reply says everything the message asked for
    (`complete`: False when entries were left for the next exchange by `max_entries_bytes`, or a WANT over a
    range grown too large was not answered; then no sync point may rest on this exchange)."""

    reply: Reconcile | None
    entries: tuple[tuple[str, bytes], ...]
    complete: bool


def answer(
    message: Reconcile, source: str, view: RangeView, max_entries_bytes: int = 1 << 20
) -> tuple[Reconcile | None, tuple[tuple[str, bytes], ...]]:
    """The reply to `message` (None when there is nothing left to say) and the entries it carried, which
    the caller merges into its store. Call this before merging those entries (the reply describes the
    store as it was when the message was answered; the peer learns the rest in the next exchange).
    Raises ValueError on a malformed message."""
    reply, entries, _ = answer_step(message, source, view, max_entries_bytes)
    return reply, entries


def answer_step(message: Reconcile, source: str, view: RangeView, max_entries_bytes: int = 1 << 20) -> Answer:
    """`answer`, and whether the reply is complete (`Answer`). Raises ValueError on a malformed message."""
    session = message.session
    if not isinstance(session, int) or not isinstance(message.runs, tuple | list) or len(message.runs) > MAX_RUNS:
        raise ValueError("malformed anti-entropy message")
    out = _Reply(session)
    for run in message.runs:
        lo, hi, mode, bounds, values = decode_run(run)
        if isinstance(values, Sketch):
            _on_sketch(view, lo, hi, values, out)
        elif mode == FINGERPRINT:
            uppers: list[str | None] = [*bounds, hi]
            start = lo
            for upper, value in zip(uppers, values, strict=True):
                _on_fingerprint(view, start, upper, value, out)
                if upper is None:
                    break
                start = upper
        elif mode == IDLIST:
            _on_idlist(view, lo, hi, values, out)
        elif mode == WANT:
            # Only ranges small enough to have been listed in full are answered (a larger one is not what
            # this side sent, and would make it read a whole range); the exchange is then incomplete.
            if view.fingerprint(lo, hi)[0] <= ENTRIES_MAX:
                wanted = set(values)
                out.send.extend(k for k, d in view.digests(lo, hi) if short(d, session) in wanted)
            else:
                out.complete = False
        elif mode == FETCH:
            out.send.extend(view.keys_of(lo, hi, values))
    out_runs, send_keys = out.runs, out.send
    entries: list[tuple[str, bytes]] = []
    size = 0
    # Read in chunks and stop at the byte cap: what does not fit is found again in the next exchange.
    for first in range(0, len(send_keys), ENTRY_CHUNK):
        for key, versions in view.entries(send_keys[first : first + ENTRY_CHUNK]):
            size += len(key) + len(versions) + 8
            if size > max_entries_bytes and entries:
                out.complete = False
                break
            entries.append((key, versions))
        if size > max_entries_bytes:
            if first + ENTRY_CHUNK < len(send_keys):
                out.complete = False
            break
    if not out_runs and not entries:
        return Answer(None, message.entries, out.complete)
    return Answer(Reconcile(message.session, source, tuple(out_runs), tuple(entries)), message.entries, out.complete)


class _Reply:
    """What an answer collects: runs, keys whose entries to send, room left for sketches, and whether
    everything asked was answered."""

    __slots__ = ("complete", "room", "runs", "salt", "send", "session")

    def __init__(self, session: int) -> None:
        self.session = session
        self.salt = salt_of(session)
        self.runs: list[Run] = []
        self.send: list[str] = []
        self.room = MAX_SKETCH_BYTES
        self.complete = True


def _on_fingerprint(view: RangeView, lo: str, hi: str | None, value: int, out: _Reply) -> None:
    count, fp = view.fingerprint(lo, hi)
    if summary(count, fp) == value:
        return
    if count <= IDLIST_MAX:
        _send_idlist(view, lo, hi, out)
    elif count > SKETCH_MIN:
        _send_sketch(view, lo, hi, FIRST_CELLS, out)
    else:
        _split_into(view, lo, hi, out.runs)


def _send_idlist(view: RangeView, lo: str, hi: str | None, out: _Reply) -> None:
    out.runs.append(encode_run(lo, hi, IDLIST, (), [short(d, out.session) for _, d in view.digests(lo, hi)]))


def _on_idlist(view: RangeView, lo: str, hi: str | None, values: tuple[int, ...], out: _Reply) -> None:
    count, _ = view.fingerprint(lo, hi)
    if count > ENTRIES_MAX:
        _split_into(view, lo, hi, out.runs)
        return
    mine = [(k, short(d, out.session)) for k, d in view.digests(lo, hi)]
    theirs = set(values)
    have = {d for _, d in mine}
    out.send.extend(k for k, d in mine if d not in theirs)
    want = [d for d in values if d not in have]
    if want:
        out.runs.append(encode_run(lo, hi, WANT, (), want))


def _send_sketch(view: RangeView, lo: str, hi: str | None, cells: int, out: _Reply) -> None:
    size = cells * CELL_BYTES
    if size > out.room:
        _split_into(view, lo, hi, out.runs)
        return
    out.room -= size
    out.runs.append(sketch_run(lo, hi, view.sketch(lo, hi, cells, out.salt)))


def _on_sketch(view: RangeView, lo: str, hi: str | None, theirs: Sketch, out: _Reply) -> None:
    """Subtract the peer's sketch from this side's: if the difference peels, send the entries only this
    side holds and FETCH those only the peer holds; otherwise answer with a larger sketch sized from the
    estimated number of differences (several, one per sub-range, if one would exceed MAX_CELLS), or split
    the range by fingerprints when most of it differs."""
    mine = view.sketch(lo, hi, theirs.cells, out.salt)
    difference = mine.subtract(theirs)
    peeled = difference.peel(out.salt)
    if peeled is not None:
        only_mine, only_theirs = peeled
        if only_mine:
            out.send.extend(view.keys_of(lo, hi, only_mine))
        for i in range(0, len(only_theirs), MAX_VALUES):
            out.runs.append(encode_run(lo, hi, FETCH, (), only_theirs[i : i + MAX_VALUES]))
        return
    guess = estimate(difference)
    if 4 * guess > max(mine.keys, theirs.keys):
        # Mostly different (a replica that missed much): compare by ranges, never by sketch again here.
        if mine.keys <= IDLIST_MAX:
            _send_idlist(view, lo, hi, out)
        else:
            _split_into(view, lo, hi, out.runs)
        return
    if difference.empty_cells() == 0:  # saturated: the guess is only a lower bound
        cells = max(4 * theirs.cells, cells_for(2 * guess))
    else:
        cells = max(2 * theirs.cells, cells_for(guess + guess // 4))
    parts = -(-cells // MAX_CELLS)
    if parts == 1:
        _send_sketch(view, lo, hi, cells, out)
        return
    pieces = view.split(lo, hi, parts)
    each = cells_for((guess + guess // 4) // len(pieces) + 1)
    uppers: list[str | None] = [p[0] for p in pieces[1:]]
    for (start, _, _), upper in zip(pieces, [*uppers, hi], strict=True):
        _send_sketch(view, start, upper, each, out)


def _split_into(view: RangeView, lo: str, hi: str | None, out: list[Run]) -> None:
    parts = view.split(lo, hi, PARTS)
    out.append(encode_run(lo, hi, FINGERPRINT, [p[0] for p in parts[1:]], [summary(c, fp) for _, c, fp in parts]))


class SortedReplica:
    """An in-memory replica that is also a `RangeView`: key -> encoded versions, kept with the keys in
    order and prefix sums of the digest halves (rebuilt lazily after changes), so a range fingerprint
    costs two binary searches. `==` compares the contents."""

    def __init__(self, rows: Mapping[str, bytes] | None = None) -> None:
        self._rows: dict[str, bytes] = {}
        self._digest: dict[str, int] = {}
        self._keys: list[str] = []
        self._low: list[int] = [0]
        self._high: list[int] = [0]
        self._array: np.ndarray | None = None  # the digests in key order, for sketches
        self._dirty = False
        if rows:
            for key, versions in rows.items():
                self._rows[key] = versions
                self._digest[key] = entry_digest(key, versions)
            self._keys = sorted(self._rows)
            self._dirty = True

    # --- mapping

    def get(self, key: str) -> bytes | None:
        return self._rows.get(key)

    def __getitem__(self, key: str) -> bytes:
        return self._rows[key]

    def __setitem__(self, key: str, versions: bytes) -> None:
        self.put(key, versions, entry_digest(key, versions))

    def put(self, key: str, versions: bytes, digest: int) -> None:
        """Stores a row whose digest (`encoding.digest(key, versions)`) the caller already has."""
        if key not in self._rows:
            bisect.insort(self._keys, key)
        self._rows[key] = versions
        self._digest[key] = digest
        self._dirty = True

    def after(self, key: str) -> Iterator[tuple[str, bytes]]:
        """(key, versions) of the keys sorting after `key`, in order."""
        rows = self._rows
        for k in self._keys[bisect.bisect_right(self._keys, key) :]:
            yield k, rows[k]

    def pop(self, key: str, default: bytes | None = None) -> bytes | None:
        if key not in self._rows:
            return default
        self._keys.pop(bisect.bisect_left(self._keys, key))
        del self._digest[key]
        self._dirty = True
        return self._rows.pop(key)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return self._rows.items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SortedReplica):
            return self._rows == dict(other.items())
        if isinstance(other, dict):
            return self._rows == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # --- RangeView

    def _sums(self) -> None:
        if not self._dirty:
            return
        low, high = [0], [0]
        a = b = 0
        digests = self._digest
        for key in self._keys:
            d = digests[key]
            a += d & MASK32
            b += (d >> 32) & MASK32
            low.append(a)
            high.append(b)
        self._low, self._high = low, high
        self._array = None
        self._dirty = False

    def _digest_array(self, i: int, j: int) -> np.ndarray:
        """The digests of keys i..j (in key order) as an int64 array (built on first use after changes)."""
        self._sums()
        if self._array is None:
            digests = self._digest
            self._array = np.fromiter((digests[k] for k in self._keys), dtype=np.int64, count=len(self._keys))
        return self._array[i:j]

    def _bounds(self, lo: str, hi: str | None) -> tuple[int, int]:
        i = bisect.bisect_left(self._keys, lo)
        j = len(self._keys) if hi is None else bisect.bisect_left(self._keys, hi)
        return i, max(i, j)

    def fingerprint(self, lo: str, hi: str | None) -> tuple[int, int]:
        self._sums()
        i, j = self._bounds(lo, hi)
        return fold(j - i, self._low[j] - self._low[i], self._high[j] - self._high[i])

    def split(self, lo: str, hi: str | None, parts: int) -> list[tuple[str, int, int]]:
        self._sums()
        i, j = self._bounds(lo, hi)
        n = j - i
        step = max(1, -(-n // parts))
        out = []
        for start in range(i, j, step):
            end = min(j, start + step)
            bound = lo if start == i else self._keys[start]
            out.append(
                (bound, *fold(end - start, self._low[end] - self._low[start], self._high[end] - self._high[start]))
            )
        return out or [(lo, 0, 0)]

    def digests(self, lo: str, hi: str | None, limit: int | None = None) -> list[tuple[str, int]]:
        i, j = self._bounds(lo, hi)
        if limit is not None:
            j = min(j, i + limit)
        digests = self._digest
        return [(k, digests[k]) for k in self._keys[i:j]]

    def entries(self, keys: Sequence[str]) -> list[tuple[str, bytes]]:
        rows = self._rows
        return [(k, rows[k]) for k in keys if k in rows]

    def sketch(self, lo: str, hi: str | None, cells: int, salt: int) -> Sketch:
        return Sketch.build(self._digest_array(*self._bounds(lo, hi)), cells, salt)

    def keys_of(self, lo: str, hi: str | None, digests: Sequence[int]) -> list[str]:
        i, j = self._bounds(lo, hi)
        wanted = np.fromiter((d & MASK64 for d in digests), dtype=np.uint64, count=len(digests))
        hits = np.nonzero(np.isin(self._digest_array(i, j).view(np.uint64), wanted))[0]
        return [self._keys[i + int(h)] for h in hits]
