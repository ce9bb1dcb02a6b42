"""`comfy-service sim` / `python -m comfyui_sim`: one simulated ComfyUI node, or a farm of them
in one process with --nodes."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from comfy_service.open_files import raise_open_files_limit
from comfyui_sim import farm
from comfyui_sim.settings import FarmSettings, SimSettings, from_command_line


def main(argv: Sequence[str] | None = None) -> int:
    settings = from_command_line(argv, os.environ)
    node = settings.node if isinstance(settings, FarmSettings) else settings
    logging.basicConfig(level=node.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if isinstance(settings, FarmSettings):
        return _run_farm(settings)
    print(f"comfyui-sim (ComfyUI {node.comfyui_version}) listening on "
          f"http://{node.host}:{node.port} (step {node.step_ms:g} ms, "
          f"files in {node.base_dir})", flush=True)
    uvicorn.Server(farm.uvicorn_config(node)).run()
    return 0


def _run_farm(settings: FarmSettings) -> int:
    before, after = raise_open_files_limit()
    node: SimSettings = settings.node
    print(f"comfyui-sim farm (ComfyUI {node.comfyui_version}): {settings.nodes} nodes, step "
          f"{node.step_ms:g} ms, cheap images {'on' if node.cheap_images else 'off'}, files in "
          f"{node.base_dir}/<index>; open files limit {before} -> {after}", flush=True)
    # The loop uvicorn would pick for one node (uvloop when installed), for the whole farm.
    loop_factory = uvicorn.Config(app="unused:app").get_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(farm.serve_farm(settings))
    return 0
