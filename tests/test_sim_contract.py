"""Contract: the simulator answers every captured ComfyUI scenario as the real server did."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import httpx
import pytest

from tests.conftest import SHARED
from tests.support.processes import SimNodeProcess, wait_until
from tests.support.replay import replay

SCENARIOS = sorted((SHARED / "comfyui-protocol").glob("*.json"))


def _recorded_prompts(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    prompts = {}
    for exchange in scenario["http"]:
        if exchange["method"] == "POST" and exchange["path"] == "/prompt" \
                and exchange["status"] == 200:
            prompts[exchange["response_body"]["prompt_id"]] = exchange["request_body"]["prompt"]
    return prompts


def _warm_up_graph(scenario: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any] | None:
    """The nodes the real server already had cached when the scenario's first prompt ran."""
    cached_messages = sorted(
        (m for s in scenario["ws"].values() for m in s["messages"]
         if m.get("type") == "execution_cached"), key=lambda m: m["seq"])
    if not cached_messages or not cached_messages[0]["data"]["nodes"]:
        return None
    first = cached_messages[0]["data"]
    graph = _recorded_prompts(scenario)[first["prompt_id"]]
    warm = {node_id: graph[node_id] for node_id in first["nodes"]}
    if not any(object_info[n["class_type"]]["output_node"] for n in warm.values()):
        image_node = next(node_id for node_id, n in warm.items()
                          if "IMAGE" in object_info[n["class_type"]]["output"])
        warm["warmup_preview"] = {"class_type": "PreviewImage",
                                  "inputs": {"images": [image_node, 0]}}
    return warm


def _prepare(scenario: dict[str, Any], sim: SimNodeProcess) -> None:
    """Put the simulator in the state the real server was in when the capture began."""
    produced = {img["filename"] for s in scenario["ws"].values() for m in s["messages"]
                if m.get("type") == "executed" for img in (m["data"]["output"] or {}).get(
                    "images", [])}
    for exchange in scenario["http"]:
        if exchange["path"].startswith("/view?") and exchange["status"] == 200 \
                and "type=input" not in exchange["path"]:
            name = exchange["path"].split("filename=")[1].split("&")[0]
            if name not in produced:
                (sim.base_dir / "output").mkdir(exist_ok=True)
                from PIL import Image
                Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(sim.base_dir / "output" / name)
    object_info = httpx.get(f"{sim.url}/object_info").json()
    warm = _warm_up_graph(scenario, object_info)
    if warm is None:
        return
    answer = httpx.post(f"{sim.url}/prompt", json={"prompt": warm}).json()
    wait_until(lambda: httpx.get(f"{sim.url}/history/{answer['prompt_id']}").json(), 20,
               "the warm-up prompt to finish")
    httpx.post(f"{sim.url}/history", json={"clear": True})


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_simulator_reproduces_captured_scenario(path: pathlib.Path, tmp_path: pathlib.Path,
                                                shared_dir: pathlib.Path) -> None:
    scenario = json.loads(path.read_text())
    flags = scenario["server_flags"]
    extra = ["--checkpoints", "random_sd15.safetensors"]
    if "--preview-method" in flags:
        extra += ["--preview-method", flags[flags.index("--preview-method") + 1]]
    sim = SimNodeProcess(tmp_path / "sim", *extra)
    try:
        _prepare(scenario, sim)
        replayer = replay(scenario, sim.url)
        assert replayer.differences() == [], "\n".join(replayer.differences())
    finally:
        sim.stop()


def test_every_scenario_file_is_replayed(shared_dir: pathlib.Path) -> None:
    # A transcript added later must not be silently left out of the contract.
    assert len(SCENARIOS) == len(list((shared_dir / "comfyui-protocol").glob("*.json"))) >= 11
