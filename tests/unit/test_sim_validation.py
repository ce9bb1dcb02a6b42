"""The simulator's prompt validation answers exactly what ComfyUI answered to the same graphs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from comfy_service.comfyui.validation import PromptCrash, validate_prompt
from comfyui_sim import catalog
from tests.conftest import SHARED

CLASSES = catalog.node_classes(catalog.ModelInventory({"checkpoints": ("model.safetensors",)}))


def _captured_posts() -> list[tuple[str, dict[str, Any], dict[str, Any], int]]:
    scenario = json.loads((SHARED / "comfyui-protocol" / "validation_error.json").read_text())
    cases = []
    for exchange in scenario["http"]:
        if exchange["method"] == "POST" and exchange["path"] == "/prompt" \
                and "request_body" in exchange and "prompt" in (exchange["request_body"] or {}):
            cases.append((exchange["label"], exchange["request_body"]["prompt"],
                          exchange.get("response_body"), exchange["status"]))
    return cases


@pytest.mark.parametrize("label,prompt,answer,status", _captured_posts(),
                         ids=[c[0] for c in _captured_posts()])
def test_validation_matches_the_real_server(label: str, prompt: dict[str, Any],
                                            answer: Any, status: int) -> None:
    if status == 500:
        with pytest.raises(PromptCrash):
            validate_prompt(copy.deepcopy(prompt), CLASSES)
        return
    result = validate_prompt(copy.deepcopy(prompt), CLASSES)
    if status == 400:
        assert not result.ok
        assert result.error == answer["error"]
        errors = {k: v for k, v in result.node_errors.items()}
        for entry in list(errors.values()) + list(answer["node_errors"].values()):
            for error in entry["errors"]:
                error["extra_info"].pop("traceback", None)
        expected = copy.deepcopy(answer["node_errors"])
        for entry in expected.values():
            for error in entry["errors"]:
                error["extra_info"].pop("traceback", None)
        assert errors == expected
    else:
        assert result.ok and result.node_errors == answer["node_errors"]


@pytest.mark.parametrize("inputs,error_type,details", [
    ({"ckpt_name": "other.safetensors"}, "value_not_in_list",
     "ckpt_name: 'other.safetensors' not in ['model.safetensors']"),
    ({}, "required_input_missing", "ckpt_name"),
])
def test_checkpoint_names_come_from_the_node_model_list(inputs: dict[str, Any], error_type: str,
                                                        details: str) -> None:
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": inputs},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
              "3": {"class_type": "EmptyLatentImage",
                    "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "4": {"class_type": "KSampler", "inputs": {
                  "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 7, "sampler_name": "euler",
                  "scheduler": "normal", "positive": ["2", 0], "negative": ["2", 0],
                  "latent_image": ["3", 0], "denoise": 1}},
              "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
              "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0],
                                                          "filename_prefix": "x"}}}
    result = validate_prompt(prompt, CLASSES)
    assert not result.ok
    (error,) = result.node_errors["1"]["errors"]
    assert (error["type"], error["details"]) == (error_type, details)


def test_float_inputs_are_normalised_like_comfyui() -> None:
    prompt = json.loads((SHARED / "storydiffusion" / "txt2img_api.json").read_text())
    classes = catalog.node_classes(catalog.ModelInventory(
        {"checkpoints": ("juggernautXL_v8Rundiffusion.safetensors",),
         "photomaker": ("photomaker-v1.bin",)}))
    result = validate_prompt(prompt, classes)
    assert result.ok, result
    assert result.outputs == ["85"]
    assert prompt["352"]["inputs"]["cfg"] == 8.0 and isinstance(prompt["352"]["inputs"]["cfg"], float)


def test_the_upstream_storydiffusion_example_fails_only_on_its_missing_lora() -> None:
    prompt = json.loads((SHARED / "storydiffusion" / "txt2img_api_upstream.json").read_text())
    classes = catalog.node_classes(catalog.ModelInventory(
        {"checkpoints": ("juggernautXL_v8Rundiffusion.safetensors",)}))
    result = validate_prompt(prompt, classes)
    assert not result.ok
    assert [(node, [e["extra_info"]["input_name"] for e in entry["errors"]])
            for node, entry in result.node_errors.items()] == [("351", ["lora1"])]
