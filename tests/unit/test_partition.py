"""Which worker follows which node: one owner each, shares balanced, little movement."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from actors.partition import owned_by, owner

NODES = [f"127.0.0.1:{8000 + i}" for i in range(1000)]


def shares(workers: list[str]) -> dict[str, frozenset[str]]:
    return {worker: owned_by(worker, NODES, workers) for worker in workers}


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_every_node_has_exactly_one_worker_and_shares_are_balanced(count: int) -> None:
    workers = [f"worker-{i}" for i in range(count)]
    parts = shares(workers)
    assert sum(len(part) for part in parts.values()) == len(NODES)
    assert frozenset().union(*parts.values()) == frozenset(NODES)
    fair = len(NODES) / count
    assert all(0.8 * fair <= len(part) <= 1.2 * fair for part in parts.values()), \
        {w: len(p) for w, p in parts.items()}


def test_a_joining_worker_takes_nodes_only_from_the_others_and_about_its_share() -> None:
    before = {node: owner(node, ["a", "b", "c", "d"]) for node in NODES}
    after = {node: owner(node, ["a", "b", "c", "d", "e"]) for node in NODES}
    moved = [node for node in NODES if before[node] != after[node]]
    assert {after[node] for node in moved} == {"e"}  # nothing moves between old workers
    assert 0.8 * len(NODES) / 5 <= len(moved) <= 1.2 * len(NODES) / 5


def test_a_leaving_workers_nodes_spread_over_the_rest_and_nothing_else_moves() -> None:
    before = {node: owner(node, ["a", "b", "c", "d"]) for node in NODES}
    after = {node: owner(node, ["a", "b", "d"]) for node in NODES}
    moved = {node for node in NODES if before[node] != after[node]}
    assert moved == {node for node in NODES if before[node] == "c"}
    assert {after[node] for node in moved} == {"a", "b", "d"}


def test_a_worker_not_yet_in_the_member_list_counts_itself_in() -> None:
    assert owned_by("new", NODES, ["a"]) == owned_by("new", NODES, ["a", "new"])
    assert owned_by("alone", NODES, []) == frozenset(NODES)
    assert owner("n", []) is None


def test_every_process_computes_the_same_owner_whatever_its_hash_seed() -> None:
    code = ("from actors.partition import owner; "
            "print([owner(f'n{i}', ['a', 'b', 'c']) for i in range(50)])")
    answers = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2", "3")}
    assert len(answers) == 1
    assert answers == {str([owner(f"n{i}", ["a", "b", "c"]) for i in range(50)]) + "\n"}
