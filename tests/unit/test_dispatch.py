"""Node choice: least loaded healthy node with a free slot."""

from __future__ import annotations

import pytest

from actors.dispatch import NodeView, choose_node


def node(name: str, used: int, healthy: bool = True, slots: int = 2,
         weight: float = 1.0) -> NodeView:
    return NodeView(name, healthy, slots, used, weight)


@pytest.mark.parametrize("nodes,expected", [
    ([], None),
    ([node("a", 2), node("b", 2)], None),
    ([node("a", 1), node("b", 0)], "b"),
    ([node("a", 0, healthy=False), node("b", 1)], "b"),
    ([node("a", 0, healthy=False)], None),
    ([node("a", 1), node("b", 1)], "a"),
    ([node("slow", 1), node("fast", 2, slots=4, weight=2.0)], "fast"),
    ([node("a", 1, slots=4), node("b", 0, slots=1)], "b"),
])
def test_choose_node(nodes: list[NodeView], expected: str | None) -> None:
    chosen = choose_node(nodes)
    assert (chosen.name if chosen else None) == expected
