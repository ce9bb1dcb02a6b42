"""Settings of one simulated ComfyUI node, read once from the command line and environment."""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

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
    cheap_images: bool = False  # image outputs are one fixed tiny PNG (fleet-scale runs)

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
        return cls.from_namespace(_parser(environ).parse_args(argv))

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> SimSettings:
        base_dir = args.base_dir or pathlib.Path(tempfile.mkdtemp(prefix="comfyui-sim-"))
        return cls(host=args.listen, port=args.port, step_ms=args.step_ms,
                   base_dir=pathlib.Path(base_dir), checkpoints=_names(args.checkpoints),
                   loras=_names(args.loras), preview_method=args.preview_method,
                   log_level=args.log_level, comfyui_version=args.comfyui_version,
                   gpu_id=args.gpu_id or None,
                   gpu_dir=pathlib.Path(args.gpu_dir or _default_gpu_dir()),
                   cheap_images=args.cheap_images)


@dataclass(frozen=True)
class FarmSettings:
    """Many simulated nodes in one process: node i listens on base_port + i (or a free port
    when base_port is 0) with its files under <base dir>/<i>."""

    nodes: int
    base_port: int
    ports_file: pathlib.Path | None
    node: SimSettings  # what every node shares; port and base_dir are set per node

    def node_settings(self, index: int, port: int) -> SimSettings:
        return replace(self.node, port=port, base_dir=self.node.base_dir / str(index))

    def port_of(self, index: int) -> int:
        return self.base_port + index if self.base_port else 0


def from_command_line(argv: Sequence[str] | None,
                      environ: Mapping[str, str]) -> SimSettings | FarmSettings:
    """One node's settings, or a farm's with --nodes."""
    args = _parser(environ).parse_args(argv)
    node = SimSettings.from_namespace(args)
    if args.nodes is None:
        return node
    return FarmSettings(nodes=args.nodes, base_port=args.base_port,
                        ports_file=args.ports_file, node=node)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
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
                        help="holds output/, input/, temp/ and models/ (default: a temp dir); "
                             "in a farm, one <index>/ folder per node")
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
    parser.add_argument("--cheap-images", action="store_true",
                        default=environ.get("SIM_CHEAP_IMAGES", "") not in ("", "0", "false"),
                        help="image outputs are one fixed tiny PNG, whatever the size asked "
                             "(env SIM_CHEAP_IMAGES): for many nodes on one machine")
    farm = parser.add_argument_group("node farm (many nodes in one process)")
    farm.add_argument("--nodes", type=_positive, default=None,
                      help="serve this many nodes from one process, one port each")
    farm.add_argument("--base-port", type=int, default=0,
                      help="node i listens on BASE_PORT + i (default 0: free ports)")
    farm.add_argument("--ports-file", type=pathlib.Path, default=None,
                      help="once every node serves, write their ports here, one a line")
    return parser
