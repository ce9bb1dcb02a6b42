"""Node choice: least loaded healthy node with a free slot."""

from __future__ import annotations

import random

import pytest

from actors.dispatch import (
    TIE,
    Capable,
    NodeView,
    choose_node,
    gpu_loads,
    gpu_of,
    load_from_meta,
    need_of,
    score,
    worth_starting,
)


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
    ([node("a", 0), node("b", 0, weight=1.1)], "b"),  # alike by score: the faster first
])
def test_choose_node(nodes: list[NodeView], expected: str | None) -> None:
    chosen = choose_node(nodes)
    assert (chosen.name if chosen else None) == expected


def test_a_node_without_a_needed_class_or_checkpoint_is_never_chosen() -> None:
    need = need_of({"1": {"class_type": "CheckpointLoaderSimple",
                          "inputs": {"ckpt_name": "sdxl.safetensors"}},
                    "2": {"class_type": "StoryDiffusion_KSampler", "inputs": {}}})
    plain = NodeView("plain", True, 2, 0, classes=frozenset({"CheckpointLoaderSimple"}),
                     checkpoints=frozenset({"sdxl.safetensors"}))
    story = NodeView("story", True, 2, 1, classes=frozenset({"CheckpointLoaderSimple",
                                                             "StoryDiffusion_KSampler"}),
                     checkpoints=frozenset({"sdxl.safetensors"}))
    other_ckpt = NodeView("other", True, 2, 0, classes=story.classes,
                          checkpoints=frozenset({"sd15.safetensors"}))
    assert choose_node([plain, story, other_ckpt], need) == story
    assert choose_node([plain, other_ckpt], need) is None


def test_gpu_load_and_a_shared_gpu_count_against_a_node() -> None:
    idle_gpu = NodeView("a", True, 2, 0, gpu_util=10.0, gpu_uuid="GPU-1")
    busy_gpu = NodeView("b", True, 2, 0, gpu_util=90.0, gpu_uuid="GPU-2")
    assert choose_node([busy_gpu, idle_gpu]) == idle_gpu
    # Two processes on one GPU: work on one makes the other less attractive than a free GPU.
    sharing_busy = NodeView("c1", True, 2, 2, gpu_uuid="GPU-3")
    sharing_free = NodeView("c2", True, 2, 0, gpu_uuid="GPU-3")
    alone = NodeView("d", True, 2, 0, gpu_uuid="GPU-4")
    assert choose_node([sharing_busy, sharing_free, alone]) == alone
    assert score(sharing_free, gpu_loads([sharing_busy, sharing_free])) > \
        score(alone, gpu_loads([alone]))


@pytest.mark.parametrize("meta,expected", [
    ({}, {}),
    ({"weight": "2", "gpu_util": "35", "vram_used_mb": "1000", "vram_total_mb": "4000",
      "gpu_uuid": "GPU-x"},
     {"weight": 2.0, "gpu_util": 35.0, "vram_fraction": 0.25, "gpu_uuid": "GPU-x"}),
    ({"gpu_util": "not a number"}, {}),
])
def test_load_from_meta(meta: dict[str, str], expected: dict[str, object]) -> None:
    assert load_from_meta(meta) == expected


@pytest.mark.parametrize("waiting,expected", [
    (50, "slow"),   # a real backlog: every free node takes work
    (1, None),      # the last task: the 4x node (busy) finishes it sooner than the slow one
])
def test_a_slow_node_does_not_start_the_last_tasks(waiting: int, expected: str | None) -> None:
    slow = NodeView("slow", True, 2, 0, weight=1.0)
    fast = NodeView("fast", True, 2, 2, weight=4.0)
    chosen = choose_node([slow, fast], waiting=waiting)
    assert (chosen.name if chosen else None) == expected


def test_equal_nodes_always_take_work() -> None:
    nodes = [NodeView(f"n{i}", True, 2, 2 if i else 0) for i in range(4)]
    chosen = choose_node(nodes, waiting=1)
    assert chosen is not None and chosen.name == "n0"


@pytest.mark.parametrize("meta,expected", [
    ({}, None),
    ({"gpu_util": "50"}, None),  # no GPU identity: nothing to show
    ({"gpu_uuid": "GPU-1", "gpu_name": "NVIDIA H100", "gpu_util": "35", "vram_used_mb": "20000",
      "vram_total_mb": "81559"},
     {"uuid": "GPU-1", "name": "NVIDIA H100", "util_pct": 35.0, "vram_used_mb": 20000.0,
      "vram_total_mb": 81559.0}),
    ({"gpu_uuid": "GPU-2", "gpu_util": "n/a"}, {"uuid": "GPU-2", "name": ""}),
])
def test_the_gpu_a_sidecar_reports_for_people(meta: dict[str, str],
                                              expected: dict[str, object] | None) -> None:
    assert gpu_of(meta) == expected


def _worth_starting_by_definition(node: NodeView, capable: list[NodeView], waiting: int) -> bool:
    """worth_starting's definition, one pass over the others (what Capable makes O(log n))."""
    others = [n for n in capable if n.name != node.name]
    if not others:
        return True
    own_finish = (node.used + 1) / node.weight
    if waiting > sum(max(0.0, n.weight * own_finish - n.used) for n in others) + TIE:
        return True
    return own_finish <= min((n.used + 1) / n.weight for n in others) + TIE


@pytest.mark.parametrize("seed", range(200))
def test_worth_starting_agrees_with_its_definition_on_random_fleets(seed: int) -> None:
    rnd = random.Random(seed)
    fleet = [NodeView(f"n{i}", True, 2, rnd.randint(0, 2),
                      weight=rnd.choice([0.5, 1.0, 1.5, 2.0, 4.0]))
             for i in range(rnd.randint(1, 12))]
    capable = Capable(fleet)
    for node in fleet:
        for waiting in (1, 2, 3, 5, 8, 20):
            assert worth_starting(node, capable, waiting) == \
                _worth_starting_by_definition(node, fleet, waiting), (node, waiting)
