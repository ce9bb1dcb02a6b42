"""A worker's own slot counts: its binds and releases count at once, a read from Redis is taken
only where nothing of ours happened since it was asked for (pure, no servers)."""

from __future__ import annotations

from actors.slot_counts import SlotCounts


def counted(used: dict[str, int]) -> SlotCounts:
    counts = SlotCounts()
    counts.read(used, counts.asking(), used)
    return counts


def test_a_read_brings_the_shares_counts_and_forgets_nodes_that_left_it() -> None:
    counts = counted({"a": 1, "b": 0})
    changed = counts.read({"a": 2, "b": 0, "c": 1}, counts.asking(), ["a", "c"])
    assert changed == {"a", "b", "c"}
    assert (counts["a"], counts["c"]) == (2, 1)
    assert "b" not in counts and sorted(counts.names()) == ["a", "c"]


def test_own_binds_and_releases_count_at_once_and_never_below_zero() -> None:
    counts = counted({"a": 0})
    assert counts.add("a", +1) and counts["a"] == 1
    assert counts.add("a", -1) and counts.add("a", -1) and counts["a"] == 0
    assert not counts.add("elsewhere", -1)  # a node outside the share is not counted here


def test_a_read_asked_before_our_release_does_not_undo_it() -> None:
    # Given a node with two tasks, and a read on its way while one of ours ends
    counts = counted({"a": 2, "b": 2})
    asked_at = counts.asking()
    counts.add("a", -1)
    # When the read, made before the release landed, comes back
    changed = counts.read({"a": 2, "b": 1}, asked_at, ["a", "b"])
    # Then the node we released on keeps our count (a slot free), the other takes the read
    assert (counts["a"], counts["b"]) == (1, 1)
    assert changed == {"b"}
    # And the next read, asked after the release, is taken for both
    counts.read({"a": 1, "b": 1}, counts.asking(), ["a", "b"])
    assert (counts["a"], counts["b"]) == (1, 1)


def test_a_read_asked_before_our_bind_does_not_undo_it() -> None:
    counts = counted({"a": 0})
    asked_at = counts.asking()
    counts.add("a", +1)
    counts.read({"a": 0}, asked_at, ["a"])
    assert counts["a"] == 1  # not counted free again: the bind script would refuse it anyway
