"""Workflow templates: parameter checking and rendering (pure, pinned by golden files)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from comfy_service.comfyui.validation import validate_prompt
from comfy_service.inputs import looks_like_ref
from comfy_service.templates import FieldError, load_templates, render, resolve
from comfyui_sim import catalog
from tests.support.processes import ROOT

TEMPLATES = load_templates()
GOLDEN = ROOT / "tests" / "golden"
CASES: dict[str, dict[str, Any]] = {
    "txt2img": {"prompt": "a lighthouse at dawn", "width": 832, "height": 1216, "seed": 42},
    "img2img": {"image": "upload:" + "ab" * 16, "prompt": "the same, in watercolour",
                "denoise": 0.45, "seed": 3},
    "storydiffusion": {
        "characters": [{"name": "Taylor", "description": "a woman, white T-shirt, blue hair"},
                       {"name": "Sam", "description": "a man, green coat"}],
        "scenes": [{"character": "Taylor", "text": "wakes up in the bed"},
                   {"character": "Sam", "text": "cooks breakfast"}],
        "seed": 7},
}


def never_drawn(limit: int) -> int:
    raise AssertionError("no seed should be drawn when one is given")


def golden_text(name: str) -> str:
    """What the golden file of case `name` holds: its rendered graph, as stable JSON.

    Only scripts/update_golden.py writes it: the test compares and never rewrites, so an
    unintended change to a rendered graph always fails until someone updates on purpose.
    """
    values, errors = resolve(TEMPLATES[name], CASES[name], never_drawn)
    assert errors == [], errors
    graph = render(TEMPLATES[name], values, output_prefix="cs/task-1")
    return json.dumps(graph, indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_graph_matches_its_golden_file(name: str) -> None:
    golden = GOLDEN / f"{name}.json"
    hint = (f"if the change to {name}'s graph is intended, run "
            "`.venv/bin/python scripts/update_golden.py` and review the diff")
    assert golden.is_file(), f"{golden} is missing: {hint}"
    assert json.loads(golden_text(name)) == json.loads(golden.read_text()), hint


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_graphs_pass_comfyui_validation(name: str) -> None:
    values, _ = resolve(TEMPLATES[name], CASES[name], never_drawn)
    classes = catalog.node_classes(catalog.ModelInventory(
        {"checkpoints": ("juggernautXL_v8Rundiffusion.safetensors",)}))
    result = validate_prompt(render(TEMPLATES[name], values, "x"), classes,
                             file_exists=looks_like_ref)
    assert result.ok and result.node_errors == {}, result


def test_a_missing_seed_is_drawn_and_defaults_fill_the_rest() -> None:
    values, errors = resolve(TEMPLATES["txt2img"], {"prompt": "cat"}, lambda limit: 1234)
    assert errors == []
    assert values["seed"] == 1234
    assert (values["width"], values["steps"], values["sampler"]) == (1024, 30, "dpmpp_2m")


@pytest.mark.parametrize("params,expected", [
    ({}, [FieldError("params.prompt", "is required")]),
    ({"prompt": "x", "bogus": 1}, [FieldError("params.bogus", "unknown parameter")]),
    ({"prompt": "x", "width": 1001}, [FieldError("params.width", "must be a multiple of 8")]),
    ({"prompt": "x", "width": 4096}, [FieldError("params.width", "must be <= 2048")]),
    ({"prompt": "x", "height": 100}, [FieldError("params.height", "must be >= 256")]),
    ({"prompt": "x", "steps": 2.5}, [FieldError("params.steps", "must be an integer")]),
    ({"prompt": "x", "steps": True}, [FieldError("params.steps", "must be an integer")]),
    ({"prompt": 5}, [FieldError("params.prompt", "must be a string")]),
    ({"prompt": "x", "cfg": "high"}, [FieldError("params.cfg", "must be a number")]),
])
def test_bad_txt2img_params_name_each_bad_field(params: dict[str, Any],
                                                expected: list[FieldError]) -> None:
    assert resolve(TEMPLATES["txt2img"], params, lambda limit: 1)[1] == expected


def test_sampler_must_be_known() -> None:
    (error,) = resolve(TEMPLATES["txt2img"], {"prompt": "x", "sampler": "warp"}, lambda n: 1)[1]
    assert error.field == "params.sampler" and error.message.startswith("must be one of")


@pytest.mark.parametrize("params,field", [
    ({"characters": [], "scenes": [{"character": "A", "text": "t"}]}, "params.characters"),
    ({"characters": [{"name": "A", "description": "d"}] * 2,
      "scenes": [{"character": "A", "text": "t"}]}, "params.characters[1].name"),
    ({"characters": [{"name": "A", "description": "d"}],
      "scenes": [{"character": "B", "text": "t"}]}, "params.scenes[0].character"),
    ({"characters": [{"name": "A", "description": "d"}],
      "scenes": [{"character": "A", "text": "two\nlines"}]}, "params.scenes[0].text"),
    ({"characters": [{"name": "[A]", "description": "d"}],
      "scenes": [{"character": "A", "text": "t"}]}, "params.characters[0].name"),
    ({"characters": [{"name": "A"}], "scenes": [{"character": "A", "text": "t"}]},
     "params.characters[0].description"),
])
def test_bad_story_params_are_rejected(params: dict[str, Any], field: str) -> None:
    errors = resolve(TEMPLATES["storydiffusion"], params, lambda n: 1)[1]
    assert field in [e.field for e in errors]


@pytest.mark.parametrize("value", ["cat.png", "upload:xyz", 7, "upload:" + "AB" * 16])
def test_an_image_parameter_takes_only_an_upload_reference(value: Any) -> None:
    params = {**CASES["img2img"], "image": value}
    _, errors = resolve(TEMPLATES["img2img"], params, never_drawn)
    assert [error.field for error in errors] == ["params.image"]
    assert "upload:<id>" in errors[0].message
