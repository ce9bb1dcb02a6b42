"""`comfy-service gateway`: serve REST API v1 with uvicorn."""

from __future__ import annotations

import os
from collections.abc import Sequence

import uvicorn

from comfy_service import logs
from comfy_service.settings import Settings
from gateway.app import create_app


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env(os.environ)
    logs.setup(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port,
                log_config=None, access_log=False, server_header=False,
                timeout_graceful_shutdown=10, lifespan="on")
    return 0
