"""`comfy-service gateway`: serve REST API v1 with uvicorn (API_WORKERS processes)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette

from comfy_service import logs
from comfy_service.settings import Settings
from gateway.app import create_app


def app_from_env() -> Starlette:
    """The app factory each uvicorn worker process calls: settings read once per process."""
    settings = Settings.from_env(os.environ)
    logs.setup(settings.log_level, settings.log_format)
    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env(os.environ)
    uvicorn.run("gateway.main:app_from_env", factory=True, host=settings.api_host,
                port=settings.api_port, workers=settings.api_workers, log_config=None,
                access_log=False, server_header=False, timeout_graceful_shutdown=10,
                lifespan="on")
    return 0
