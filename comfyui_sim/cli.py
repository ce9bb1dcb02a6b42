"""`comfy-service sim` / `python -m comfyui_sim`: run one simulated ComfyUI node."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from comfyui_sim.server import create_app
from comfyui_sim.settings import SimSettings


def main(argv: Sequence[str] | None = None) -> int:
    settings = SimSettings.from_args(argv, os.environ)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    print(f"comfyui-sim (ComfyUI {settings.comfyui_version}) listening on "
          f"http://{settings.host}:{settings.port} (step {settings.step_ms:g} ms, "
          f"files in {settings.base_dir})", flush=True)
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower(), server_header=False,
                            ws="websockets-sansio", lifespan="on", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return 0
