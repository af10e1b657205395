"""Unit and property tests for consistency levels (`dsm.core.consistency`).

Checked against the module docstring:
- `parse_level` accepts every level name and `Level` values, and rejects anything else with a ValueError
  that lists the valid names;
- `groups` builds, per level, the groups that must answer: `local` is this node alone, `region_quorum` a
  majority of this node's region, `quorum` a majority of everyone, `each_region_quorum` a majority in every
  region, `all` everyone;
- the denominator is every known member that has not left (counts=True, whatever its liveness), plus this
  node, counted once;
- `Tally` counts each member's answer once, ignores non-members, and is met exactly when every group has its
  `needed` answers; `shortfall` and `required` report on the groups;
- quorum intersection: two answer sets that both meet a level, under the same membership view, intersect
  (in every group).
"""

from __future__ import annotations

import itertools
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsm.core.consistency import LEVEL_NAMES, Group, Level, Tally, groups, majority, parse_level

SETTINGS = settings(max_examples=100, deadline=None)

#: Region "a": n1, n2, n3; region "b": n4, n5. All count.
TWO_REGIONS = [("n1", "a", True), ("n2", "a", True), ("n3", "a", True), ("n4", "b", True), ("n5", "b", True)]
ALL_IDS = frozenset({"n1", "n2", "n3", "n4", "n5"})
REGION_A = frozenset({"n1", "n2", "n3"})
REGION_B = frozenset({"n4", "n5"})

QUORUM_LEVELS = [Level.REGION_QUORUM, Level.QUORUM, Level.EACH_REGION_QUORUM, Level.ALL]


def tally(level: Level, me: str = "n1", my_region: str = "a", members=TWO_REGIONS) -> Tally:
    return Tally(level, groups(level, me, my_region, members))


def answered(level: Level, ids, *, me: str = "n1", my_region: str = "a", members=TWO_REGIONS) -> Tally:
    t = tally(level, me, my_region, members)
    for node_id in ids:
        t.add(node_id)
    return t


# --- parse_level -------------------------------------------------------------------------------------------


def test_level_names_are_the_documented_ones() -> None:
    assert LEVEL_NAMES == ("local", "region_quorum", "quorum", "each_region_quorum", "all")
    assert tuple(level.value for level in Level) == LEVEL_NAMES


@pytest.mark.parametrize("name", LEVEL_NAMES)
def test_parse_level_accepts_every_name(name: str) -> None:
    level = parse_level(name)
    assert isinstance(level, Level)
    assert level.value == name


