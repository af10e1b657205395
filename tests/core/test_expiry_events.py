"""The rules of a watch's expiry events (`dsm.core.expiry`): which expiring rows a page reports and the mark
after it, the next wake-up. The central property: taking pages of any store's expiring rows until `more` is
false reports every row with `mark < expires_ms <= now` exactly once, in (expires_ms, key) order, whatever the
page size and however many rows share one millisecond (up to `TAKE_MAX_ROWS`)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.expiry import EXPIRY_POLL_MAX_MS, Taken, marks_after, next_due, take, wake_at


def query(rows: list[tuple[int, str]], after: int, upto: int, limit: int) -> list[tuple[int, str]]:
    """What `BackingStore.expiring` answers, over (expires_ms, key) rows."""
    return sorted(r for r in rows if after < r[0] <= upto)[:limit]


def report(
    rows: list[tuple[int, str]], mark: int, now: int, limit: int
) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """The rows reported, and (rows reported so far, mark) after each page."""
    out: list[tuple[int, str]] = []
    marks: list[tuple[int, int]] = []
    for _ in range(10_000):
        page = query(rows, mark, now, limit)
        taken = take([e for e, _ in page], mark, now, limit)
        out.extend(page[: taken.count])
        mark, limit = taken.mark, taken.limit
        marks.append((len(out), mark))
        if not taken.more:
            return out, marks
    raise AssertionError("take never finished")


@settings(max_examples=300, deadline=None)
@given(
    expiries=st.lists(st.integers(1, 30), max_size=60),
    mark=st.integers(0, 20),
    span=st.integers(0, 20),
    limit=st.integers(1, 7),
)
def test_paging_reports_every_due_row_once_in_order(expiries: list[int], mark: int, span: int, limit: int) -> None:
    rows = [(e, f"k{i:02}") for i, e in enumerate(expiries)]
    now = mark + span
    out, marks = report(rows, mark, now, limit)
    assert out == sorted(r for r in rows if mark < r[0] <= now)
    assert marks[-1][1] == now
    # A watch resumed from the mark after any page (its cursor) reports exactly the rest.
    for done, at in marks:
        rest, _ = report(rows, at, now, limit)
        assert rest == out[done:]


@settings(max_examples=200, deadline=None)
@given(expiries=st.lists(st.integers(1, 12), max_size=30), limit=st.integers(1, 5))
def test_a_resume_from_the_cursor_of_any_event_misses_nothing_and_repeats_only_its_millisecond(
    expiries: list[int], limit: int
) -> None:
    rows = [(e, f"k{i:02}") for i, e in enumerate(expiries)]
    now, mark = 12, 0
    events: list[tuple[tuple[int, str], int]] = []  # (row, the mark in its event's cursor)
    for _ in range(1_000):
        page = query(rows, mark, now, limit)
        taken = take([e for e, _ in page], mark, now, limit)
        reported = page[: taken.count]
        if reported or not taken.more:
            events.extend(zip(reported, marks_after([e for e, _ in reported], mark, taken.mark), strict=True))
        mark, limit = taken.mark, taken.limit
        if not taken.more:
            break
    for i, (row, at) in enumerate(events):
        rest, _ = report(rows, at, now, limit)
        later = [r for r, _ in events[i + 1 :]]
        assert set(later) <= set(rest)  # nothing missed
        assert all(r in later or r[0] == row[0] for r in rest)  # repeats only rows of that millisecond


def test_a_full_page_of_one_millisecond_asks_for_more_rather_than_split_it() -> None:
    assert take([5, 5, 5], 0, 9, 3) == Taken(0, 0, True, 6)
    assert take([4, 5, 5], 0, 9, 3) == Taken(1, 4, True, 3)  # up to just below the last millisecond reached
    assert take([4, 5], 0, 9, 3) == Taken(2, 9, False, 3)  # the last page: the mark is now
    assert take([], 3, 9, 3) == Taken(0, 9, False, 3)


def test_the_next_wake_up_is_the_next_expiry_but_never_later_than_the_poll_bound() -> None:
    assert next_due([5, 3, 12], 4) == 5 and next_due([1, 2], 4) is None and next_due([], 0) is None
    assert wake_at(None, 100) == 100 + EXPIRY_POLL_MAX_MS
    assert wake_at(150, 100) == 150
    assert wake_at(100 + 10 * EXPIRY_POLL_MAX_MS, 100) == 100 + EXPIRY_POLL_MAX_MS
    assert wake_at(50, 100) == 101  # already due: look again at once
