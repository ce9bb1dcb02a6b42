"""Request bounds walked without recursion: JSON depth, graph cycles, chain length (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from comfy_service.errors import InvalidJson, ValidationFailed
from gateway.limits import (
    MAX_GRAPH_DEPTH,
    MAX_GRAPH_NODES,
    MAX_JSON_DEPTH,
    check_graph_shape,
    find_cycle,
    json_depth,
    longest_chain,
    parse_json,
)


@pytest.mark.parametrize("value,depth", [
    (1, 0), ([], 1), ({"a": [1, {"b": 2}]}, 3), ([[[]]], 3), ({"a": 1, "b": [[2]]}, 3)])
def test_json_depth(value: Any, depth: int) -> None:
    assert json_depth(value) == depth


def test_parse_json_refuses_deep_nesting_however_deep() -> None:
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        with pytest.raises(InvalidJson, match="nests deeper") as caught:
            parse_json(b"[" * depth + b"]" * depth)
        assert caught.value.details == {"max_depth": MAX_JSON_DEPTH}
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)


def test_parse_json_refuses_what_is_not_json() -> None:
    with pytest.raises(InvalidJson, match="not valid JSON"):
        parse_json(b"{nope")


@pytest.mark.parametrize("upstream,cycle", [
    ({"1": [], "2": ["1"], "3": ["2"]}, []),
    ({"1": ["3"], "2": ["1"], "3": ["2"]}, ["1", "3", "2"]),
    ({"1": ["1"]}, ["1"]),
    ({"a": [], "b": ["a", "c"], "c": ["d"], "d": ["c"]}, ["c", "d"]),
])
def test_find_cycle(upstream: dict[str, list[str]], cycle: list[str]) -> None:
    assert find_cycle(upstream) == cycle


def test_longest_chain_counts_nodes_on_the_longest_path() -> None:
    assert longest_chain({"1": [], "2": ["1"], "3": ["2", "1"], "4": ["1"]}) == 3
    chain = {str(i): ([str(i - 1)] if i else []) for i in range(50_000)}
    assert longest_chain(chain) == 50_000  # iterative: no recursion limit


def _chain(length: int) -> dict[str, Any]:
    graph: dict[str, Any] = {"0": {"class_type": "EmptyImage", "inputs": {}}}
    for i in range(1, length):
        graph[str(i)] = {"class_type": "ImageBlur", "inputs": {"image": [str(i - 1), 0]}}
    return graph


def test_check_graph_shape_names_the_cycle() -> None:
    graph = {str(i): {"class_type": "ImageBlur", "inputs": {"image": [str((i + 1) % 3), 0]}}
             for i in range(3)}
    with pytest.raises(ValidationFailed, match="cycle") as caught:
        check_graph_shape(graph)
    assert sorted(caught.value.details["cycle"]) == ["0", "1", "2"]


def test_check_graph_shape_bounds_size_and_chain_length() -> None:
    check_graph_shape(_chain(MAX_GRAPH_DEPTH))
    with pytest.raises(ValidationFailed, match="chains 201 nodes"):
        check_graph_shape(_chain(MAX_GRAPH_DEPTH + 1))
    with pytest.raises(ValidationFailed, match="5000 nodes") as caught:
        check_graph_shape(_chain(5000))
    assert caught.value.details["max_nodes"] == MAX_GRAPH_NODES