@pytest.mark.parametrize("level", list(Level), ids=lambda lv: lv.value)
def test_parse_level_returns_level_instances_unchanged(level: Level) -> None:
    assert parse_level(level) is level


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "QUORUM",
        "Quorum",
        " quorum",
        "quorum ",
        "majority",
        "one",
        "each-region-quorum",
        "Level.QUORUM",
        "LOCAL",
    ],
)
def test_parse_level_rejects_unknown_names(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_level(bad)
    message = str(info.value)
    assert repr(bad) in message
    for name in LEVEL_NAMES:
        assert name in message


@pytest.mark.parametrize("bad", [None, 1, 0, 2.5, b"quorum", ["quorum"], ("quorum",), object()], ids=repr)
def test_parse_level_rejects_wrong_types_with_value_error(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_level(bad)
    message = str(info.value)
    assert "unknown consistency level" in message
    for name in LEVEL_NAMES:
        assert name in message


def test_parse_level_error_lists_names_in_order() -> None:
    with pytest.raises(ValueError, match="local, region_quorum, quorum, each_region_quorum, all"):
        parse_level("nope")


# --- majority ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "expected"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_majority(n: int, expected: int) -> None:
    assert majority(n) == expected
    # A strict majority: more than half, and two of them cannot be disjoint.
    assert 2 * majority(n) > n
    assert majority(n) <= n


# --- groups: each level on a two-region cluster -------------------------------------------------------------


def test_local_is_me_alone() -> None:
    assert groups(Level.LOCAL, "n1", "a", TWO_REGIONS) == (Group("a", frozenset({"n1"}), 1),)


def test_local_ignores_members_and_works_without_any() -> None:
    assert groups(Level.LOCAL, "n4", "b", []) == (Group("b", frozenset({"n4"}), 1),)
    assert groups(Level.LOCAL, "n4", "b", TWO_REGIONS) == (Group("b", frozenset({"n4"}), 1),)


def test_region_quorum_is_a_majority_of_my_region_only() -> None:
    assert groups(Level.REGION_QUORUM, "n1", "a", TWO_REGIONS) == (Group("a", REGION_A, 2),)
    assert groups(Level.REGION_QUORUM, "n5", "b", TWO_REGIONS) == (Group("b", REGION_B, 2),)


def test_quorum_is_a_majority_of_everyone() -> None:
    assert groups(Level.QUORUM, "n1", "a", TWO_REGIONS) == (Group("all", ALL_IDS, 3),)
    assert groups(Level.QUORUM, "n4", "b", TWO_REGIONS) == (Group("all", ALL_IDS, 3),)


def test_each_region_quorum_is_one_majority_per_region_sorted_by_region() -> None:
    expected = (Group("a", REGION_A, 2), Group("b", REGION_B, 2))
    assert groups(Level.EACH_REGION_QUORUM, "n1", "a", TWO_REGIONS) == expected
    assert groups(Level.EACH_REGION_QUORUM, "n4", "b", TWO_REGIONS) == expected


def test_each_region_quorum_with_three_regions_of_different_sizes() -> None:
    members = [
        ("z1", "zz", True),
        ("a1", "a", True),
        ("a2", "a", True),
        ("a3", "a", True),
        ("a4", "a", True),
        ("m1", "m", True),
        ("m2", "m", True),
        ("m3", "m", True),
    ]
    assert groups(Level.EACH_REGION_QUORUM, "a1", "a", members) == (
        Group("a", frozenset({"a1", "a2", "a3", "a4"}), 3),
        Group("m", frozenset({"m1", "m2", "m3"}), 2),
        Group("zz", frozenset({"z1"}), 1),
    )


def test_all_needs_everyone() -> None:
    assert groups(Level.ALL, "n1", "a", TWO_REGIONS) == (Group("all", ALL_IDS, 5),)


def test_groups_accepts_any_iterable_consumed_once() -> None:
    for level in Level:
        assert groups(level, "n1", "a", iter(TWO_REGIONS)) == groups(level, "n1", "a", TWO_REGIONS)
        assert groups(level, "n1", "a", (m for m in TWO_REGIONS)) == groups(level, "n1", "a", TWO_REGIONS)


def test_groups_do_not_depend_on_member_order() -> None:
    rng = Random(7)
    for level in Level:
        reference = groups(level, "n1", "a", TWO_REGIONS)
        for _ in range(20):
            shuffled = TWO_REGIONS[:]
            rng.shuffle(shuffled)
            assert groups(level, "n1", "a", shuffled) == reference


# --- groups: who counts ------------------------------------------------------------------------------------


def test_members_that_left_are_not_in_the_denominator() -> None:
    members = [*TWO_REGIONS[:4], ("n5", "b", False)]  # n5 left
    everyone = ALL_IDS - {"n5"}
    assert groups(Level.QUORUM, "n1", "a", members) == (Group("all", everyone, 3),)  # majority of 4
    assert groups(Level.ALL, "n1", "a", members) == (Group("all", everyone, 4),)
    assert groups(Level.EACH_REGION_QUORUM, "n1", "a", members) == (
        Group("a", REGION_A, 2),
        Group("b", frozenset({"n4"}), 1),
    )
    assert groups(Level.REGION_QUORUM, "n4", "b", members) == (Group("b", frozenset({"n4"}), 1),)


def test_left_members_shrink_the_majority() -> None:
    members = [*TWO_REGIONS, ("n6", "a", False), ("n7", "b", False), ("n8", "c", False)]
    # Three members left: still 5 counting, majority 3; the left ones are in no group.
    assert groups(Level.QUORUM, "n1", "a", members) == (Group("all", ALL_IDS, 3),)
    members = [("n1", "a", True), ("n2", "a", False), ("n3", "a", False), ("n4", "b", False), ("n5", "b", True)]
    assert groups(Level.QUORUM, "n1", "a", members) == (Group("all", frozenset({"n1", "n5"}), 2),)
    assert groups(Level.REGION_QUORUM, "n1", "a", members) == (Group("a", frozenset({"n1"}), 1),)


def test_a_region_whose_members_all_left_has_no_group() -> None:
    members = [*TWO_REGIONS[:3], ("n4", "b", False), ("n5", "b", False)]
    assert groups(Level.EACH_REGION_QUORUM, "n1", "a", members) == (Group("a", REGION_A, 2),)


def test_counting_members_are_included_whatever_the_caller_thinks_of_their_health() -> None:
    """The caller passes suspect and dead members with counts=True: they stay in the denominator, so a
    minority side of a partition cannot believe it is a majority."""
    # n1's view: everyone counts (n3, n4, n5 may be unreachable, that is not the function's business).
    g = groups(Level.QUORUM, "n1", "a", TWO_REGIONS)
    assert g == (Group("all", ALL_IDS, 3),)
    minority = Tally(Level.QUORUM, g)
    assert minority.add("n1") is False
    assert minority.add("n2") is False  # two of five: not a majority, however dead the others are
    assert minority.shortfall() == {"all": (2, 3)}


def test_me_is_included_even_if_absent_from_members() -> None:
    members = TWO_REGIONS[1:]  # n1 not listed
    assert groups(Level.REGION_QUORUM, "n1", "a", members) == (Group("a", REGION_A, 2),)
    assert groups(Level.QUORUM, "n1", "a", members) == (Group("all", ALL_IDS, 3),)
    assert groups(Level.ALL, "n1", "a", members) == (Group("all", ALL_IDS, 5),)
    assert groups(Level.EACH_REGION_QUORUM, "n1", "a", members) == (Group("a", REGION_A, 2), Group("b", REGION_B, 2))


def test_me_is_included_with_no_members_at_all() -> None:
    for level in Level:
        name = "a" if level in (Level.LOCAL, Level.REGION_QUORUM, Level.EACH_REGION_QUORUM) else "all"
        assert groups(level, "n1", "a", []) == (Group(name, frozenset({"n1"}), 1),)


def test_me_is_not_double_counted_when_listed() -> None:
    with_me = groups(Level.QUORUM, "n1", "a", TWO_REGIONS)
    without_me = groups(Level.QUORUM, "n1", "a", TWO_REGIONS[1:])
    assert with_me == without_me == (Group("all", ALL_IDS, 3),)
    # Listed several times: still once.
    members = [("n1", "a", True), ("n1", "a", True), *TWO_REGIONS]
    for level in Level:
        assert groups(level, "n1", "a", members) == groups(level, "n1", "a", TWO_REGIONS)


def test_me_counts_even_if_listed_as_left() -> None:
    members = [("n1", "a", False), *TWO_REGIONS[1:]]
    assert groups(Level.QUORUM, "n1", "a", members) == (Group("all", ALL_IDS, 3),)
    assert groups(Level.REGION_QUORUM, "n1", "a", members) == (Group("a", REGION_A, 2),)


def test_my_region_argument_places_me_whatever_my_own_entry_says() -> None:
    # n1's own entry claims region "b"; the coordinator's region argument is authoritative.
    members = [("n1", "b", True), *TWO_REGIONS[1:]]
    assert groups(Level.EACH_REGION_QUORUM, "n1", "a", members) == (Group("a", REGION_A, 2), Group("b", REGION_B, 2))


def test_duplicate_entries_for_other_members_count_once() -> None:
    members = [*TWO_REGIONS, ("n4", "b", True), ("n2", "a", True)]
    for level in Level:
        assert groups(level, "n1", "a", members) == groups(level, "n1", "a", TWO_REGIONS)


# --- Tally -------------------------------------------------------------------------------------------------


def test_fresh_tally_is_not_met_and_reports_every_group() -> None:
    t = tally(Level.EACH_REGION_QUORUM)
    assert t.met is False
    assert t.received == 0
    assert t.required == 4
    assert t.shortfall() == {"a": (0, 2), "b": (0, 2)}
    assert t.members == ALL_IDS


@pytest.mark.parametrize(
    ("level", "required"),
    [(Level.LOCAL, 1), (Level.REGION_QUORUM, 2), (Level.QUORUM, 3), (Level.EACH_REGION_QUORUM, 4), (Level.ALL, 5)],
    ids=lambda x: x.value if isinstance(x, Level) else str(x),
)
def test_required_is_the_sum_of_needed(level: Level, required: int) -> None:
    t = tally(level)
    assert t.required == required == sum(g.needed for g in t.groups)


def test_local_is_met_by_my_answer_only() -> None:
    t = tally(Level.LOCAL)
    for other in ["n2", "n3", "n4", "n5"]:
        assert t.add(other) is False
    assert t.received == 0
    assert t.shortfall() == {"a": (0, 1)}
    assert t.add("n1") is True
    assert t.met is True
    assert t.shortfall() == {}
    assert t.received == 1


def test_region_quorum_ignores_other_regions() -> None:
    t = tally(Level.REGION_QUORUM)
    assert t.add("n4") is False
    assert t.add("n5") is False
    assert t.received == 0
    assert t.add("n1") is False
    assert t.add("n3") is True
    assert t.received == 2


def test_quorum_met_flips_exactly_at_the_third_answer() -> None:
    t = tally(Level.QUORUM)
    assert t.add("n5") is False
    assert t.shortfall() == {"all": (1, 3)}
    assert t.add("n2") is False
    assert t.shortfall() == {"all": (2, 3)}
    assert t.add("n4") is True
    assert t.met is True
    assert t.shortfall() == {}
    # Stays met as more answers arrive.
    assert t.add("n1") is True
    assert t.add("n3") is True
    assert t.received == 5


def test_all_is_met_only_by_everyone() -> None:
    t = tally(Level.ALL)
    for i, node_id in enumerate(["n3", "n1", "n5", "n2"], start=1):
        assert t.add(node_id) is False
        assert t.shortfall() == {"all": (i, 5)}
    assert t.add("n4") is True
    assert t.shortfall() == {}


def test_each_region_quorum_needs_a_majority_in_every_region() -> None:
    t = tally(Level.EACH_REGION_QUORUM)
    # Everyone in region a, nobody in b: not met, though 3 of 5 (a global majority) answered.
    for node_id in ["n1", "n2", "n3"]:
        assert t.add(node_id) is False
    assert t.received == 3
    assert t.shortfall() == {"b": (0, 2)}
    assert t.add("n4") is False
    assert t.shortfall() == {"b": (1, 2)}
    assert t.add("n5") is True
    assert t.shortfall() == {}


def test_each_region_quorum_not_met_with_only_the_other_region() -> None:
    t = answered(Level.EACH_REGION_QUORUM, ["n4", "n5", "n1"])
    assert t.met is False
    assert t.shortfall() == {"a": (1, 2)}
    assert t.add("n2") is True


def test_answers_from_non_members_are_ignored() -> None:
    members = [*TWO_REGIONS[:4], ("n5", "b", False)]  # n5 left
    t = Tally(Level.QUORUM, groups(Level.QUORUM, "n1", "a", members))
    for stranger in ["n5", "n9", "", "N1", "all", "a"]:
        assert t.add(stranger) is False
    assert t.received == 0
    assert t.answered == set()
    assert t.shortfall() == {"all": (0, 3)}


def test_duplicate_answers_count_once() -> None:
    t = tally(Level.QUORUM)
    for _ in range(5):
        assert t.add("n2") is False
    assert t.received == 1
    for _ in range(5):
        assert t.add("n3") is False
    assert t.received == 2
    assert t.shortfall() == {"all": (2, 3)}
    assert t.add("n1") is True


def test_met_flips_exactly_when_every_group_reaches_needed() -> None:
    """Replays answers one at a time in many orders and checks `met` against a direct count after each."""
    rng = Random(1234)
    pool = [*sorted(ALL_IDS), "n9", "x"]  # members, and strangers that must never count
    for level in Level:
        g = groups(level, "n1", "a", TWO_REGIONS)
        for _ in range(40):
            order = [rng.choice(pool) for _ in range(rng.randint(0, 12))]
            t = Tally(level, g)
            seen: set[str] = set()
            was_met = False
            for node_id in order:
                met = t.add(node_id)
                if node_id in t.members:
                    seen.add(node_id)
                expected = all(len(seen & grp.members) >= grp.needed for grp in g)
                assert met is expected is t.met
                assert t.received == len(seen)
                assert was_met <= met  # never flips back
                was_met = met
                assert set(t.shortfall()) == {grp.name for grp in g if len(seen & grp.members) < grp.needed}


def test_shortfall_reports_answers_and_needed_per_unmet_group_only() -> None:
    members = [*TWO_REGIONS, ("n6", "c", True), ("n7", "c", True), ("n8", "c", True)]
    t = Tally(Level.EACH_REGION_QUORUM, groups(Level.EACH_REGION_QUORUM, "n1", "a", members))
    assert t.required == 2 + 2 + 2
    t.add("n1")
    t.add("n2")
    t.add("n6")
    assert t.shortfall() == {"b": (0, 2), "c": (1, 2)}
    t.add("n7")
    assert t.shortfall() == {"b": (0, 2)}
    t.add("n4")
    t.add("n5")
    assert t.met is True
    assert t.shortfall() == {}


def test_members_is_the_union_of_the_groups() -> None:
    assert tally(Level.LOCAL).members == frozenset({"n1"})
    assert tally(Level.REGION_QUORUM).members == REGION_A
    assert tally(Level.REGION_QUORUM, "n4", "b").members == REGION_B
    for level in (Level.QUORUM, Level.EACH_REGION_QUORUM, Level.ALL):
        assert tally(level).members == ALL_IDS


# --- quorum intersection -----------------------------------------------------------------------------------

regions = st.sampled_from(["a", "b", "c"])
#: (region, counts) per other member; ids are assigned by position so they are distinct.
others = st.lists(st.tuples(regions, st.booleans()), max_size=6)


def _met(level: Level, g: tuple[Group, ...], ids) -> bool:
    t = Tally(level, g)
    for node_id in ids:
        t.add(node_id)
    return t.met


@SETTINGS
@given(
    level=st.sampled_from(QUORUM_LEVELS),
    my_region=regions,
    rest=others,
    me_listed=st.booleans(),
)
def test_quorum_intersection_exhaustive(level: Level, my_region: str, rest, me_listed: bool) -> None:
    """Every answer set that meets the level intersects every other one, in every group.

    Checked exhaustively over all subsets of the known nodes (members, left members and a stranger): since
    meeting is monotone, two disjoint sets meeting the level exist iff some set and its complement both meet.
    """
    members = [(f"m{i}", region, counts) for i, (region, counts) in enumerate(rest)]
    if me_listed:
        members.append(("me", my_region, True))
    g = groups(level, "me", my_region, members)
    universe = sorted({"me", "stranger", *(node_id for node_id, _, _ in members)})
    met_sets = []
    for mask in range(1 << len(universe)):
        chosen = frozenset(node for bit, node in enumerate(universe) if mask >> bit & 1)
        if _met(level, g, chosen):
            met_sets.append(chosen)
            complement = frozenset(universe) - chosen
            assert not _met(level, g, complement), (level, members, sorted(chosen))
    assert met_sets, "the full set of members must meet any level"
    # Monotone: adding answers never un-meets.
    met_set_index = set(met_sets)
    for s in met_sets:
        for extra in universe:
            assert s | {extra} in met_set_index
    # Directly, for minimal met sets (small enough to compare pairwise): they intersect in every group.
    minimal = [s for s in met_sets if not any(_met(level, g, s - {x}) for x in s)]
    for s1, s2 in itertools.combinations_with_replacement(minimal, 2):
        for grp in g:
            assert s1 & s2 & grp.members, (level, grp, sorted(s1), sorted(s2))


def test_quorum_intersection_random_pairs() -> None:
    """Seeded random clusters and random answer sets: any two that meet the level share a member."""
    rng = Random(20240601)
    checked = 0
    for _ in range(400):
        level = rng.choice(QUORUM_LEVELS)
        n_regions = rng.randint(1, 4)
        region_names = [f"r{i}" for i in range(n_regions)]
        my_region = rng.choice(region_names)
        members = [(f"n{i}", rng.choice(region_names), rng.random() < 0.8) for i in range(rng.randint(0, 9))]
        if rng.random() < 0.5:
            members.append(("me", my_region, True))
        g = groups(level, "me", my_region, members)
        pool = ["me", "ghost", *(node_id for node_id, _, _ in members)]
        met_sets = []
        for _ in range(40):
            chosen = frozenset(rng.sample(pool, rng.randint(0, len(pool))))
            if _met(level, g, chosen):
                met_sets.append(chosen)
        for s1, s2 in itertools.combinations(met_sets, 2):
            assert s1 & s2, (level, members, sorted(s1), sorted(s2))
            checked += 1
    assert checked > 1000  # the test really compared pairs


def test_disjoint_majorities_are_impossible_in_the_two_region_cluster() -> None:
    """The concrete cases: region a split 2/1, the whole cluster split 3/2 or across regions."""
    # Two disjoint halves of the cluster: at most one meets quorum.
    for left_size in range(6):
        for left in itertools.combinations(sorted(ALL_IDS), left_size):
            right = ALL_IDS - set(left)
            for level in QUORUM_LEVELS:
                assert not (answered(level, left).met and answered(level, right).met)
    # The side with region a entirely still cannot meet each_region_quorum without b.
    assert answered(Level.QUORUM, REGION_A).met is True
    assert answered(Level.EACH_REGION_QUORUM, REGION_A).met is False
