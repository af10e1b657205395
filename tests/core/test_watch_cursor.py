"""Watch cursors (`dsm.core.watch_cursor`): the text form round-trips and refuses what it did not make; the
resume plan replays only on the cursor's own node and epoch, within the tombstone grace period."""

from __future__ import annotations

import base64

import msgpack
import pytest

from dsm.core.hlc import MAX_TIMESTAMP, pack
from dsm.core.watch_cursor import CURSOR_MAX_CHARS, Cursor, CursorError, Plan, decode, encode, plan, position

WALL = 1_800_000_000_000
GRACE = 7 * 86_400_000


def raw(fields: object) -> str:
    return base64.urlsafe_b64encode(msgpack.packb(fields)).rstrip(b"=").decode()


def test_a_cursor_round_trips_and_stays_small() -> None:
    for cursor in (Cursor("n1", 0, 0), Cursor("ключ-узла", 2**64 - 1, MAX_TIMESTAMP, 2**40), Cursor("x" * 128, 5, 9)):
        text = encode(cursor)
        assert decode(text) == cursor and text.isascii() and "=" not in text
    assert len(encode(Cursor("x" * 128, 2**64 - 1, MAX_TIMESTAMP, 2**40))) < 220


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * (CURSOR_MAX_CHARS + 1),
        "not base64 !",
        raw([2, "n1", 1, 1, 0]),  # another format
        raw([1, "n1", 1, 1]),  # a field short
        raw([1, "", 1, 1, 0]),
        raw([1, 7, 1, 1, 0]),
        raw([1, "n1", -1, 1, 0]),
        raw([1, "n1", 1, True, 0]),
        raw([1, "n1", 1, MAX_TIMESTAMP + 1, 0]),
        raw({"node": "n1"}),
        base64.urlsafe_b64encode(b"\xc1").decode(),
    ],
)
def test_what_is_not_a_cursor_is_refused(text: str) -> None:
    with pytest.raises(CursorError):
        decode(text)


def test_only_the_cursors_own_node_and_epoch_replay_within_the_grace_period() -> None:
    cursor = Cursor("n1", 42, pack(WALL - 1000))
    assert plan(cursor, "n1", 42, WALL, GRACE) is Plan.SAME_NODE
    assert plan(cursor, "n2", 42, WALL, GRACE) is Plan.RESYNC  # another node
    assert plan(cursor, "n1", 43, WALL, GRACE) is Plan.RESYNC  # the store was emptied or replaced
    # Older than the grace period: purged tombstones are gone from the rows, so only a resync is complete.
    old = Cursor("n1", 42, pack(WALL - GRACE - 1))
    assert plan(old, "n1", 42, WALL, GRACE) is Plan.RESYNC
    assert plan(Cursor("n1", 42, pack(WALL - GRACE)), "n1", 42, WALL, GRACE) is Plan.SAME_NODE


def test_the_position_after_an_event_stays_below_its_stamp_while_its_commit_has_more() -> None:
    assert position(100, False) == 100 and position(100, True) == 99
