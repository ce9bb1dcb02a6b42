"""The fleet index answers what choose_node answers on the same views, through any sequence
of changes (pure, no servers)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from actors.dispatch import Need, NodeView, choose_node
from actors.fleet_index import FleetIndex

STORY = frozenset({"CheckpointLoaderSimple", "KSampler", "StoryDiffusion_Apply"})
PLAIN = frozenset({"CheckpointLoaderSimple", "KSampler"})
SDXL, SD15 = frozenset({"sdxl.safetensors"}), frozenset({"sd15.safetensors"})
NEEDS = [Need(), Need(PLAIN, SDXL), Need(STORY, SDXL), Need(PLAIN, SD15),
         Need(frozenset({"Missing"}))]


def random_view(rnd: random.Random, name: str) -> NodeView:
    slots = rnd.choice([1, 2, 2, 3])
    return NodeView(
        name, healthy=rnd.random() > 0.15, slots=slots, used=rnd.randint(0, slots),
        weight=rnd.choice([1.0, 1.0, 0.5, 2.0, 0.1, 1.7]),
        gpu_uuid=rnd.choice([None, None, "GPU-a", "GPU-b", f"GPU-{name}"]),
        gpu_util=rnd.choice([None, 0.0, 35.0, 90.0]),
        vram_fraction=rnd.choice([None, 0.1, 0.8]),
        classes=rnd.choice([None, STORY, PLAIN]),
        checkpoints=rnd.choice([None, SDXL, SD15, SDXL | SD15]))


def change(rnd: random.Random, view: NodeView) -> NodeView:
    """One of the changes a worker sees: a bind, a release, health, Meta, speed, capability."""
    what = rnd.randrange(6)
    if what == 0:
        return replace(view, used=min(view.slots, view.used + 1))
    if what == 1:
        return replace(view, used=max(0, view.used - 1))
    if what == 2:
        return replace(view, healthy=not view.healthy)
    if what == 3:
        return replace(view, gpu_util=rnd.choice([None, 10.0, 99.0]),
                       gpu_uuid=rnd.choice([view.gpu_uuid, "GPU-a", None]))
    if what == 4:
        return replace(view, weight=rnd.choice([0.3, 1.0, 1.1, 3.0]))
    return replace(view, classes=rnd.choice([None, STORY, PLAIN]))


def assert_same(index: FleetIndex, views: dict[str, NodeView], rnd: random.Random) -> None:
    listed = list(views.values())
    rnd.shuffle(listed)  # the index keeps no order: choose_node must not depend on one
    assert index.free == sum(v.free for v in listed if v.healthy)
    assert index.open == sum(1 for v in listed if v.healthy and v.free > 0)
    for need in NEEDS:
        for waiting in (None, 1, 2, 3, 5, 10, 1000):
            assert index.choose(need, waiting) == choose_node(listed, need, waiting), (
                need, waiting)


@pytest.mark.parametrize("seed", range(40))
def test_the_index_chooses_as_choose_node_through_random_changes(seed: int) -> None:
    rnd = random.Random(seed)
    index, views = FleetIndex(), {}
    for i in range(rnd.randint(0, 30)):
        view = random_view(rnd, f"n{i:02d}")
        views[view.name] = view
        index.put(view)
    assert_same(index, views, rnd)
    for step in range(300):
        roll = rnd.random()
        if roll < 0.05 and views:  # a node leaves
            name = rnd.choice(sorted(views))
            del views[name]
            index.remove(name)
        elif roll < 0.1:  # a node joins (perhaps one that left)
            view = random_view(rnd, f"n{rnd.randrange(40):02d}")
            views[view.name] = view
            index.put(view)
        elif views:
            view = change(rnd, views[rnd.choice(sorted(views))])
            views[view.name] = view
            index.put(view)
        if step % 10 == 0:
            assert_same(index, views, rnd)
    assert_same(index, views, rnd)
    assert sorted(index.names()) == sorted(views)


def test_a_bind_then_a_release_puts_a_node_back_first() -> None:
    index = FleetIndex()
    a, b = NodeView("a", True, 2, 0), NodeView("b", True, 2, 1)
    index.put(a)
    index.put(b)
    assert index.choose(Need()) == a
    index.put(replace(a, used=2))   # bound twice: full
    assert index.choose(Need()) == b
    index.put(replace(b, used=2))
    assert index.choose(Need()) is None and index.open == 0 and index.free == 0
    index.put(replace(a, used=1))   # released
    assert index.choose(Need(), waiting=3) == replace(a, used=1)


def test_load_on_a_shared_gpu_moves_the_other_node_on_it() -> None:
    index = FleetIndex()
    left, right = NodeView("left", True, 2, 0, gpu_uuid="G"), NodeView("right", True, 2, 0,
                                                                       gpu_uuid="G")
    alone = NodeView("alone", True, 2, 0, gpu_uuid="H", gpu_util=10.0)
    for view in (left, right, alone):
        index.put(view)
    assert index.choose(Need()) == left            # ties: by name; alone's GPU is busier
    index.put(replace(left, used=1))              # right shares left's GPU: scores worse now
    assert index.choose(Need()) == alone


def test_stale_heap_entries_are_dropped_so_the_heap_stays_small() -> None:
    index = FleetIndex()
    view = NodeView("a", True, 2, 0)
    for i in range(10_000):
        index.put(replace(view, used=i % 2))
        assert index.choose(Need()) is not None
    group = index._groups[(None, None)]
    assert len(group.heap) + len(group.finishes) < 200
