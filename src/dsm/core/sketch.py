"""Difference sketches: an invertible Bloom lookup table (IBLT) of a set of 64-bit entry digests.

Anti-entropy (`reconcile.py`) uses one to find the few entries two large replicas disagree on in about one
round trip, with traffic proportional to the number of differences and independent of the store size:
each side sums its digests into the same number of cells; the cell-wise difference of two sketches holds
only the digests one side has and the other lacks, and can be listed ("peeled") when there are not many
more of them than about two thirds of the cells.

A sketch has `cells` cells (a multiple of 3), split into three equal sub-tables; a digest is added to one
cell of each. A cell holds:
- a count (kept modulo 256: only the small counts of a difference matter, 1 byte on the wire),
- the XOR of the digests added (8 bytes),
- the XOR of a 32-bit check hash of each digest (4 bytes).
Cell positions and check hashes are salted by the exchange (its session number), so what collides in
one exchange does not in the next, and nobody can choose entries that collide on purpose.

A cell of the difference is *pure* when its count is +1 or -1, its check equals the check hash of its
digest and the digest maps to that cell; peeling removes pure cells' digests from their other cells until
none is left. Success means every cell ends empty; otherwise the number of empty cells before peeling
estimates how many digests differ (`estimate`), so the next sketch can be sized.

Building uses numpy (vectorised: a million digests in a few tens of ms); the arithmetic wraps modulo
2**64 exactly like the scalar version used for peeling, so both sides agree bit for bit.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

import numpy as np

MASK64 = (1 << 64) - 1
#: Bytes per cell on the wire: count, digest XOR, check XOR.
CELL_BYTES = 13
#: Bytes before the cells: the number of keys the sketch was built from (a lower bound on differences).
HEADER = struct.Struct(">Q")
#: Largest sketch accepted or sent (about 852 KB; peels about 40,000 differences).
MAX_CELLS = 3 * 21_846

#: 2**64 divided by the golden ratio: the odd constant of splitmix64 (also reconcile's mixer).
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_CHECK = 0x6A09E667F3BCC909


def signed64(value: int) -> int:
    """`value` modulo 2**64 as a signed 64-bit int (how stores and messages keep digests)."""
    value &= MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def salt_of(session: int) -> int:
    return ((session & MASK64) * 0xD6E8FEB86659FD93 + GOLDEN) & MASK64


def _mix(x: int) -> int:
    """splitmix64's finaliser (scalar)."""
    x = (x + GOLDEN) & MASK64
    x = ((x ^ (x >> 30)) * _M1) & MASK64
    x = ((x ^ (x >> 27)) * _M2) & MASK64
    return x ^ (x >> 31)


