"""`comfy-service gateway`: serve REST API v1 with uvicorn (API_WORKERS processes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette

from comfy_service import logs, metrics
from comfy_service.settings import Settings
from gateway.app import create_app


def app_from_env() -> Starlette:
    """The app factory each uvicorn worker process calls: settings read once per process."""
    settings = Settings.from_env(os.environ)
    logs.setup(settings.log_level, settings.log_format)
    return create_app(settings)


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings.from_env(os.environ)
    if settings.api_workers > 1:
        # One scrape must see every process: they share a fresh multiprocess directory (set
        # before uvicorn spawns them; a previous run's files would be counted again).
        metrics_dir = tempfile.mkdtemp(prefix="comfy-gateway-metrics-")
        os.environ[metrics.MULTIPROC_ENV] = metrics_dir
    uvicorn.run("gateway.main:app_from_env", factory=True, host=settings.api_host,
                port=settings.api_port, workers=settings.api_workers, log_config=None,
                access_log=False, server_header=False, timeout_graceful_shutdown=10,
                lifespan="on")
    if settings.api_workers > 1:
        shutil.rmtree(os.environ.pop(metrics.MULTIPROC_ENV), ignore_errors=True)
    return 0
