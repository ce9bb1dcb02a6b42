"""The node classes the simulator knows: their /object_info specs and the models they can list."""

from __future__ import annotations

import copy
import functools
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfy_service.comfyui.object_info import NodeClass, parse_object_info

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
class ModelInventory:
    """File names per model folder, as a server with those files on disk would list them."""

    folders: Mapping[str, tuple[str, ...]]

    def listing(self, folder: str) -> list[str]:
        return sorted(self.folders.get(folder, ()), key=str.lower)


DEFAULT_SPECS_FILE = "object_info.json"  # ComfyUI 0.3.64; comfyui_sim.versions names the others


@functools.cache
def _load_specs(file_name: str) -> dict[str, dict[str, Any]]:
    text = (pathlib.Path(__file__).parent / "data" / file_name).read_text()
    specs: dict[str, dict[str, Any]] = json.loads(text)
    return specs


def _combo_choices(inventory: ModelInventory, key: tuple[str, str]) -> list[str]:
    folder, prepend_none, name_filter = DYNAMIC_COMBOS[key]
    files = inventory.listing(folder)
    if name_filter:
        files = [f for f in files if any(word in f for word in name_filter)]
    return (["none"] if prepend_none else []) + files


def object_info(inventory: ModelInventory,
                specs_file: str = DEFAULT_SPECS_FILE) -> dict[str, dict[str, Any]]:
    """The full GET /object_info answer, dynamic combos filled from the inventory."""
    base = _load_specs(specs_file)
    info = dict(base)  # only the classes with dynamic combos are copied: 0.33.0 has 634
    for (class_name, input_name) in DYNAMIC_COMBOS:
        if class_name not in base:
            continue
        spec = info[class_name] = (info[class_name] if info[class_name] is not base[class_name]
                                   else copy.deepcopy(base[class_name]))
        for section in ("required", "optional"):
            entry = spec["input"].get(section, {}).get(input_name)
            if entry is not None:
                entry[0] = _combo_choices(inventory, (class_name, input_name))
    return info


def node_classes(inventory: ModelInventory,
                 specs_file: str = DEFAULT_SPECS_FILE) -> dict[str, NodeClass]:
    return parse_object_info(object_info(inventory, specs_file))


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
