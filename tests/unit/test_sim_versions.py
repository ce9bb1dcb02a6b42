"""Per-version protocol rules: client prompt ids, unknown-class errors, what a server reports."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from comfy_service.comfyui.validation import validate_prompt
from comfy_service.comfyui.versions import (
    RULES,
    InvalidPromptId,
    is_canonical_uuid,
    prompt_id_canonical_uuid,
    prompt_id_stringified,
    rules_for,
)
from comfyui_sim import catalog, versions
from comfyui_sim.settings import SimSettings
from tests.conftest import SHARED

UUID4 = "d40a0a63-96a6-4281-a2ee-ee31352f39c9"
UUID1 = "9e0f46a2-ecb6-11f1-88f8-02fc00000001"


@pytest.mark.parametrize("body,expected", [
    ({"prompt_id": UUID4}, UUID4),
    ({"prompt_id": "abc"}, "abc"),
    ({"prompt_id": UUID4.upper()}, UUID4.upper()),
    ({"prompt_id": 12345}, "12345"),
    ({"prompt_id": None}, "None"),  # 0.3.64 really stores the literal string
    ({}, None),
])
def test_0_3_64_takes_any_prompt_id_through_str(body: dict[str, Any],
                                                expected: str | None) -> None:
    assert prompt_id_stringified(body) == expected


@pytest.mark.parametrize("body,expected", [
    ({"prompt_id": UUID4}, UUID4),
    ({"prompt_id": UUID1}, UUID1),
    ({"prompt_id": None}, None),
    ({}, None),
])
def test_0_33_0_accepts_canonical_uuids_and_mints_for_null(body: dict[str, Any],
                                                          expected: str | None) -> None:
    assert prompt_id_canonical_uuid(body) == expected


@pytest.mark.parametrize("value", ["abc", UUID4.upper(), uuid.UUID(UUID4).hex, f"{{{UUID4}}}",
                                   12345, "", f" {UUID4}", f"{UUID4}\n", ["x"]])
def test_0_33_0_refuses_every_other_prompt_id(value: Any) -> None:
    assert not is_canonical_uuid(value)
    with pytest.raises(InvalidPromptId) as caught:
        prompt_id_canonical_uuid({"prompt_id": value})
    assert caught.value.error["type"] == "invalid_prompt_id"
    assert caught.value.error["message"] == "prompt_id must be a valid UUID"


@pytest.mark.parametrize("version,error", [
    ("0.3.64", {"type": "invalid_prompt",
                "message": "Cannot execute because node NoSuchNode does not exist.",
                "details": "Node ID '#1'", "extra_info": {}}),
    ("0.33.0", {"type": "missing_node_type",
                "message": "Node 'NoSuchNode' not found. The custom node may not be installed.",
                "details": "Node ID '#1'",
                "extra_info": {"node_id": "1", "class_type": "NoSuchNode",
                               "node_title": "NoSuchNode"}}),
])
def test_an_unknown_class_type_gets_that_versions_error(version: str,
                                                        error: dict[str, Any]) -> None:
    result = validate_prompt({"1": {"class_type": "NoSuchNode", "inputs": {}}}, {},
                             missing_node=rules_for(version).missing_node_error)
    assert not result.ok and result.error == error and result.node_errors == {}


def test_missing_node_type_names_the_nodes_title_when_it_has_one() -> None:
    prompt = {"7": {"class_type": "Gone", "inputs": {}, "_meta": {"title": "My loader"}}}
    result = validate_prompt(prompt, {}, missing_node=RULES["0.33.0"].missing_node_error)
    assert result.error is not None
    assert result.error["extra_info"] == {"node_id": "7", "class_type": "Gone",
                                          "node_title": "My loader"}


def test_an_unsupported_version_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(ValueError, match="0.3.64, 0.33.0"):
        rules_for("1.0")
    with pytest.raises(ValueError, match="0.3.64, 0.33.0"):
        versions.profile("1.0")


@pytest.mark.parametrize("version,extra_keys", [
    ("0.3.64", set()),
    ("0.33.0", {"comfy_package_versions", "deploy_environment"}),
])
def test_system_stats_report_the_chosen_version(version: str, extra_keys: set[str]) -> None:
    stats = versions.system_stats(versions.profile(version), 100, 40, ["main.py"])
    baseline = versions.system_stats(versions.profile("0.3.64"), 100, 40, ["main.py"])
    assert stats["system"]["comfyui_version"] == version
    assert set(stats["system"]) - set(baseline["system"]) == extra_keys
    assert stats["devices"][0]["vram_free"] == 40


def test_0_33_0_stamps_create_time_and_advertises_its_new_features() -> None:
    old, new = versions.profile("0.3.64"), versions.profile("0.33.0")
    assert old.queue_stamps(5) == {} and new.queue_stamps(5) == {"create_time": 5}
    assert set(new.features) - set(old.features) == {
        "supports_model_type_tags", "extension", "node_replacements", "assets"}
    assert new.cache_keeps_all and not old.cache_keeps_all


def test_the_version_is_chosen_by_flag_or_environment_and_defaults_to_0_3_64() -> None:
    assert SimSettings.from_args([], {}).comfyui_version == "0.3.64"
    assert SimSettings.from_args([], {"SIM_COMFYUI_VERSION": "0.33.0"}).comfyui_version \
        == "0.33.0"
    assert SimSettings.from_args(["--comfyui-version", "0.33.0"], {}).comfyui_version == "0.33.0"
    with pytest.raises(SystemExit):
        SimSettings.from_args(["--comfyui-version", "9.9"], {})


def test_0_33_0s_catalog_has_the_captured_classes_and_the_simulators_custom_nodes() -> None:
    inventory = catalog.ModelInventory({"checkpoints": ("a.safetensors",)})
    classes = catalog.node_classes(inventory, versions.profile("0.33.0").object_info_file)
    old = catalog.node_classes(inventory)
    real = json.loads((SHARED / "comfyui-protocol" / "newer" / "v0.33.0" /
                       "object_info_full.json").read_text())
    assert set(classes) == set(real) | set(old)
    assert {"ProbeSleep", "StoryDiffusion_KSampler"} <= set(classes) - set(real)
    assert classes["SaveImage"].outputs == ("IMAGE",) and old["SaveImage"].outputs == ()
    assert classes["CheckpointLoaderSimple"].inputs["ckpt_name"].type == ("a.safetensors",)


def test_0_33_0s_dynamic_v3_inputs_are_left_to_the_server() -> None:
    # Given a 0.33.0 class whose inputs grow (images.image0...) and match their link's type
    real = json.loads((SHARED / "comfyui-protocol" / "newer" / "v0.33.0" /
                       "object_info_full.json").read_text())
    classes = {name: cls for name, cls in catalog.node_classes(
        catalog.ModelInventory({}), versions.profile("0.33.0").object_info_file).items()
        if name in ("BatchImagesNode", "EmptyImage", "PreviewImage")}
    assert real["BatchImagesNode"]["input"]["required"]["images"][0] == "COMFY_AUTOGROW_V3"
    graph = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "BatchImagesNode",
              "inputs": {"images.image0": ["1", 0], "images.image1": ["1", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    # When it is validated, Then the grown inputs are not taken for a missing one
    result = validate_prompt(graph, classes)
    assert result.ok, result.error