def _mix_array(x: np.ndarray) -> np.ndarray:
    """The same finaliser over a uint64 array (numpy wraps modulo 2**64, as the scalar masks)."""
    x = x + np.uint64(GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
    out: np.ndarray = x ^ (x >> np.uint64(31))
    return out


def positions(digest: int, cells: int, salt: int) -> tuple[int, int, int]:
    """The cell of `digest` in each of the three sub-tables."""
    sub = cells // 3
    h = _mix((digest & MASK64) ^ salt)
    return (h & 0x1FFFFF) % sub, sub + ((h >> 21) & 0x1FFFFF) % sub, 2 * sub + ((h >> 42) & 0x1FFFFF) % sub


def check(digest: int, salt: int) -> int:
    return _mix((digest & MASK64) ^ salt ^ _CHECK) >> 32


class Sketch:
    """A sketch as three numpy arrays (counts uint8, digest XORs uint64, check XORs uint32) and the number
    of keys it was built from."""

    __slots__ = ("checks", "counts", "ids", "keys")

    def __init__(self, counts: np.ndarray, ids: np.ndarray, checks: np.ndarray, keys: int) -> None:
        self.counts, self.ids, self.checks, self.keys = counts, ids, checks, keys

    @property
    def cells(self) -> int:
        return len(self.counts)

    @classmethod
    def build(cls, digests: Iterable[int] | np.ndarray, cells: int, salt: int) -> Sketch:
        """The sketch of a set of digests (ints, signed or unsigned 64-bit, or an int64/uint64 array)."""
        if cells < 3 or cells % 3:
            raise ValueError("a sketch has a positive multiple of 3 cells")
        if isinstance(digests, np.ndarray):
            d = digests.astype(np.int64, copy=False).view(np.uint64)
        else:
            d = np.fromiter((x & MASK64 for x in digests), dtype=np.uint64)
        sub = cells // 3
        counts = np.zeros(cells, dtype=np.int64)
        ids = np.zeros(cells, dtype=np.uint64)
        checks = np.zeros(cells, dtype=np.uint64)
        if len(d):
            h = _mix_array(d ^ np.uint64(salt))
            c = _mix_array(d ^ np.uint64(salt ^ _CHECK)) >> np.uint64(32)
            mask = np.uint64(0x1FFFFF)
            for j in range(3):
                idx = ((h >> np.uint64(21 * j)) & mask) % np.uint64(sub) + np.uint64(j * sub)
                idx = idx.astype(np.intp)
                np.add.at(counts, idx, 1)
                np.bitwise_xor.at(ids, idx, d)
                np.bitwise_xor.at(checks, idx, c)
        return cls((counts & 0xFF).astype(np.uint8), ids, checks.astype(np.uint32), len(d))

    def to_bytes(self) -> bytes:
        return (
            HEADER.pack(self.keys)
            + self.counts.tobytes()
            + self.ids.astype(">u8").tobytes()
            + self.checks.astype(">u4").tobytes()
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Sketch:
        """Raises ValueError unless `data` is a well-formed sketch of at most MAX_CELLS cells."""
        body = len(data) - HEADER.size
        if body <= 0 or body % CELL_BYTES:
            raise ValueError("malformed sketch")
        cells = body // CELL_BYTES
        if cells % 3 or cells > MAX_CELLS:
            raise ValueError("malformed sketch: cell count")
        (keys,) = HEADER.unpack_from(data)
        o = HEADER.size
        counts = np.frombuffer(data, dtype=np.uint8, count=cells, offset=o)
        ids = np.frombuffer(data, dtype=">u8", count=cells, offset=o + cells).astype(np.uint64)
        checks = np.frombuffer(data, dtype=">u4", count=cells, offset=o + 9 * cells).astype(np.uint32)
        return cls(counts.copy(), ids, checks, keys)

    def subtract(self, other: Sketch) -> Sketch:
        """This set minus the other, cell by cell (the same cells and salt)."""
        if other.cells != self.cells:
            raise ValueError("sketches of different sizes")
        return Sketch(
            self.counts - other.counts,  # uint8 arithmetic wraps modulo 256, as intended
            self.ids ^ other.ids,
            self.checks ^ other.checks,
            abs(self.keys - other.keys),
        )

    def empty_cells(self) -> int:
        return int(np.count_nonzero((self.counts == 0) & (self.ids == 0) & (self.checks == 0)))

    def peel(self, salt: int) -> tuple[list[int], list[int]] | None:
        """For a difference A - B: (digests only in A, digests only in B) as unsigned ints, or None when it
        cannot be listed completely (too many differences for the cells)."""
        cells = self.cells
        counts = [int(x) for x in self.counts]
        ids = [int(x) for x in self.ids]
        checks = [int(x) for x in self.checks]
        mine: list[int] = []
        theirs: list[int] = []
        stack = [i for i in range(cells) if counts[i] in (1, 255)]
        budget = 4 * cells + 16  # every digest is removed at most once; a bound against cycles of bad cells
        while stack and budget:
            budget -= 1
            i = stack.pop()
            c = counts[i]
            if c not in (1, 255):
                continue
            digest = ids[i]
            where = positions(digest, cells, salt)
            if i not in where or checks[i] != check(digest, salt):
                continue
            (mine if c == 1 else theirs).append(digest)
            ck = checks[i]
            for j in where:
                counts[j] = (counts[j] - c) & 0xFF
                ids[j] ^= digest
                checks[j] ^= ck
                if counts[j] in (1, 255):
                    stack.append(j)
        if any(counts) or any(ids) or any(checks):
            return None
        return mine, theirs


def estimate(difference: Sketch) -> int:
    """How many digests a difference that could not be peeled holds, from its empty cells (a digest
    empties none of its three cells' chance: each cell of a sub-table is empty with probability
    (1 - 3 / cells) ** d). Saturated tables give a lower bound."""
    cells = difference.cells
    empty = difference.empty_cells()
    # Saturated (no empty cell): at least about as many as make that likely.
    guess = cells * math.log(cells) / 3 if empty == 0 else -math.log(empty / cells) * cells / 3
    return max(int(guess), difference.keys, 1)


def cells_for(differences: int) -> int:
    """Cells that peel `differences` digests with high probability (1.5 per digest, plus a margin for
    small sets), a multiple of 3."""
    need = int(1.5 * differences) + 30
    return min(MAX_CELLS, -(-need // 3) * 3)
