"""The node classes the simulator knows: their /object_info specs and the models they can list."""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Combo inputs whose choices a real ComfyUI computes from its model folders when it answers
# /object_info or validates a prompt: (class, input) -> (folder, "none" prepended?, name filter).
DYNAMIC_COMBOS: dict[tuple[str, str], tuple[str, bool, tuple[str, ...]]] = {
    ("CheckpointLoaderSimple", "ckpt_name"): ("checkpoints", False, ()),
    ("LoraLoader", "lora_name"): ("loras", False, ()),
    ("LoadImage", "image"): ("input", False, ()),
    ("EasyFunction_Lite", "unet"): ("diffusion_models", True, ()),
    ("EasyFunction_Lite", "gguf"): ("gguf", True, ()),
    ("EasyFunction_Lite", "clip1"): ("clip", True, ()),
    ("EasyFunction_Lite", "clip2"): ("clip", True, ()),
    ("EasyFunction_Lite", "clip_vision1"): ("clip_vision", True, ()),
    ("EasyFunction_Lite", "clip_vision2"): ("clip_vision", True, ()),
    ("EasyFunction_Lite", "lora1"): ("loras", True, ()),
    ("EasyFunction_Lite", "lora2"): ("loras", True, ()),
    ("EasyFunction_Lite", "controlnet"): ("controlnet", True, ()),
    ("StoryDiffusion_Apply", "photomake_ckpt"): ("photomaker", True, ("v1", "v2")),
    ("StoryDiffusion_Apply", "ipadapter_ckpt"): ("photomaker", True, ()),
}

# The folders GET /models lists, in the order ComfyUI 0.3.64 answered (server_info.json).
MODEL_FOLDERS: tuple[str, ...] = (
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
)


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node class."""

    name: str
    type: str | tuple[Any, ...]  # a type name such as "INT", or the choices of a combo
    options: Mapping[str, Any]
    required: bool

    @property
    def config(self) -> list[Any]:
        """The [type, options] pair ComfyUI echoes back as `input_config` in errors."""
        kind: Any = list(self.type) if isinstance(self.type, tuple) else self.type
        return [kind, dict(self.options)]


@dataclass(frozen=True)
class NodeClass:
    name: str
    inputs: Mapping[str, InputSpec]
    outputs: tuple[str, ...]
    output_node: bool
    spec: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ModelInventory:
    """File names per model folder, as a server with those files on disk would list them."""

    folders: Mapping[str, tuple[str, ...]]

    def listing(self, folder: str) -> list[str]:
        return sorted(self.folders.get(folder, ()), key=str.lower)


def _load_specs() -> dict[str, dict[str, Any]]:
    text = (pathlib.Path(__file__).parent / "data" / "object_info.json").read_text()
    specs: dict[str, dict[str, Any]] = json.loads(text)
    return specs


_BASE_SPECS = _load_specs()


def _combo_choices(inventory: ModelInventory, key: tuple[str, str]) -> list[str]:
    folder, prepend_none, name_filter = DYNAMIC_COMBOS[key]
    files = inventory.listing(folder)
    if name_filter:
        files = [f for f in files if any(word in f for word in name_filter)]
    return (["none"] if prepend_none else []) + files


def object_info(inventory: ModelInventory) -> dict[str, dict[str, Any]]:
    """The full GET /object_info answer, dynamic combos filled from the inventory."""
    info = copy.deepcopy(_BASE_SPECS)
    for (class_name, input_name) in DYNAMIC_COMBOS:
        spec = info.get(class_name)
        if spec is None:
            continue
        for section in ("required", "optional"):
            entry = spec["input"].get(section, {}).get(input_name)
            if entry is not None:
                entry[0] = _combo_choices(inventory, (class_name, input_name))
    return info


def _input_spec(name: str, entry: list[Any], required: bool) -> InputSpec:
    kind = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return InputSpec(
        name=name,
        type=tuple(kind) if isinstance(kind, list) else kind,
        options=options,
        required=required,
    )


def parse_object_info(info: dict[str, dict[str, Any]]) -> dict[str, NodeClass]:
    """Typed view of an /object_info answer, as validation and execution use it."""
    classes: dict[str, NodeClass] = {}
    for name, spec in info.items():
        inputs: dict[str, InputSpec] = {}
        for section in ("required", "optional"):
            for input_name, entry in (spec.get("input") or {}).get(section, {}).items():
                inputs[input_name] = _input_spec(input_name, entry, section == "required")
        classes[name] = NodeClass(
            name=name,
            inputs=inputs,
            outputs=tuple(spec.get("output") or ()),
            output_node=bool(spec.get("output_node")),
            spec=spec,
        )
    return classes


def node_classes(inventory: ModelInventory) -> dict[str, NodeClass]:
    return parse_object_info(object_info(inventory))


def inventory_from_dirs(models_dir: pathlib.Path, input_dir: pathlib.Path,
                        declared: Mapping[str, tuple[str, ...]]) -> ModelInventory:
    """Declared model names plus any files really present in the model and input folders."""
    folders: dict[str, set[str]] = {name: set(files) for name, files in declared.items()}
    if models_dir.is_dir():
        for folder in models_dir.iterdir():
            if folder.is_dir():
                folders.setdefault(folder.name, set()).update(
                    f.name for f in folder.iterdir() if f.is_file())
    if input_dir.is_dir():
        folders["input"] = {f.name for f in input_dir.iterdir() if f.is_file()}
    return ModelInventory({k: tuple(v) for k, v in folders.items()})
