"""Execution order and cache signatures of the simulator's graph logic."""

from __future__ import annotations

import json
from typing import Any

from comfyui_sim import catalog
from comfyui_sim.graph import ExecutionList, signatures
from comfyui_sim.nodes import story_scenes
from tests.conftest import SHARED

CLASSES = catalog.node_classes(catalog.ModelInventory({}))


def _txt2img() -> dict[str, Any]:
    scenario = json.loads((SHARED / "comfyui-protocol" / "txt2img_real.json").read_text())
    post = next(e for e in scenario["http"] if e["method"] == "POST")
    prompt: dict[str, Any] = post["request_body"]["prompt"]
    return prompt


def _order(prompt: dict[str, Any], cached: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    pending = ExecutionList(prompt, lambda n: n in cached,
                            lambda n: CLASSES[prompt[n]["class_type"]].output_node)
    for node_id, node in prompt.items():
        if CLASSES[node["class_type"]].output_node:
            pending.add_node(node_id)
    order = []
    while not pending.is_empty():
        node_id = pending.next_node()
        order.append(node_id)
        pending.complete(node_id)
    return order


def test_txt2img_runs_in_the_order_comfyui_ran_it() -> None:
    assert _order(_txt2img()) == ["4", "5", "7", "6", "3", "8", "9"]


def test_a_new_seed_reruns_only_the_sampler_and_what_follows() -> None:
    first = _txt2img()
    second = json.loads(json.dumps(first))
    second["3"]["inputs"]["seed"] += 1
    before, after = signatures(first), signatures(second)
    unchanged = {n for n in first if before[n] == after[n]}
    assert unchanged == {"4", "5", "6", "7"}
    assert _order(second, cached=unchanged) == ["3", "8", "9"]


def test_signatures_ignore_node_ids() -> None:
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}
    renumbered = {"7": {"class_type": "EmptyImage", "inputs": {"width": 8}},
                  "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0]}}}
    assert signatures(graph)["2"] == signatures(renumbered)["9"]


def test_story_scenes_follow_the_plugin_rules() -> None:
    roles = "[Taylor] a woman, white shirt.\n[Bob] a man, red hat.\nno brackets here"
    scenes = ("[Bob] reads a book\n[Taylor] wakes up # caption\n[Taylor] and [Bob] dance\n"
              "plain line\n[Taylor] runs")
    assert story_scenes(roles, scenes) == [
        ("Taylor", "a woman, white shirt. wakes up"),
        ("Taylor", "a woman, white shirt. runs"),
        ("Bob", "a man, red hat. reads a book"),
    ]
