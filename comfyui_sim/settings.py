"""Settings of one simulated ComfyUI node, read once from the command line and environment."""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from comfyui_sim import versions

DEFAULT_CHECKPOINTS = ("juggernautXL_v8Rundiffusion.safetensors",)
# What a server prepared for the StoryDiffusion SDXL modes lists (shared/storydiffusion).
DEFAULT_MODEL_FILES: dict[str, tuple[str, ...]] = {
    "photomaker": ("mask.bin", "ms_adapter.bin", "photomaker-v1.bin", "photomaker-v2.bin"),
    "clip_vision": ("clip_vision_H.safetensors", "clip_vision_g.safetensors"),
}


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def _default_gpu_dir() -> pathlib.Path:
    return pathlib.Path(tempfile.gettempdir()) / "comfyui-sim-gpus"


@dataclass(frozen=True)
class SimSettings:
    host: str = "127.0.0.1"
    port: int = 8188
    step_ms: float = 50.0
    base_dir: pathlib.Path = field(default_factory=lambda: pathlib.Path(
        tempfile.gettempdir()) / "comfyui-sim")
    checkpoints: tuple[str, ...] = DEFAULT_CHECKPOINTS
    loras: tuple[str, ...] = ()
    preview_method: str = "none"
    log_level: str = "warning"
    comfyui_version: str = versions.DEFAULT
    gpu_id: str | None = None  # nodes with the same id share one virtual GPU (None: a GPU alone)
    gpu_dir: pathlib.Path = field(default_factory=_default_gpu_dir)

    @property
    def output_dir(self) -> pathlib.Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> pathlib.Path:
        return self.base_dir / "input"

    @property
    def temp_dir(self) -> pathlib.Path:
        return self.base_dir / "temp"

    @property
    def models_dir(self) -> pathlib.Path:
        return self.base_dir / "models"

    def declared_models(self) -> dict[str, tuple[str, ...]]:
        return {**DEFAULT_MODEL_FILES, "checkpoints": self.checkpoints, "loras": self.loras}

    @classmethod
    def from_args(cls, argv: Sequence[str] | None, environ: Mapping[str, str]) -> SimSettings:
        parser = argparse.ArgumentParser(
            prog="comfy-service sim",
            description="A ComfyUI-compatible server that simulates execution (no GPU, no models).")
        parser.add_argument("--listen", default=environ.get("SIM_HOST", "127.0.0.1"),
                            help="address to bind (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=int(environ.get("SIM_PORT", "8188")))
        parser.add_argument("--step-ms", type=float,
                            default=float(environ.get("SIM_STEP_MS", "50")),
                            help="milliseconds per sampling step (env SIM_STEP_MS, default 50)")
        parser.add_argument("--base-dir", type=pathlib.Path,
                            default=environ.get("SIM_BASE_DIR"),
                            help="holds output/, input/, temp/ and models/ (default: a temp dir)")
        parser.add_argument("--checkpoints", default=environ.get(
            "SIM_CHECKPOINTS", ",".join(DEFAULT_CHECKPOINTS)),
            help="comma-separated checkpoint names the node lists")
        parser.add_argument("--loras", default=environ.get("SIM_LORAS", ""),
                            help="comma-separated LoRA names the node lists")
        parser.add_argument("--preview-method", default=environ.get("SIM_PREVIEW_METHOD", "none"),
                            choices=["none", "auto", "latent2rgb", "taesd"])
        parser.add_argument("--log-level", default=environ.get("SIM_LOG_LEVEL", "warning"))
        parser.add_argument("--comfyui-version",
                            default=environ.get("SIM_COMFYUI_VERSION", versions.DEFAULT),
                            choices=versions.SUPPORTED_VERSIONS,
                            help="the ComfyUI server version to behave as (env "
                                 f"SIM_COMFYUI_VERSION, default {versions.DEFAULT})")
        parser.add_argument("--gpu-id", default=environ.get("SIM_GPU_ID") or None,
                            help="share one virtual GPU with the nodes started with the same id: "
                                 "sampling slows as ComfyUI processes on one GPU do (env "
                                 "SIM_GPU_ID; default: a GPU of its own)")
        parser.add_argument("--gpu-dir", type=pathlib.Path, default=environ.get("SIM_GPU_DIR"),
                            help="where nodes sharing a GPU meet (env SIM_GPU_DIR, default "
                                 "<temp dir>/comfyui-sim-gpus)")
        args = parser.parse_args(argv)
        base_dir = args.base_dir or pathlib.Path(tempfile.mkdtemp(prefix="comfyui-sim-"))
        return cls(host=args.listen, port=args.port, step_ms=args.step_ms,
                   base_dir=pathlib.Path(base_dir), checkpoints=_names(args.checkpoints),
                   loras=_names(args.loras), preview_method=args.preview_method,
                   log_level=args.log_level, comfyui_version=args.comfyui_version,
                   gpu_id=args.gpu_id or None,
                   gpu_dir=pathlib.Path(args.gpu_dir or _default_gpu_dir()))
